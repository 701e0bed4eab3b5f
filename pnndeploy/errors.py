"""One exception family for every problem a user can fix.

The CLI turns a :class:`PnnError` into one line on stderr and exit status 2, so
every message must say what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class PnnError(Exception):
    """Bad input or usage: the CLI prints it as one line and exits with status 2."""


class DatasetError(PnnError):
    """A dataset cannot be found, read, or does not fit the model."""


class ProfileError(PnnError):
    """A device profile is missing, malformed or physically impossible."""


class ModelFileError(PnnError):
    """A model file is missing, not ONNX, or not written by pnndeploy."""


class ConfigError(PnnError):
    """A YAML config or a flag value is wrong."""
