"""l2kd: fast LAMOL / L2KD lifelong language learning.

Public API::

    from l2kd import TrainConfig, SamplingConfig, train_sequence, evaluate_run
    from l2kd.strategies import Strategy          # subclass to add a method (hooks only)

``train_sequence(cfg, strategy=None)`` trains the task sequence; ``evaluate_run(cfg)`` tests
every task model on every task and returns the accuracy matrix. The CLIs
(``python -m l2kd.train`` / ``python -m l2kd.test``) are thin layers over these.
"""
from l2kd.threads import prefer_passive_wait

# Before anything imports torch: OpenMP threads that sleep at barriers instead of spinning
# (see l2kd.threads); the user's OMP_WAIT_POLICY / GOMP_SPINCOUNT win.
prefer_passive_wait()

from l2kd.config import SamplingConfig, TrainConfig  # noqa: E402

__version__ = "0.1.0"


def train_sequence(cfg, strategy=None):
    """See :func:`l2kd.loop.train_sequence`."""
    from l2kd.loop import train_sequence as _train

    return _train(cfg, strategy)


def evaluate_run(cfg, device=None, quiet=False):
    """See :func:`l2kd.evaluate.evaluate_run`."""
    from l2kd.evaluate import evaluate_run as _eval

    return _eval(cfg, device=device, quiet=quiet)


__all__ = ["TrainConfig", "SamplingConfig", "train_sequence", "evaluate_run", "__version__"]
