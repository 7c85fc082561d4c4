"""Shared machinery of EWC and MAS (the original's ``regularizers.py``), plus the resume helpers
GEM also uses.

What the original does (docs/original.md section 7, same in LAMOL and L2KD):

* At the end of each task, one pass over the task's training data in batches: the batch loss
  ``L_b`` (a batch mean) is divided by the batch size ``n_b`` and back-propagated, and
  ``f(grad)`` is summed (EWC ``f = grad**2``, MAS ``f = |grad|``); then
  ``Omega += sum / N`` (``N`` examples). So ``Omega_task = sum_b f(grad(L_b / n_b)) / N``.
  With one example per batch that is the papers' per-example average (empirical Fisher for
  EWC, MAS's importance); with larger batches it is the gradient of the *batch mean*, shrunk by
  ``1/n_b`` (``1/n_b**2`` for EWC): a quirk of the original we keep by default, since
  ``--reg_lambda 1.0`` was tuned with it. ``importance_batch_size=1`` gives the papers' definition.
  The model's mode is left as the loop has it (train mode, dropout on; the original's
  ``model.eval()`` is commented out).
* After every Adam step (the original's ``Weight_Regularized_AdamW``, a decoupled step, not a
  loss term): ``p -= lr * 2 * reg_lambda * Omega * (p - anchor)``, i.e. the gradient of
  ``reg_lambda * sum Omega (p - anchor)**2`` applied with plain SGD at the current lr. The
  original applies weight decay *after* this step; torch's AdamW decays *before* its update
  (an O(lr**2) difference). With a grad scaler, a skipped (overflowed) step still gets the pull
  (the original skipped it too; fp16 only).
* Anchor (``--reg_anchor``): ``initial`` (default, the original) snapshots the weights before
  task 1 and never refreshes them (the papers anchor at the previous task's optimum);
  ``previous`` re-snapshots after each task (textbook EWC/MAS). New token-embedding rows (tasks
  added with ``--add_task_tokens``) get importance 0 and anchor = their current value.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Sequence

import torch
from transformers import PreTrainedModel

from l2kd.batching import pack_by_budget
from l2kd.data.qa_format import Batch, Encoded, collate
from l2kd.runtime import precision_context
from l2kd.strategies.base import Report, Strategy, TaskContext, TaskStart

BatchLoss = Callable[[PreTrainedModel, Batch, List[Encoded]], torch.Tensor]
# Bounds on the pull of the most important weight per step, 2 * lr * reg_lambda * max(Omega): below
# WEAK_PULL no weight gets measurably closer to its anchor within a task (the regulariser is
# a no-op and the run equals finetune); above UNSTABLE_PULL the step overshoots the anchor.
WEAK_PULL = 1e-4
UNSTABLE_PULL = 1.0


# ----------------------------------------------------------------------------- shared helpers
def plan_batches(examples: Sequence[Encoded], ctx: TaskContext, batch_size: int = 0) -> List[List[int]]:
    """Batches in data order (no RNG): ``batch_size``, else ``--train_batch_size``, else the
    task's dynamic budget (``ctx.setup``, the loop's)."""
    bs = batch_size or ctx.cfg.train_batch_size
    n = len(examples)
    if bs > 0:
        return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
    max_count = max(n // ctx.cfg.min_n_steps, ctx.cfg.min_batch_size)
    return pack_by_budget(list(range(n)), [e.lm_length for e in examples], ctx.setup.batch_budget, max_count)


def grad_autocast(ctx: TaskContext):
    """Autocast for gradients computed outside the loop's grad scaler: the loop's bf16 autocast
    when it uses one, else fp32 (fp16 without loss scaling could underflow)."""
    autocast, scaler = precision_context(ctx.device, ctx.cfg.fp32, ctx.cfg.bf16_cpu)
    return nullcontext if scaler is not None else autocast


def trainable(model: PreTrainedModel):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- EWC / MAS
@torch.no_grad()
def penalty_step(params: List[torch.Tensor], omega: List[torch.Tensor], anchor: List[torch.Tensor],
                 lr: float, reg_lambda: float) -> None:
    """``p -= lr * 2 * reg_lambda * omega * (p - anchor)`` for every parameter (in place)."""
    diff = torch._foreach_sub(params, anchor)
    torch._foreach_mul_(diff, omega)
    torch._foreach_add_(params, diff, alpha=-2.0 * lr * reg_lambda)


def compute_importance(model: PreTrainedModel, examples: Sequence[Encoded], ids, batches: List[List[int]],
                       batch_loss: BatchLoss, kind: str, device: torch.device, autocast=nullcontext
                       ) -> Dict[str, torch.Tensor]:
    """``Omega_task = sum_b f(grad(L_b / n_b)) / N`` per trainable parameter (module docstring);
    ``kind`` ``"sq"`` (EWC) or ``"abs"`` (MAS). Leaves every ``.grad`` at None."""
    named = trainable(model)
    params = [p for _, p in named]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for idx in batches:
        exs = [examples[i] for i in idx]
        for p in params:
            p.grad = None
        with autocast():
            loss = batch_loss(model, collate(exs, ids).to(device), exs) / len(exs)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if kind == "sq":
            torch._foreach_addcmul_(sums, grads, grads)
        else:
            torch._foreach_add_(sums, torch._foreach_abs(grads))
    for p in params:
        p.grad = None
    n = max(len(examples), 1)
    return {name: s / n for (name, _), s in zip(named, sums)}


def penalty_strength(omega: Dict[str, torch.Tensor], lr: float, reg_lambda: float) -> Dict[str, float]:
    """How hard the pull acts: mean and max importance, and ``max_pull = 2 * lr * reg_lambda * max(Omega)``,
    the fraction of its distance to the anchor the most important weight loses per step at the
    peak learning rate (the step is ``p -= 2 lr lambda Omega (p - anchor)``)."""
    n = sum(w.numel() for w in omega.values())
    mean = float(sum(w.sum(dtype=torch.float64) for w in omega.values()) / max(n, 1))
    top = max((float(w.max()) for w in omega.values() if w.numel()), default=0.0)
    return {"mean": mean, "max": top, "max_pull": 2.0 * lr * reg_lambda * top}


def strength_warnings(name: str, strength: Dict[str, float], lr: float, reg_lambda: float) -> List[str]:
    """Warnings when the penalty cannot act (``max_pull < WEAK_PULL``) or overshoots (``> UNSTABLE_PULL``),
    with the ``--reg_lambda`` that would give a pull of 0.1."""
    pull, top = strength["max_pull"], strength["max"]
    if top <= 0 or lr <= 0:
        return []
    suggest = 0.1 / (2.0 * lr * top)
    if pull < WEAK_PULL:
        return [f"{name}: --reg_lambda {reg_lambda:g} is too weak to act: the most important weight (importance "
                f"{top:.2e}) moves only {pull:.1e} of its distance to the anchor per step at lr {lr:g}, so this run "
                f"will behave like finetune; --reg_lambda of about {suggest:.1e} gives a pull of 0.1"]
    if pull > UNSTABLE_PULL:
        return [f"{name}: --reg_lambda {reg_lambda:g} overshoots: the most important weight's pull is {pull:.2f} of its "
                f"distance to the anchor per step (> {UNSTABLE_PULL:g} oscillates); about {suggest:.1e} gives 0.1"]
    return []


def _fit(t: torch.Tensor, p: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``t`` moved to ``p``; rows added to ``p`` since (grown vocabulary) taken from ``fill``."""
    t = t.to(p.device)
    if t.shape == p.shape:
        return t
    if t.dim() and t.shape[1:] == p.shape[1:] and t.shape[0] < p.shape[0]:
        return torch.cat([t, fill[t.shape[0]:].detach().to(t.dtype)])
    raise ValueError(f"saved regularizer tensor {tuple(t.shape)} does not fit parameter {tuple(p.shape)}")


