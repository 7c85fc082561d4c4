"""``python -m l2kd.demo``: entry point of :mod:`l2kd.cli.demo`."""
import sys

from l2kd.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
