"""Data: the datasets a model is trained and evaluated on, and the scaling of raw features to optical powers."""