class ImportanceRegularizer(Strategy):
    """Plain training plus a pull towards anchor weights, weighted by per-weight importance."""

    kind = "sq"

    def __init__(self, importance_batch_size: int = 0):
        self.importance_batch_size = importance_batch_size  # 0 = the training batch size (original)
        self.omega: Dict[str, torch.Tensor] = {}
        self.anchor: Dict[str, torch.Tensor] = {}
        self._lists = None

    def batch_loss(self, model: PreTrainedModel, batch: Batch, examples: List[Encoded], ctx: TaskContext,
                   weight: torch.Tensor) -> torch.Tensor:
        """The batch-mean loss whose gradient measures importance."""
        raise NotImplementedError

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        named = trainable(model)
        if not self.anchor:  # weights before task 1 (both anchors; Omega is 0 during task 1)
            self.anchor = {n: p.detach().clone() for n, p in named}
        self.anchor = {n: _fit(self.anchor[n], p, p) for n, p in named}
        self.omega = {n: _fit(self.omega[n], p, torch.zeros_like(p)) for n, p in named if n in self.omega}
        self._lists = ([p for n, p in named if n in self.omega], [self.omega[n] for n, _ in named if n in self.omega],
                       [self.anchor[n] for n, _ in named if n in self.omega])
        return TaskStart()

    def after_step(self, ctx: TaskContext, model: PreTrainedModel, lr: float) -> None:
        if self._lists and self._lists[0] and lr and ctx.cfg.reg_lambda:
            penalty_step(*self._lists, lr, ctx.cfg.reg_lambda)

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> Report:
        weight = ctx.setup.class_weight
        loss = lambda m, b, exs: self.batch_loss(m, b, exs, ctx, weight)  # noqa: E731
        new = compute_importance(model, ctx.train_examples, ctx.ids,
                                 plan_batches(ctx.train_examples, ctx, self.importance_batch_size),
                                 loss, self.kind, ctx.device, grad_autocast(ctx))
        self.omega = {n: self.omega[n] + w if n in self.omega else w for n, w in new.items()}
        if ctx.cfg.reg_anchor == "previous":
            self.anchor = {n: p.detach().clone() for n, p in trainable(model)}
        self._lists = None
        lr, lam = ctx.cfg.learning_rate, ctx.cfg.reg_lambda
        strength = penalty_strength(self.omega, lr, lam)
        strength["warnings"] = strength_warnings(self.name, strength, lr, lam)
        for w in strength["warnings"]:
            ctx.logger.warning("[%s] %s", ctx.name, w)
        return {f"{self.name}_importance": strength}

    def state_dict(self) -> dict:
        return {"omega": self.omega, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.omega, self.anchor = dict(state["omega"]), dict(state["anchor"])
