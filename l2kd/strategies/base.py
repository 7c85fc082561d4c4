"""The strategy interface: only what differs from plain sequential fine-tuning.

The training loop calls the hooks in :data:`HOOKS`, every one as ``hook(ctx, ...)`` with the
task's :class:`TaskContext` first; every default is a no-op (or the plain QA loss), so
``Sequential`` overrides nothing. :class:`Wrapper` composes a strategy around a base one
(Word-KD, Seq-KD) and forwards every hook it does not override.
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
from l2kd.distillation import TrainTeacher
from l2kd.losses import qa_lm_loss
from l2kd.tokenizer import SpecialIds


def _no_teacher_trainer(cfg: TrainConfig) -> str:
    raise RuntimeError(f"a teacher for {cfg.tasks} is missing and this context has no teacher trainer "
                       "(train_sequence passes one; give --teacher_dir or train the teacher first)")


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
    prev_train_examples: Dict[str, List[Encoded]]
    max_len: int
    device: torch.device
    generator: torch.Generator
    rng: np.random.Generator
    logger: logging.Logger
    train_teacher: TrainTeacher = field(default=lambda cfg: _no_teacher_trainer(cfg))  # given by the loop
    train_examples: List[Encoded] = field(default_factory=list)  # set by the loop after training_data
    stats: Dict[str, object] = field(default_factory=dict)  # written to the task summary
    shares: Dict[str, float] = field(default_factory=dict)  # this step's loss shares (torchrun), by part

    def share(self, part: str) -> float:
        """This rank's share of the global denominator of loss ``part`` (1.0 in one process)."""
        return self.shares.get(part, 1.0)


class Strategy:
    """Plain sequential training (``finetune``): QA loss only, no replay."""

    name = "finetune"
    uses_lm_loss = False  # QA + lm_lambda * LM when True (lll, multilm)

    def training_data(self, ctx: TaskContext, task: str) -> Optional[str]:
        """The file ``task`` trains on in this stage; None = its own training split."""
        return None

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> List[Encoded]:
        """Called before a task's first step; returns extra (replayed) training examples."""
        return []

    def loss(self, ctx: TaskContext, model: PreTrainedModel, batch: Batch, weight: torch.Tensor
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The loss to minimise on ``batch`` and the scalars to log."""
        lm_in = batch.lm_input if self.uses_lm_loss else None
        qa, lm = qa_lm_loss(model, batch.qa_input, batch.qa_target, lm_in, batch.lm_target, weight,
                            chunked=ctx.cfg.use_kernels)
        qa = qa * ctx.share("qa")
        if lm is None:
            return qa, {"qa_loss": qa.item()}
        lm = lm * ctx.share("lm")
        return qa + ctx.cfg.lm_lambda * lm, {"qa_loss": qa.item(), "lm_loss": lm.item()}

    def after_backward(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        """Before the optimizer step (after unscaling and clipping): edit ``.grad`` in place."""

    def after_step(self, ctx: TaskContext, model: PreTrainedModel, lr: float) -> None:
        """After the optimizer step."""

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        """After a task's last step."""

    def state_dict(self) -> dict:
        """State saved with each task's model (importances, memories)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""


Sequential = Strategy
# Every method the loop calls; a Wrapper forwards each of them (a test keeps this list complete).
HOOKS = ("training_data", "before_task", "loss", "after_backward", "after_step", "after_task", "state_dict",
         "load_state_dict")


class Wrapper(Strategy):
    """A strategy around ``base``: every hook it does not override is the base's.

    The forwarding methods are generated from :data:`HOOKS`, so a hook added to
    :class:`Strategy` (and to ``HOOKS``) reaches the base of every wrapper without edits here.
    """

    suffix = ""  # appended to the base's name: "lll" + "+word_kd"

    def __init__(self, base: Strategy) -> None:
        self.base = base
        self.name = f"{base.name}{self.suffix}"
        self.uses_lm_loss = base.uses_lm_loss


def _forward(hook: str):
    def forward(self, *args, **kwargs):
        return getattr(self.base, hook)(*args, **kwargs)

    forward.__name__ = hook
    forward.__doc__ = f"The base strategy's ``{hook}``."
    return forward


for _hook in HOOKS:
    setattr(Wrapper, _hook, _forward(_hook))
