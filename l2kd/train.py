"""``python -m l2kd.train``: entry point of :mod:`l2kd.cli.train`."""
import sys

from l2kd.runtime import begin_cuda_init

if __name__ == "__main__":  # the CUDA context is made while the modules below load
    begin_cuda_init(sys.argv[1:])

from l2kd.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
