"""Training one stage (a task, or every task for multitask): plan, resume, steps, epoch ends.

``train_task`` reads top to bottom: the strategy's ``before_task`` (replay data), the plan of
every epoch's batches with its optimizer and schedule, the resume state of an interrupted
run, the steps, and the task's outputs. One :class:`TaskRun` holds the task's run state, so
every part takes it alone. Each part is a function that fits on a screen.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from l2kd import distributed as dist
from l2kd.batching import train_batches
from l2kd.checkpoint import drop_resume_state, load_resume_state, save_resume_state, save_task_outputs
from l2kd.config import TrainConfig
from l2kd.data.multitask import shuffles_batches
from l2kd.data.qa_format import Encoded, collate
from l2kd.io_utils import atomic_torch_save
from l2kd.layout import CHECKPOINT
from l2kd.losses import LOSS_PARTS, loss_denominators
from l2kd.optim import make_optimizer
from l2kd.rng import capture_rng, restore_rng
from l2kd.run_identity import IdentityMismatch, differences, mismatch_message
from l2kd.runtime import bar_options
from l2kd.scalars import ScalarLog
from l2kd.schedule import LRSchedule
from l2kd.strategies import Report, Shares, Strategy, TaskContext, TaskStart

log = logging.getLogger("l2kd")
MAX_BAD_STEPS = 5  # consecutive non-finite losses before a run stops
# Keys of the task summary the loop writes; a strategy's report may not use them.
LOOP_KEYS = frozenset({"tasks", "epochs", "steps", "examples", "replayed", "final_loss", "seconds", "examples_per_s",
                       "identity", "reported_by", "unbound", "restored_from"})


def n_epochs_for(cfg: TrainConfig, size: int, max_size: int) -> int:
    """``--dynamic_epochs``: ``min(max_n_epochs, max_size * n_train_epochs // size)``, where
    ``max_size`` is the largest training set of the whole sequence (as the original). Under
    ``--unbound`` every chunk, and for a joint strategy (multitask / multilm) the one joint
    stage, trains ``n_train_epochs``: the original's settings skip the dynamic epochs there (a
    start-up warning says so)."""
    if cfg.dynamic_epochs and size and not cfg.unbound and not cfg.traits.joint:
        return max(1, min(cfg.max_n_epochs, max_size * cfg.n_train_epochs // size))
    return cfg.n_train_epochs


@dataclass
class Precision:
    """The loop's autocast factory and grad scaler (None without fp16)."""

    autocast: Callable[[], object]
    scaler: Optional[torch.amp.GradScaler]


@dataclass(frozen=True)
class TaskPlan:
    """Everything fixed before the first step of a task (a resumed task gets a new plan)."""

    data: List[Encoded]  # the task's examples, then the replayed ones
    extra: List[Encoded]  # the replayed (pseudo or real) examples
    epochs: int
    batches: List[List[List[int]]]  # per epoch, the global batches (indices into data)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule


@dataclass
class Progress:
    """Where the task is; saved in its resume state."""

    step: int = 0
    tokens: int = 0
    losses: List[float] = field(default_factory=list)
    epoch: int = 1  # the epoch to run next
    pos: int = 0  # batches of that epoch already done
    bad_steps: int = 0


@dataclass
class TaskRun:
    """One task's run state: what every step, checkpoint and the task's end read."""

    model: torch.nn.Module
    tok: object
    ctx: TaskContext
    strategy: Strategy
    precision: Precision
    identity: Dict[str, object]
    plan: TaskPlan
    progress: Progress = field(default_factory=Progress)
    reports: Report = field(default_factory=dict)  # the strategy's, filed by the loop
    params: List[torch.nn.Parameter] = field(default_factory=list)


def file_report(run: TaskRun, report: Optional[Report]) -> None:
    """Add a hook's report to the task summary under the strategy's name; a key the loop
    writes (``steps``, ``epochs``...) is refused."""
    report = dict(report or {})
    clash = sorted(set(report) & LOOP_KEYS)
    if clash:
        raise ValueError(f"strategy {run.strategy.name} reports {', '.join(clash)}, which the loop writes in the "
                         "task summary; rename those keys")
    run.reports.update(report)


