"""``python -m l2kd.test``: entry point of :mod:`l2kd.cli.test`."""
import sys

from l2kd.cli.test import main

if __name__ == "__main__":
    sys.exit(main())
