"""`python -m sbdcli`: the same entry point as the `sbd` console script."""

from sbdcli.cli import main

if __name__ == "__main__":
    main()
