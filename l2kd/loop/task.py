"""Training one stage (a task, or every task for multitask): plan, resume, steps, epoch ends.

``train_task`` reads top to bottom: the strategy's ``before_task`` (replay data), the plan of
every epoch's batches with its optimizer and schedule, the resume state of an interrupted
run, the steps, and the task's outputs. Each part is a function that fits on a screen.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from l2kd import distributed as dist
from l2kd.batching import strategy_budget, train_batches
from l2kd.checkpoint import drop_resume_state, load_resume_state, save_resume_state, save_task_outputs
from l2kd.config import TrainConfig
from l2kd.data.multitask import embedding_rows, shuffles_batches
from l2kd.data.qa_format import Encoded, collate
from l2kd.io_utils import atomic_torch_save
from l2kd.layout import CHECKPOINT, MULTI_TYPES
from l2kd.losses import LOSS_PARTS, loss_denominators, token_weights
from l2kd.optim import make_optimizer
from l2kd.rng import capture_rng, restore_rng
from l2kd.run_identity import IdentityMismatch, differences, mismatch_message
from l2kd.runtime import bar_options
from l2kd.scalars import ScalarLog
from l2kd.schedule import LRSchedule
from l2kd.strategies import Strategy, TaskContext

log = logging.getLogger("l2kd")
MAX_BAD_STEPS = 5  # consecutive non-finite losses before a run stops


def n_epochs_for(cfg: TrainConfig, size: int, max_size: int) -> int:
    """``--dynamic_epochs``: ``min(max_n_epochs, max_size * n_train_epochs // size)``, where
    ``max_size`` is the largest training set of the whole sequence (as the original). Under
    ``--unbound`` every chunk, and with multitask / multilm the one joint stage, trains
    ``n_train_epochs``: the original's settings skip the dynamic epochs there (a start-up
    warning says so)."""
    if cfg.dynamic_epochs and size and not cfg.unbound and cfg.seq_train_type not in MULTI_TYPES:
        return max(1, min(cfg.max_n_epochs, max_size * cfg.n_train_epochs // size))
    return cfg.n_train_epochs


@dataclass
class Precision:
    """The loop's autocast factory and grad scaler (None without fp16)."""

    autocast: Callable[[], object]
    scaler: Optional[torch.amp.GradScaler]


@dataclass
class TaskPlan:
    """Everything fixed before the first step of a task."""

    data: List[Encoded]  # the task's examples, then the replayed ones
    extra: List[Encoded]  # the replayed (pseudo or real) examples
    epochs: int
    batches: List[List[List[int]]]  # per epoch, the global batches (indices into data)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    weight: torch.Tensor  # class weights of the cross-entropy


@dataclass
class Progress:
    """Where the task is; saved in its resume state."""

    step: int = 0
    tokens: int = 0
    losses: List[float] = field(default_factory=list)
    epoch: int = 1  # the epoch to run next
    pos: int = 0  # batches of that epoch already done
    bad_steps: int = 0


def train_task(model, tok, ctx: TaskContext, strategy: Strategy, precision: Precision, max_size: int,
               identity: Dict[str, object]) -> Dict[str, object]:
    """Train one stage and write its outputs; returns the task summary (``l2kd_task.json``)."""
    name = "+".join(ctx.tasks)
    t0 = time.time()
    model.train()
    scalars = ScalarLog(ctx.run_dir) if dist.is_main() else None  # JSONL (+ TensorBoard when installed)
    plan = plan_task(model, tok, ctx, strategy, max_size)
    progress = resume(model, ctx, strategy, plan, precision, identity)
    if "replay" in ctx.stats and scalars and progress.step == 0 and progress.epoch == 1:
        # pseudo-samples generated / parsed / dropped; a resumed task logged them in its first run
        scalars.write({"task": name, "step": 0, "event": "replay", **ctx.stats["replay"]})
    log.info("[%s] training on %d examples (%d replayed) for %d epochs, %d steps", name, len(plan.data),
             len(plan.extra), plan.epochs,
             plan.schedule.end if ctx.cfg.textbook_schedule else sum(len(b) for b in plan.batches))
    params = [p for p in model.parameters() if p.requires_grad]
    marks = log_marks(sum(len(b) for b in plan.batches))
    save = lambda: checkpoint(model, ctx, strategy, plan, precision, progress, identity)  # noqa: E731
    t_log = time.time()
    for epoch in range(progress.epoch, plan.epochs + 1):
        skip = progress.pos if epoch == progress.epoch else 0
        batches = plan.batches[epoch - 1]
        bar = tqdm(batches[skip:], desc=f"{name} epoch {epoch}/{plan.epochs}", **bar_options(ctx.cfg.quiet))
        for pos, idx in enumerate(bar, start=skip + 1):
            rec = step(model, ctx, strategy, plan, precision, progress, idx, params)
            if rec is None:
                continue
            bar.set_postfix(loss=f"{progress.losses[-1]:.3f}", lr=f"{rec['lr']:.2e}", refresh=False)
            if progress.step % ctx.cfg.logging_steps == 0 or progress.step in marks:
                _log_step(name, epoch, rec, progress, time.time() - t_log, scalars)
            if ctx.cfg.checkpoint_steps and progress.step % ctx.cfg.checkpoint_steps == 0 and pos < len(batches):
                progress.epoch, progress.pos = epoch, pos
                save()
        bar.close()
        end_epoch(model, ctx, plan, progress, epoch, save)
    if scalars:
        scalars.close()
    strategy.after_task(ctx, model)
    return finish_task(model, tok, ctx, strategy, plan, progress, time.time() - t0, identity)


