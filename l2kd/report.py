"""``python -m l2kd.report``: entry point of :mod:`l2kd.cli.report`."""
import sys

from l2kd.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
