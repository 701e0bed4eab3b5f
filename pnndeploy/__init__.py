"""pnndeploy: train physical neural networks with sharpness-aware training, export once, deploy to a fleet."""

__version__ = "0.1.0"
