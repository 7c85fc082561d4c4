"""The strategy interface: only what differs from plain sequential fine-tuning.

The training loop calls the hooks in :data:`HOOKS`, every one as ``hook(ctx, ...)`` with the
task's read-only :class:`TaskContext` first; every default is a no-op (or the plain QA loss),
so ``Sequential`` overrides nothing. What a hook wants recorded it *returns*: ``before_task``
a :class:`TaskStart` (the replayed examples and a report), ``after_task`` a report; the loop
files each report in the task summary and refuses a key the loop itself writes. Per-step
values (this rank's loss shares) are arguments.

A strategy's traits (:class:`~l2kd.config.StrategyTraits`: joint stage, replay, memory factor,
folder name, accepted flags) are a class attribute, and defining a class with a ``name`` of its
own registers it (:func:`l2kd.config.register_strategy`), so the run folder, the batch budget
and the configuration checks follow it with no other edit. :class:`Wrapper` composes a
strategy around a base one (Word-KD, Seq-KD) and forwards every hook it does not override.
"""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from transformers import PreTrainedModel

from l2kd.batching import budget_for_device
from l2kd.config import StrategyTraits, TrainConfig, register_strategy, strategy_traits
from l2kd.data.multitask import embedding_rows
from l2kd.data.qa_format import Batch, Encoded
from l2kd.distillation import TrainTeacher
from l2kd.losses import Losses, qa_lm_loss, token_weights
from l2kd.tokenizer import SpecialIds

Report = Dict[str, object]  # what a hook asks the loop to record in the task summary


def _no_teacher_trainer(cfg: TrainConfig) -> str:
    raise RuntimeError(f"a teacher for {cfg.tasks} is missing and this context has no teacher trainer "
                       "(train_sequence passes one; give --teacher_dir or train the teacher first)")


@dataclass(frozen=True)
class StepSetup:
    """What every step of a task shares, built once per task: the loss implementations
    (``--no_kernels`` decided once), the cross-entropy's class weights and the dynamic-batch
    budget. The loop's steps and the regularisers' importance passes use the same one."""

    losses: Losses
    class_weight: torch.Tensor  # [V]
    batch_budget: float  # the original's units (batching.LENGTH_EXPONENT)

    @staticmethod
    def build(cfg: TrainConfig, n_rows: int, ids: SpecialIds, device: torch.device,
              traits: Optional[StrategyTraits] = None) -> "StepSetup":
        """The setup of a task whose model has ``n_rows`` embedding rows."""
        traits = traits or strategy_traits(cfg.seq_train_type)
        return StepSetup(Losses(cfg.use_kernels, cfg.torch_compile), token_weights(n_rows, ids, cfg.tokens_weight, device),
                         budget_for_device(device, traits.memory_factor, cfg.cpu_batch_tokens))


@dataclass(frozen=True)
class TaskContext:
    """What a hook may read about the task being trained (read-only; no trainer object).

    The random generators are the run's (advancing them is how a hook draws); every other
    field is fixed for the task. The loop makes a new context (``dataclasses.replace``) when
    the training examples are known.
    """

    index: int  # position of the task (stage) in the sequence, 0-based
    tasks: Tuple[str, ...]  # the tasks trained in this stage (several for multitask)
    prev_tasks: Tuple[str, ...]  # tasks of earlier stages
    cfg: TrainConfig
    run_dir: str
    tokenizer: object
    ids: SpecialIds
    task_dir: str
    prev_task_dir: Optional[str]
    prev_train_examples: Mapping[str, Sequence[Encoded]]
    max_len: int
    device: torch.device
    generator: torch.Generator
    rng: np.random.Generator
    logger: logging.Logger
    train_teacher: TrainTeacher = field(default=lambda cfg: _no_teacher_trainer(cfg))  # given by the loop
    train_examples: Sequence[Encoded] = ()  # this stage's own examples (before replay)
    setup: Optional[StepSetup] = None  # None: built from cfg and the tokenizer

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # freezing the containers the loop hands over
        set_(self, "tasks", tuple(self.tasks))
        set_(self, "prev_tasks", tuple(self.prev_tasks))
        set_(self, "train_examples", tuple(self.train_examples))
        set_(self, "prev_train_examples",
             types.MappingProxyType({k: tuple(v) for k, v in dict(self.prev_train_examples).items()}))
        if self.setup is None:
            rows = embedding_rows(len(self.tokenizer), self.cfg.multitask_specific)
            set_(self, "setup", StepSetup.build(self.cfg, rows, self.ids, self.device))

    @property
    def name(self) -> str:
        """The stage's name in logs (its tasks joined by +)."""
        return "+".join(self.tasks)


