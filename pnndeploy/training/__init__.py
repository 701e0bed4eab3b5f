"""Training: the physical network, its training methods (standard, noise-aware, SAT), sharpness, train-and-export."""
