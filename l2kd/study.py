"""``python -m l2kd.study``: entry point of :mod:`l2kd.cli.study`."""
import sys

from l2kd.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