def plan_task(model, tok, ctx: TaskContext, strategy: Strategy, max_size: int) -> TaskPlan:
    """Replay data from ``before_task``, the epochs, every epoch's batches, optimizer and schedule."""
    cfg, name = ctx.cfg, "+".join(ctx.tasks)
    extra = strategy.before_task(ctx, model)
    data = ctx.train_examples + extra
    if not data:
        raise ValueError(f"[{name}] no training examples")
    epochs = n_epochs_for(cfg, len(ctx.train_examples), max_size)
    budget = strategy_budget(ctx.device, cfg.seq_train_type, cfg.cpu_batch_tokens)
    max_count = max(len(data) // cfg.min_n_steps, cfg.min_batch_size)
    weight = token_weights(embedding_rows(len(tok), cfg.multitask_specific), ctx.ids, cfg.tokens_weight, ctx.device)
    optimizer = make_optimizer(model, cfg)
    shuffle = shuffles_batches(cfg.debug, cfg.round_robin, cfg.train_batch_size > 0)
    batches = [train_batches(data, ctx.rng, cfg.train_batch_size, budget, max_count, shuffle) for _ in range(epochs)]
    schedule = LRSchedule(optimizer, cfg.learning_rate, len(data), epochs, sum(len(b) for b in batches),
                          cfg.n_warmup_ratio, cfg.decay_style, cfg.textbook_schedule)
    return TaskPlan(data, extra, epochs, batches, optimizer, schedule, weight)


def resume(model, ctx: TaskContext, strategy: Strategy, plan: TaskPlan, precision: Precision,
           identity: Dict[str, object]) -> Progress:
    """Continue an interrupted run of this task from its ``checkpoint.pt`` (else start afresh)."""
    ck = load_resume_state(ctx.task_dir, ctx.device)
    if ck is None:
        return Progress()
    recorded = ck.get("identity")
    diffs = differences(recorded, identity) if recorded else []
    if diffs:  # also checked before the run starts; this guards a checkpoint that appeared since
        raise IdentityMismatch(mismatch_message(ctx.run_dir, {os.path.join(ctx.task_dir, CHECKPOINT): diffs}))
    plan.extra, plan.batches = ck["extra"], ck["plan"]
    plan.data = ctx.train_examples + plan.extra
    model.load_state_dict(ck["model"])
    plan.optimizer.load_state_dict(ck["optimizer"])
    plan.schedule.load_state_dict(ck["schedule"])
    if precision.scaler and ck.get("scaler"):
        precision.scaler.load_state_dict(ck["scaler"])
    strategy.load_state_dict(ck["strategy"])
    ctx.stats.update(ck["stats"])
    restore_rng(ck["rng"], ctx.rng, ctx.generator)
    progress = Progress(step=ck["step"], tokens=ck["tokens"], losses=ck["losses"], epoch=ck["epoch"], pos=ck["pos"])
    log.info("[%s] resuming from %s: epoch %d, step %d", "+".join(ctx.tasks), os.path.join(ctx.task_dir, CHECKPOINT),
             progress.epoch, progress.step)
    return progress


def checkpoint(model, ctx: TaskContext, strategy: Strategy, plan: TaskPlan, precision: Precision,
               progress: Progress, identity: Dict[str, object]) -> None:
    """The latest resumable state of this task (one file, replaced atomically; rank 0 writes)."""
    if not dist.is_main():
        return
    save_resume_state(ctx.task_dir, {
        "identity": identity, "model": model.state_dict(), "optimizer": plan.optimizer.state_dict(),
        "schedule": plan.schedule.state_dict(), "scaler": precision.scaler.state_dict() if precision.scaler else None,
        "strategy": strategy.state_dict(), "rng": capture_rng(ctx.rng, ctx.generator), "extra": plan.extra,
        "plan": plan.batches, "epoch": progress.epoch, "pos": progress.pos, "step": progress.step,
        "tokens": progress.tokens, "losses": progress.losses, "stats": dict(ctx.stats)})


def step(model, ctx: TaskContext, strategy: Strategy, plan: TaskPlan, precision: Precision, progress: Progress,
         idx: List[int], params: List[torch.nn.Parameter]) -> Optional[Dict[str, float]]:
    """One optimizer step on the global batch ``idx``; None when a non-finite loss skipped it."""
    cfg, scaler = ctx.cfg, precision.scaler
    batch = collate([plan.data[i] for i in dist.shard(idx)], ctx.ids).to(ctx.device)
    if dist.world_size() > 1:  # each mean over the global batch, not the mean of the ranks' means
        ctx.shares = dict(zip(LOSS_PARTS, dist.loss_shares(loss_denominators(batch, plan.weight)).tolist()))
    lr = plan.schedule.apply()
    with precision.autocast():
        loss, scal = strategy.loss(ctx, model, batch, plan.weight)
    global_loss = dist.mean_over_ranks(loss.detach())  # the whole batch's loss; NaN on any rank shows
    if not torch.isfinite(global_loss):
        _skip_bad_step(ctx, progress, global_loss, scaler)
        return None
    progress.bad_steps = 0
    plan.optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    dist.average_gradients(params)
    if scaler:
        scaler.unscale_(plan.optimizer)
    gnorm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
             if cfg.max_grad_norm > 0 else torch.tensor(0.0))
    strategy.after_backward(ctx, model)
    if scaler:
        scaler.step(plan.optimizer)
        scaler.update()
    else:
        plan.optimizer.step()
    strategy.after_step(ctx, model, lr)
    plan.schedule.advance(len(idx))
    progress.step += 1
    progress.tokens += batch.n_tokens
    progress.losses.append(float(global_loss))
    return {"lr": lr, "loss": progress.losses[-1], "grad_norm": float(gnorm), **scal}


