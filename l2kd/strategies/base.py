"""The strategy interface: only what differs from plain sequential fine-tuning.

``l2kd.train.train_sequence`` calls these hooks; every default is a no-op (or the plain
QA loss), so ``Sequential`` overrides nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from transformers import PreTrainedModel

from l2kd.config import TrainConfig
from l2kd.data.qa_format import Batch, Encoded
from l2kd.losses import qa_lm_loss
from l2kd.tokenizer import SpecialIds


@dataclass
class TaskContext:
    """What a hook may read about the task being trained (no trainer object)."""

    index: int  # position of the task (stage) in the sequence, 0-based
    tasks: Tuple[str, ...]  # the tasks trained in this stage (several for multitask)
    prev_tasks: Tuple[str, ...]  # tasks of earlier stages
    cfg: TrainConfig
    run_dir: str
    tokenizer: object
    ids: SpecialIds
    task_dir: str
    prev_task_dir: Optional[str]
    train_examples: List[Encoded]
    prev_train_examples: Dict[str, List[Encoded]]
    max_len: int
    device: torch.device
    generator: torch.Generator
    rng: np.random.Generator
    logger: logging.Logger
    stats: Dict[str, object] = field(default_factory=dict)  # written to the task summary


class Strategy:
    """Plain sequential training (``finetune``): QA loss only, no replay."""

    name = "finetune"
    uses_lm_loss = False  # QA + lm_lambda * LM when True (lll, multilm)

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> List[Encoded]:
        """Called before a task's first step; returns extra (replayed) training examples."""
        return []

    def loss(self, model: PreTrainedModel, batch: Batch, weight: torch.Tensor, ctx: TaskContext
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The loss to minimise on ``batch`` and the scalars to log."""
        lm_in = batch.lm_input if self.uses_lm_loss else None
        qa, lm = qa_lm_loss(model, batch.qa_input, batch.qa_target, lm_in, batch.lm_target, weight,
                            chunked=ctx.cfg.use_kernels)
        if lm is None:
            return qa, {"qa_loss": qa.item()}
        return qa + ctx.cfg.lm_lambda * lm, {"qa_loss": qa.item(), "lm_loss": lm.item()}

    def after_backward(self, model: PreTrainedModel, ctx: TaskContext) -> None:
        """Before the optimizer step (after unscaling and clipping): edit ``.grad`` in place."""

    def after_step(self, model: PreTrainedModel, lr: float, ctx: TaskContext) -> None:
        """After the optimizer step."""

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        """After a task's last step."""

    def state_dict(self) -> dict:
        """State saved with each task's model (importances, memories)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""


Sequential = Strategy
