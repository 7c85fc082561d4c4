"""Training scalars: one JSONL file per run, mirrored to TensorBoard when it is installed.

``<run>/train_scalars.jsonl`` gets one JSON object per line: every ``--logging_steps`` a
training record (``task``, ``step``, ``epoch``, ``lr``, ``loss``, ``grad_norm``,
``tokens_per_s`` and the strategy's parts such as ``qa_loss`` / ``lm_loss`` /
``qa_kd_loss``), and before each replaying task a ``"event": "replay"`` record with the
pseudo-samples generated / parsed / dropped.

With the optional extra (``pip install l2kd[tensorboard]``) the same numbers go to
``<run>/tensorboard/`` as ``<task>/<name>`` scalars (``tensorboard --logdir <run>/tensorboard``).
Without it nothing else happens: no warning per step, one info line when the log opens.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional

log = logging.getLogger("l2kd")
JSONL_NAME = "train_scalars.jsonl"
TB_DIR = "tensorboard"


def _tensorboard_writer(logdir: str):
    """A ``SummaryWriter`` for ``logdir``, or None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is absent (torch raises ImportError without tensorboard)
        return None
    return SummaryWriter(logdir)


class ScalarLog:
    """Appends training records to the run's JSONL file (and TensorBoard when available)."""

    def __init__(self, run_dir: str, tensorboard: bool = True) -> None:
        self.path = os.path.join(run_dir, JSONL_NAME)
        self.tb_dir = os.path.join(run_dir, TB_DIR)
        self._want_tb = tensorboard
        self._writer = None  # opened with the first record: a task that logs nothing leaves no event file

    @property
    def tensorboard(self) -> bool:
        """Whether records are also written to TensorBoard (the optional extra is installed)."""
        if self._want_tb and self._writer is None:
            self._writer = _tensorboard_writer(self.tb_dir)
            if self._writer is None:
                log.debug("tensorboard not installed: training scalars go to %s only", self.path)
                self._want_tb = False
        return self._writer is not None

    def write(self, rec: Dict[str, Any], global_step: Optional[int] = None) -> None:
        """Append ``rec`` (must hold ``task``); numbers also go to TensorBoard as ``<task>/<key>``."""
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if not self.tensorboard:
            return
        step = rec.get("step", 0) if global_step is None else global_step
        prefix = rec["task"] + ("/replay" if rec.get("event") == "replay" else "")
        for key, value in rec.items():
            if key in ("task", "step", "event") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL file is closed after every record)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
