"""`python -m pnndeploy.cli` runs the command line."""

from pnndeploy.cli import main

main()
