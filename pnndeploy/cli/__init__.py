"""The `pnndeploy` command line: parse, call, render; no physics here.

:mod:`pnndeploy.cli.main` holds the command group and its error handling; each
module beside it adds one command group to it when imported.
"""

from pnndeploy.cli import demo, deploy, fleet, train  # noqa: E402,F401  (each registers its commands on main)
from pnndeploy.cli.main import main

__all__ = ["main"]
