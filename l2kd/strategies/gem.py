"""GEM (``--seq_train_type gem``): QA loss only; every step's gradient is projected so that it
does not increase the QA loss of episodic memories of the past tasks (Lopez-Paz & Ranzato 2017).

As the original (docs/original.md section 7): at task ``t >= 1`` a memory of ``int(gen_lm_sample_percentage
* size of task t)`` real examples of task ``t-1`` is drawn with replacement and kept for the rest
of the sequence. Every step, for every memory, a full pass over it: per batch the QA-loss
gradient, clipped to ``--max_grad_norm``, times the batch size; summed and divided by the
memory size. If any memory gradient has a negative dot with the current gradient (fp32, as the
original's ``torch.mm``), the current gradient becomes ``gem_project(g, M, margin=--qp_margin,
eps=1e-3)`` (the original's quadprog dual, margin on the dual variables).

Order in the step (``after_backward``): the loop has already unscaled (grad scaler) and clipped
the current gradient; it is copied into one flat ``[P]`` buffer. Memory gradients are then
computed with no grad scaler (fp32, or the loop's bf16 autocast), clipped per batch like the
original, and written straight into row ``i`` of one ``[t, P]`` buffer: the first batch's
backward accumulates into ``.grad`` tensors that are views of that row. Both buffers are made
once per task; no flat tensor is allocated per step. At the end every ``.grad`` becomes a view
of the flat buffer, so the projection (``out=`` the buffer, in place) is what the optimizer
reads, and an unprojected step costs no copy back. The original's fp16 path projected the fp16
copies after the master gradients were taken (no effect); here it applies in every precision.
Memories are batched once per task (collated on the device, in memory order, ``--train_batch_size``
or the loop's dynamic budget) and reused by every step.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from transformers import PreTrainedModel

from l2kd.config import StrategyTraits
from l2kd.data.qa_format import Encoded, collate
from l2kd.losses import head_ce
from l2kd.ops.gem_project import gem_project
from l2kd.strategies.base import Report, Strategy, TaskContext, TaskStart
from l2kd.strategies.regularizer import grad_autocast, plan_batches


class GEM(Strategy):
    """Gradient episodic memory as LAMOL/L2KD run it."""

    name = "gem"
    traits = StrategyTraits(replays=True, memory_factor=0.50, accepts=frozenset({"distil", "seq_distil"}),
                            refusals=(("unbound", "the original never creates GEM's memories under --unbound and "
                                                  "stops at the second chunk; use lll, finetune, ewc or mas"),))

    def __init__(self):
        self.memories: Dict[str, List[Encoded]] = {}  # past task -> its memory (picklable)
        self.counts: Dict[str, object] = {}  # this task's memory sizes, steps and projected steps
        self._clear()

    def _clear(self) -> None:
        self._batches, self._params, self._g, self._mem, self._g_views, self._row_views = [], [], None, None, [], []

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        if ctx.prev_tasks and ctx.prev_tasks[-1] not in self.memories:
            prev = ctx.prev_tasks[-1]
            data = ctx.prev_train_examples.get(prev, [])
            k = int(ctx.cfg.gen_lm_sample_percentage * len(ctx.train_examples))
            self.memories[prev] = [data[int(i)] for i in ctx.rng.integers(0, len(data), size=k)] if data else []
        self._clear()
        self.counts = {}
        mems = [m for t, m in self.memories.items() if t in ctx.prev_tasks and m]
        if not mems:
            return TaskStart()
        self._params = [p for p in model.parameters() if p.requires_grad]
        if any(p.dtype != torch.float32 for p in self._params):
            raise TypeError("GEM: parameters must be float32 (mixed precision goes through autocast)")
        sizes = [p.numel() for p in self._params]
        self._g = torch.empty(sum(sizes), device=ctx.device)
        self._mem = torch.empty(len(mems), sum(sizes), device=ctx.device)
        self._g_views = [v.view_as(p) for v, p in zip(self._g.split(sizes), self._params)]
        self._row_views = [[v.view_as(p) for v, p in zip(row.split(sizes), self._params)] for row in self._mem]
        self._batches = [[(collate([m[i] for i in idx], ctx.ids).to(ctx.device), len(idx) / len(m))
                          for idx in plan_batches(m, ctx)] for m in mems]
        self._weight = ctx.setup.class_weight
        self._autocast = grad_autocast(ctx)
        self.counts = {"memory_sizes": [len(m) for m in mems], "steps": 0, "projected_steps": 0}
        return TaskStart()

    def after_backward(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        if not self._batches:
            return
        params, cfg = self._params, ctx.cfg
        had = [p.grad is not None for p in params]
        cur = [(v, p.grad) for v, p, h in zip(self._g_views, params, had) if h]
        torch._foreach_copy_([v for v, _ in cur], [g for _, g in cur])
        for v, h in zip(self._g_views, had):
            if not h:
                v.zero_()
        for i, batches in enumerate(self._batches):
            for b, (batch, share) in enumerate(batches):
                if b == 0:  # backward accumulates straight into row i
                    self._mem[i].zero_()
                    for p, v in zip(params, self._row_views[i]):
                        p.grad = v
                else:
                    for p in params:
                        p.grad = None
                with self._autocast():
                    loss = head_ce(model, batch.qa_input, batch.qa_target, self._weight, losses=ctx.setup.losses,
                                   rows=batch.rows.get("qa"))
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if b == 0:
                    if share != 1.0:
                        self._mem[i].mul_(share)
                else:
                    got = [(v, p.grad) for v, p in zip(self._row_views[i], params) if p.grad is not None]
                    torch._foreach_add_([v for v, _ in got], [g for _, g in got], alpha=share)
        for p, v, h in zip(params, self._g_views, had):
            p.grad = v if h else None
        stats = self.counts
        stats["steps"] += 1
        if bool((self._mem @ self._g < 0).any()):
            gem_project(self._g, self._mem, margin=cfg.qp_margin, eps=1e-3, use_kernels=cfg.use_kernels, out=self._g)
            stats["projected_steps"] += 1

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> Report:
        self._clear()
        return {"gem": dict(self.counts)} if self.counts else {}

    def state_dict(self) -> dict:
        return {"memories": self.memories, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.memories = dict(state["memories"])
        if state.get("counts"):  # a checkpoint of an older l2kd has none: counting restarts
            self.counts = dict(state["counts"])