def train_task(model, tok, ctx: TaskContext, strategy: Strategy, precision: Precision, max_size: int,
               identity: Dict[str, object], loop_record: Optional[Report] = None) -> Dict[str, object]:
    """Train one stage and write its outputs; returns the task summary (``l2kd_task.json``).
    ``loop_record``: the loop's own entries for the summary (the ``--unbound`` chunk)."""
    t0 = time.time()
    model.train()
    scalars = ScalarLog(ctx.run_dir) if dist.is_main() else None  # JSONL (+ TensorBoard when installed)
    start = _task_start(strategy.before_task(ctx, model))
    run = TaskRun(model, tok, ctx, strategy, precision, identity, plan_task(model, ctx, start.extra, max_size),
                  params=[p for p in model.parameters() if p.requires_grad])
    file_report(run, start.report)
    resume(run)
    if "replay" in run.reports and scalars and run.progress.step == 0 and run.progress.epoch == 1:
        # pseudo-samples generated / parsed / dropped; a resumed task logged them in its first run
        scalars.write({"task": ctx.name, "step": 0, "event": "replay", **run.reports["replay"]})
    plan, progress = run.plan, run.progress
    log.info("[%s] training on %d examples (%d replayed) for %d epochs, %d steps", ctx.name, len(plan.data),
             len(plan.extra), plan.epochs,
             plan.schedule.end if ctx.cfg.textbook_schedule else sum(len(b) for b in plan.batches))
    marks = log_marks(sum(len(b) for b in plan.batches))
    t_log = time.time()
    for epoch in range(progress.epoch, plan.epochs + 1):
        skip = progress.pos if epoch == progress.epoch else 0
        batches = plan.batches[epoch - 1]
        bar = tqdm(batches[skip:], desc=f"{ctx.name} epoch {epoch}/{plan.epochs}", **bar_options(ctx.cfg.quiet))
        for pos, idx in enumerate(bar, start=skip + 1):
            rec = step(run, idx)
            if rec is None:
                continue
            bar.set_postfix(loss=f"{progress.losses[-1]:.3f}", lr=f"{rec['lr']:.2e}", refresh=False)
            if progress.step % ctx.cfg.logging_steps == 0 or progress.step in marks:
                _log_step(ctx.name, epoch, rec, progress, time.time() - t_log, scalars)
            if ctx.cfg.checkpoint_steps and progress.step % ctx.cfg.checkpoint_steps == 0 and pos < len(batches):
                progress.epoch, progress.pos = epoch, pos
                checkpoint(run)
        bar.close()
        end_epoch(run, epoch)
    if scalars:
        scalars.close()
    file_report(run, strategy.after_task(ctx, model))
    return finish_task(run, time.time() - t0, loop_record or {})


def _task_start(start) -> TaskStart:
    """``before_task``'s result; a plain list of examples (a strategy written before reports) is
    read as examples with no report."""
    return start if isinstance(start, TaskStart) else TaskStart(list(start or []))


