"""The `pnndeploy` command line: parse, call, render; no physics here.

:mod:`pnndeploy.cli.group` holds the ``pnndeploy`` group and its error handling;
each module beside it adds its commands (or subgroups) to it when imported:
train.py (train, inspect), fleet.py (fleet, profile), deploy.py (transfer,
audit), chip.py (chip serve/connect/info, calibrate), sweep.py, demo.py.
"""

from pnndeploy.cli import chip, demo, deploy, fleet, sweep, train  # noqa: E402,F401  (each registers its commands on main)
from pnndeploy.cli.group import main

__all__ = ["main"]
