"""`python -m pnndeploy` runs the CLI."""

from pnndeploy.cli import main

if __name__ == "__main__":
    main()
