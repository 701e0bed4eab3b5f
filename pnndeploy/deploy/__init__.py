"""Deployment: map a model onto chips through their calibration, transfer reports, drift audits, fleet statistics."""