def _skip_bad_step(ctx: TaskContext, progress: Progress, loss: torch.Tensor, scaler) -> None:
    """Skip a non-finite step (with a grad scaler its normal overflow path); stop after
    MAX_BAD_STEPS in a row, which means diverged training, not an fp16 overflow."""
    name = "+".join(ctx.tasks)
    progress.bad_steps += 1
    log.warning("[%s] non-finite loss %s at step %d: step skipped (%d in a row)", name, loss.item(),
                progress.step, progress.bad_steps)
    if progress.bad_steps >= MAX_BAD_STEPS:
        raise FloatingPointError(
            f"[{name}] {progress.bad_steps} consecutive non-finite losses (last at step {progress.step}): "
            "training diverged; lower --learning_rate or check the data. Earlier tasks' models are intact.")
    if scaler:
        scaler.update(scaler.get_scale() / 2)


def log_marks(total_steps: int, n: int = 4) -> set:
    """Steps logged whatever ``--logging_steps`` is: ``n`` evenly spaced ones ending with the
    last, so that a task shorter than ``--logging_steps`` still logs its loss."""
    return {max(1, round(total_steps * k / n)) for k in range(1, n + 1)} if total_steps else set()


def _log_step(name: str, epoch: int, rec: Dict[str, float], progress: Progress, seconds: float,
              scalars: Optional[ScalarLog]) -> None:
    out = {"task": name, "step": progress.step, "epoch": epoch, "lr": rec["lr"], "loss": rec["loss"],
           "grad_norm": rec["grad_norm"], "tokens_per_s": progress.tokens / max(seconds, 1e-9),
           **{k: v for k, v in rec.items() if k not in ("lr", "loss", "grad_norm")}}
    log.info("[%s] %s", name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in out.items() if k != "task"))
    if scalars:
        scalars.write(out)


def end_epoch(model, ctx: TaskContext, plan: TaskPlan, progress: Progress, epoch: int, save: Callable[[], None]
              ) -> None:
    """``model-<epoch>``, the resume state at the start of the next epoch, the epoch's mean loss."""
    if dist.is_main():
        atomic_torch_save(os.path.join(ctx.task_dir, f"model-{epoch}"), model.state_dict())
    progress.epoch, progress.pos = epoch + 1, 0
    save()
    recent = progress.losses[-len(plan.batches[epoch - 1]):]
    log.info("[%s] epoch %d done: mean loss %s", "+".join(ctx.tasks), epoch,
             f"{float(np.mean(recent)):.4f}" if recent else "n/a (every step skipped)")


def finish_task(model, tok, ctx: TaskContext, strategy: Strategy, plan: TaskPlan, progress: Progress,
                elapsed: float, identity: Dict[str, object]) -> Dict[str, object]:
    """Write the finished task's outputs (``model-finish`` last) and drop its resume state."""
    info = {"tasks": list(ctx.tasks), "epochs": plan.epochs, "steps": progress.step, "examples": len(plan.data),
            "replayed": len(plan.extra), "final_loss": progress.losses[-1] if progress.losses else None,
            "seconds": elapsed, "examples_per_s": len(plan.data) * plan.epochs / elapsed, **ctx.stats,
            "identity": identity}
    if dist.is_main():
        save_task_outputs(model, tok, ctx.task_dir, info, strategy.state_dict(), capture_rng(ctx.rng, ctx.generator))
        drop_resume_state(ctx.task_dir)
    dist.barrier()
    log.info("[%s] finished in %.0f s (%.1f examples/s)", "+".join(ctx.tasks), elapsed, info["examples_per_s"])
    return info