def plan_task(model, ctx: TaskContext, extra: List[Encoded], max_size: int) -> TaskPlan:
    """The epochs, every epoch's batches, optimizer and schedule of the task's examples and ``extra``."""
    cfg = ctx.cfg
    data = list(ctx.train_examples) + list(extra)
    if not data:
        raise ValueError(f"[{ctx.name}] no training examples")
    epochs = n_epochs_for(cfg, len(ctx.train_examples), max_size)
    max_count = max(len(data) // cfg.min_n_steps, cfg.min_batch_size)
    optimizer = make_optimizer(model, cfg)
    shuffle = shuffles_batches(cfg.debug, cfg.round_robin, cfg.train_batch_size > 0)
    batches = [train_batches(data, ctx.rng, cfg.train_batch_size, ctx.setup.batch_budget, max_count, shuffle)
               for _ in range(epochs)]
    schedule = LRSchedule(optimizer, cfg.learning_rate, len(data), epochs, sum(len(b) for b in batches),
                          cfg.n_warmup_ratio, cfg.decay_style, cfg.textbook_schedule)
    return TaskPlan(data, list(extra), epochs, batches, optimizer, schedule)


def resume(run: TaskRun) -> None:
    """Continue an interrupted run of this task from its ``checkpoint.pt`` (else start afresh):
    the checkpoint's replayed examples and batches become a new plan."""
    ctx = run.ctx
    ck = load_resume_state(ctx.task_dir, ctx.device)
    if ck is None:
        return
    recorded = ck.get("identity")
    diffs = differences(recorded, run.identity) if recorded else []
    if diffs:  # also checked before the run starts; this guards a checkpoint that appeared since
        raise IdentityMismatch(mismatch_message(ctx.run_dir, {os.path.join(ctx.task_dir, CHECKPOINT): diffs}))
    run.plan = dataclasses.replace(run.plan, extra=list(ck["extra"]), batches=ck["plan"],
                                   data=list(ctx.train_examples) + list(ck["extra"]))
    run.model.load_state_dict(ck["model"])
    run.plan.optimizer.load_state_dict(ck["optimizer"])
    run.plan.schedule.load_state_dict(ck["schedule"])
    if run.precision.scaler and ck.get("scaler"):
        run.precision.scaler.load_state_dict(ck["scaler"])
    run.strategy.load_state_dict(ck["strategy"])
    file_report(run, {k: v for k, v in dict(ck.get("stats") or {}).items() if k not in LOOP_KEYS})
    restore_rng(ck["rng"], ctx.rng, ctx.generator)
    run.progress = Progress(step=ck["step"], tokens=ck["tokens"], losses=list(ck["losses"]), epoch=ck["epoch"],
                            pos=ck["pos"])
    log.info("[%s] resuming from %s: epoch %d, step %d", ctx.name, os.path.join(ctx.task_dir, CHECKPOINT),
             run.progress.epoch, run.progress.step)


def checkpoint(run: TaskRun) -> None:
    """The latest resumable state of this task (one file, replaced atomically; rank 0 writes).
    The keys are those l2kd has always written (``stats``: the strategy's reports)."""
    if not dist.is_main():
        return
    plan, progress = run.plan, run.progress
    save_resume_state(run.ctx.task_dir, {
        "identity": run.identity, "model": run.model.state_dict(), "optimizer": plan.optimizer.state_dict(),
        "schedule": plan.schedule.state_dict(),
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else None,
        "strategy": run.strategy.state_dict(), "rng": capture_rng(run.ctx.rng, run.ctx.generator),
        "extra": plan.extra, "plan": plan.batches, "epoch": progress.epoch, "pos": progress.pos,
        "step": progress.step, "tokens": progress.tokens, "losses": progress.losses, "stats": dict(run.reports)})


def step(run: TaskRun, idx: List[int]) -> Optional[Dict[str, float]]:
    """One optimizer step on the global batch ``idx``; None when a non-finite loss skipped it."""
    ctx, plan, progress, strategy = run.ctx, run.plan, run.progress, run.strategy
    cfg, scaler, model = ctx.cfg, run.precision.scaler, run.model
    weight = ctx.setup.class_weight
    batch = collate([plan.data[i] for i in dist.shard(idx)], ctx.ids).to(ctx.device)
    kwargs = {}
    if dist.world_size() > 1:  # each mean over the global batch, not the mean of the ranks' means
        kwargs["shares"] = Shares(zip(LOSS_PARTS, dist.loss_shares(loss_denominators(batch, weight)).tolist()))
    lr = plan.schedule.apply()
    with run.precision.autocast():
        loss, parts = strategy.loss(ctx, model, batch, weight, **kwargs)
    global_loss = dist.mean_over_ranks(loss.detach())  # the whole batch's loss; NaN on any rank shows
    if not torch.isfinite(global_loss):
        _skip_bad_step(ctx, progress, global_loss, scaler)
        return None
    progress.bad_steps = 0
    plan.optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    dist.average_gradients(run.params)
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
    return {"lr": lr, "loss": progress.losses[-1], "grad_norm": float(gnorm),
            **{k: float(v) for k, v in parts.items()}}


def _skip_bad_step(ctx: TaskContext, progress: Progress, loss: torch.Tensor, scaler) -> None:
    """Skip a non-finite step (with a grad scaler its normal overflow path); stop after
    MAX_BAD_STEPS in a row, which means diverged training, not an fp16 overflow."""
    progress.bad_steps += 1
    log.warning("[%s] non-finite loss %s at step %d: step skipped (%d in a row)", ctx.name, loss.item(),
                progress.step, progress.bad_steps)
    if progress.bad_steps >= MAX_BAD_STEPS:
        raise FloatingPointError(
            f"[{ctx.name}] {progress.bad_steps} consecutive non-finite losses (last at step {progress.step}): "
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


def end_epoch(run: TaskRun, epoch: int) -> None:
    """``model-<epoch>``, the resume state at the start of the next epoch, the epoch's mean loss."""
    ctx, progress = run.ctx, run.progress
    if dist.is_main():
        atomic_torch_save(os.path.join(ctx.task_dir, f"model-{epoch}"), run.model.state_dict())
    progress.epoch, progress.pos = epoch + 1, 0
    checkpoint(run)
    recent = progress.losses[-len(run.plan.batches[epoch - 1]):]
    log.info("[%s] epoch %d done: mean loss %s", ctx.name, epoch,
             f"{float(np.mean(recent)):.4f}" if recent else "n/a (every step skipped)")


def finish_task(run: TaskRun, elapsed: float, loop_record: Report) -> Dict[str, object]:
    """Write the finished task's outputs (``model-finish`` last) and drop its resume state."""
    ctx, plan, progress = run.ctx, run.plan, run.progress
    info = {"tasks": list(ctx.tasks), "epochs": plan.epochs, "steps": progress.step, "examples": len(plan.data),
            "replayed": len(plan.extra), "final_loss": progress.losses[-1] if progress.losses else None,
            "seconds": elapsed, "examples_per_s": len(plan.data) * plan.epochs / elapsed, **run.reports,
            "reported_by": {k: run.strategy.name for k in run.reports}, **loop_record, "identity": run.identity}
    if dist.is_main():
        save_task_outputs(run.model, run.tok, ctx.task_dir, info, run.strategy.state_dict(),
                          capture_rng(ctx.rng, ctx.generator))
        drop_resume_state(ctx.task_dir)
    dist.barrier()
    log.info("[%s] finished in %.0f s (%.1f examples/s)", ctx.name, elapsed, info["examples_per_s"])
    return info
