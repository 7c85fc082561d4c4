"""The training loop: :func:`train_sequence` over the stages, :func:`~l2kd.loop.task.train_task` per stage."""
from l2kd.loop.sequence import preflight, train_sequence

__all__ = ["train_sequence", "preflight"]
