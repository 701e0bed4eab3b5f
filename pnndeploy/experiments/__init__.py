"""Experiments built from the stages: the demo (and, later, sweeps and their executors)."""
