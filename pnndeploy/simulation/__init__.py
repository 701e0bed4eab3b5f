"""The stand-in for real chips: simulated fabrication (fleet make), per-device random streams, and the batched simulator that evaluates a model on many chips at once."""