class Shares(dict):
    """This rank's share of the global denominator of each loss part (torchrun); 1.0 for a
    part not listed (one process)."""

    def share(self, part: str) -> float:
        return self.get(part, 1.0)


ONE_PROCESS = Shares()


@dataclass(frozen=True)
class TaskStart:
    """What ``before_task`` returns: the extra (replayed) training examples and its report."""

    extra: List[Encoded] = field(default_factory=list)
    report: Report = field(default_factory=dict)


def merge_reports(owner: str, first: Report, second: Report) -> Report:
    """``first`` and ``second`` together; a key both hold is an error naming ``owner``."""
    clash = sorted(set(first) & set(second))
    if clash:
        raise ValueError(f"strategy {owner}: two layers report {', '.join(clash)}")
    return {**first, **second}


class Strategy:
    """Plain sequential training (``finetune``): QA loss only, no replay."""

    name = "finetune"
    traits = StrategyTraits()  # a subclass inherits these unless it declares its own
    uses_lm_loss = False  # QA + lm_lambda * LM when True (lll, multilm)
    diagnoses_teacher = False  # before_task records the teacher diagnostics (Seq-KD)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        register_strategy(cls)

    def training_data(self, ctx: TaskContext, task: str) -> Optional[str]:
        """The file ``task`` trains on in this stage; None = its own training split."""
        return None

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        """Called before a task's first step: extra (replayed) training examples and a report."""
        return TaskStart()

    def loss(self, ctx: TaskContext, model: PreTrainedModel, batch: Batch, weight: torch.Tensor,
             shares: Shares = ONE_PROCESS) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss to minimise on ``batch`` and the parts to log (0-dim tensors, read only when
        the step is logged)."""
        lm_in = batch.lm_input if self.uses_lm_loss else None
        qa, lm = qa_lm_loss(model, batch.qa_input, batch.qa_target, lm_in, batch.lm_target, weight,
                            losses=ctx.setup.losses, rows=batch.rows)
        qa = qa * shares.share("qa")
        if lm is None:
            return qa, {"qa_loss": qa.detach()}
        lm = lm * shares.share("lm")
        return qa + ctx.cfg.lm_lambda * lm, {"qa_loss": qa.detach(), "lm_loss": lm.detach()}

    def after_backward(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        """Before the optimizer step (after unscaling and clipping): edit ``.grad`` in place."""

    def after_step(self, ctx: TaskContext, model: PreTrainedModel, lr: float) -> None:
        """After the optimizer step."""

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> Report:
        """After a task's last step; returns its report."""
        return {}

    def state_dict(self) -> dict:
        """State saved with each task's model (importances, memories)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""


Sequential = Strategy
register_strategy(Strategy)
# Every method the loop calls; a Wrapper forwards each of them (a test keeps this list complete).
HOOKS = ("training_data", "before_task", "loss", "after_backward", "after_step", "after_task", "state_dict",
         "load_state_dict")


class Wrapper(Strategy):
    """A strategy around ``base``: every hook it does not override is the base's, and so are
    its traits (the run folder and the checks are the base's).

    The forwarding methods are generated from :data:`HOOKS`, so a hook added to
    :class:`Strategy` (and to ``HOOKS``) reaches the base of every wrapper without edits here.
    """

    suffix = ""  # appended to the base's name: "lll" + "+word_kd"

    def __init__(self, base: Strategy) -> None:
        self.base = base
        self.name = f"{base.name}{self.suffix}"
        self.uses_lm_loss = base.uses_lm_loss
        self.traits = base.traits

    @property
    def diagnoses_teacher(self) -> bool:  # type: ignore[override]
        """The base's (a wrapper that diagnoses sets the class attribute)."""
        return self.base.diagnoses_teacher


def _forward(hook: str):
    def forward(self, *args, **kwargs):
        return getattr(self.base, hook)(*args, **kwargs)

    forward.__name__ = hook
    forward.__doc__ = f"The base strategy's ``{hook}``."
    return forward


for _hook in HOOKS:
    setattr(Wrapper, _hook, _forward(_hook))


def edits_gradients(strategy: Strategy) -> bool:
    """Whether ``strategy`` or a base it wraps has its own ``after_backward`` (it reads and edits
    ``.grad``, so the loop hands it finite gradients on a step it skips)."""
    while isinstance(strategy, Wrapper):
        if type(strategy).after_backward is not Wrapper.after_backward:
            return True
        strategy = strategy.base
    return type(strategy).after_backward is not Strategy.after_backward
