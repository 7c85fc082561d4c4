"""Training one stage (a task, or every task for multitask): plan, resume, steps, epoch ends.

``train_task`` reads top to bottom: the strategy's ``before_task`` (replay data), the plan of
every epoch's batches with its optimizer and schedule, the resume state of an interrupted
run, the steps, and the task's outputs. One :class:`TaskRun` holds the task's run state, so
every part takes it alone. Each part is a function that fits on a screen.

A step that does not log never reads the device (on a GPU every read waits for the queued
work): the loss, its parts and the gradient norm stay tensors, the epoch's running loss and
the count of non-finite steps accumulate on the device (:class:`DeviceStats`), and a step whose
loss or gradient norm is not finite is skipped there (the optimizer is told to keep every
value, as a grad scaler does, and reads the step's gradients as 0). The host reads them at
logging steps, checkpoints, epoch ends and every :data:`HEALTH_STEPS` steps, which bounds how
long a diverged run goes on.

Epoch models and checkpoints are written by a background writer (:class:`StateWriter`): the
state is copied to the host at once and written while training goes on. The task's end (and an
error leaving it) waits for those writes; a failed one stops the run naming its file.
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
from l2kd.async_writer import StateWriter
from l2kd.batching import train_batches
from l2kd.checkpoint import (drop_resume_state, load_resume_state, save_epoch_model, save_resume_state,
                             save_task_outputs)
from l2kd.config import TrainConfig
from l2kd.data.multitask import shuffles_batches
from l2kd.data.qa_format import Encoded, collate
from l2kd.layout import CHECKPOINT
from l2kd.losses import LOSS_PARTS, loss_denominators
from l2kd.optim import OriginalAdamW, make_optimizer
from l2kd.rng import capture_rng, restore_rng
from l2kd.run_identity import IdentityMismatch, differences, mismatch_message
from l2kd.runtime import bar_options
from l2kd.scalars import ScalarLog
from l2kd.schedule import LRSchedule
from l2kd.strategies import Report, Shares, Strategy, TaskContext, TaskStart, edits_gradients

log = logging.getLogger("l2kd")
MAX_BAD_STEPS = 5  # consecutive non-finite losses before a run stops
HEALTH_STEPS = 20  # the device's count of non-finite steps is read at least this often
# Keys of the task summary the loop writes; a strategy's report may not use them.
LOOP_KEYS = frozenset({"tasks", "epochs", "steps", "examples", "replayed", "final_loss", "seconds", "examples_per_s",
                       "identity", "reported_by", "unbound", "restored_from", "state_bytes_written"})


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
    losses: List[float] = field(default_factory=list)  # the losses read at logging steps
    epoch: int = 1  # the epoch to run next
    pos: int = 0  # batches of that epoch already done
    checked: int = 0  # the step of the last health check


class DeviceStats:
    """What the steps accumulate on the device: the epoch's finite losses (sum and count), the
    last finite loss, and the non-finite steps (the current run of them, the longest run and
    the count since the last check). Read together in one copy (:meth:`read`)."""

    FIELDS = ("loss_sum", "loss_n", "last_loss", "bad_run", "bad_max", "skipped")

    def __init__(self, device: torch.device, loss_sum: float = 0.0, loss_n: int = 0,
                 last_loss: float = float("nan")) -> None:
        self.values = torch.tensor([loss_sum, loss_n, last_loss, 0, 0, 0], dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        """Account for one step's (global) loss; ``finite`` says whether it was kept."""
        ok = finite.to(torch.float64)
        loss_sum, loss_n, last, bad_run, bad_max, skipped = self.values.unbind()
        kept = torch.where(finite, loss.detach().to(torch.float64), torch.zeros_like(loss_sum))
        run = (bad_run + 1) * (1 - ok)
        self.values = torch.stack([loss_sum + kept, loss_n + ok, torch.where(finite, kept, last), run,
                                   torch.maximum(bad_max, run), skipped + (1 - ok)])

    def read(self) -> Dict[str, float]:
        """The values on the host (one read); the since-last-check counters restart."""
        vals = dict(zip(self.FIELDS, self.values.tolist()))
        self.values[4] = self.values[3]  # the longest run continues from the current one
        self.values[5] = 0
        return vals

    def new_epoch(self) -> None:
        """The epoch's running loss starts again (the last loss and the bad-step counts go on)."""
        self.values[0] = 0
        self.values[1] = 0


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
    stats: Optional[DeviceStats] = None
    grads: Optional[torch.Tensor] = None  # one flat buffer the parameters' .grad are views of
    grad_views: List[torch.Tensor] = field(default_factory=list)
    writer: StateWriter = field(default_factory=StateWriter)  # model-<epoch> and checkpoint.pt
    hook_reads_grads: bool = field(init=False, default=False)  # from the strategy: its after_backward reads .grad

    def __post_init__(self) -> None:
        self.hook_reads_grads = edits_gradients(self.strategy)
        if self.stats is None:
            self.stats = DeviceStats(self.ctx.device)
        same = bool(self.params) and all(p.dtype == torch.float32 and p.device == self.params[0].device
                                         for p in self.params)
        if same and self.precision.scaler is None and flat_gradients(self.params[0].device):
            sizes = [p.numel() for p in self.params]
            self.grads = torch.zeros(sum(sizes), device=self.params[0].device)
            self.grad_views = [v.view_as(p) for v, p in zip(self.grads.split(sizes), self.params)]


def flat_gradients(device: torch.device) -> bool:
    """Whether the parameters' gradients are views of one flat buffer on ``device``.

    On a GPU it makes zeroing and a skipped step's mask one launch each. On CPU it costs a
    zeroing pass and turns backward's first gradient of each parameter into an add (24 of
    475 ms a step on the tiny model), so there the gradients stay separate tensors and the
    optimizer reads a skipped step's gradients as 0, slice by slice.
    """
    return device.type != "cpu"


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
    writer = StateWriter()
    try:
        info = _train_task(model, tok, ctx, strategy, precision, max_size, identity, loop_record, writer, t0)
    except BaseException:
        try:  # what was submitted before the error is what a resume continues from
            writer.close()
        except Exception as exc:  # noqa: BLE001 - the first error is the one reported
            log.error("[%s] %s", ctx.name, exc)
        raise
    writer.close()
    return info


def _train_task(model, tok, ctx: TaskContext, strategy: Strategy, precision: Precision, max_size: int,
                identity: Dict[str, object], loop_record: Optional[Report], writer: StateWriter,
                t0: float) -> Dict[str, object]:
    scalars = ScalarLog(ctx.run_dir) if dist.is_main() else None  # JSONL (+ TensorBoard when installed)
    start = _task_start(strategy.before_task(ctx, model))
    run = TaskRun(model, tok, ctx, strategy, precision, identity, plan_task(model, ctx, start.extra, max_size),
                  params=[p for p in model.parameters() if p.requires_grad], writer=writer)
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
            if progress.step % ctx.cfg.logging_steps == 0 or progress.step in marks:
                out = _log_step(ctx.name, epoch, rec, progress, time.time() - t_log, scalars)
                bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{rec['lr']:.2e}", refresh=False)
                check_health(run)
            elif progress.step - progress.checked >= HEALTH_STEPS:
                check_health(run)
            if ctx.cfg.checkpoint_steps and progress.step % ctx.cfg.checkpoint_steps == 0 and pos < len(batches):
                progress.epoch, progress.pos = epoch, pos
                checkpoint(run, epoch)
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
    run.writer.wait()  # never read a checkpoint.pt still being written
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
                            pos=ck["pos"], checked=ck["step"])
    if "epoch_loss" in ck:
        (loss_sum, loss_n), last = ck["epoch_loss"], ck["last_loss"]
    else:  # written before the running loss moved to the device: every step's loss was kept
        done = list(ck["losses"])[-ck["pos"]:] if ck["pos"] else []
        loss_sum, loss_n = float(sum(done)), len(done)
        last = ck["losses"][-1] if ck["losses"] else float("nan")
    run.stats = DeviceStats(ctx.device, loss_sum, loss_n, last)
    log.info("[%s] resuming from %s: epoch %d, step %d", ctx.name, os.path.join(ctx.task_dir, CHECKPOINT),
             run.progress.epoch, run.progress.step)


def checkpoint(run: TaskRun, epoch: int) -> int:
    """The latest resumable state of this task (one file, replaced atomically, written in the
    background; rank 0 writes), its bytes counted under ``epoch``; returns the bytes of its
    tensors. The keys are those l2kd has always written (``stats``: the strategy's reports)."""
    if not dist.is_main():
        return 0
    plan, progress = run.plan, run.progress
    vals = dict(zip(DeviceStats.FIELDS, run.stats.values.tolist()))
    return save_resume_state(run.ctx.task_dir, {
        "identity": run.identity, "model": run.model.state_dict(), "optimizer": plan.optimizer.state_dict(),
        "schedule": plan.schedule.state_dict(),
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else None,
        "strategy": run.strategy.state_dict(), "rng": capture_rng(run.ctx.rng, run.ctx.generator),
        "extra": plan.extra, "plan": plan.batches, "epoch": progress.epoch, "pos": progress.pos,
        "step": progress.step, "tokens": progress.tokens, "losses": progress.losses, "stats": dict(run.reports),
        "epoch_loss": [vals["loss_sum"], int(vals["loss_n"])], "last_loss": vals["last_loss"]}, run.writer, epoch)


def step(run: TaskRun, idx: List[int]) -> Optional[Dict[str, object]]:
    """One optimizer step on the global batch ``idx``: ``lr`` and the values to log, as tensors
    (read only when the step is logged). A non-finite loss is skipped on the device; with a
    grad scaler (fp16) it is checked on the host as before, and None says it was skipped."""
    ctx, plan, progress, strategy = run.ctx, run.plan, run.progress, run.strategy
    cfg, scaler, model = ctx.cfg, run.precision.scaler, run.model
    weight = ctx.setup.class_weight
    batch = collate([plan.data[i] for i in dist.shard(idx)], ctx.ids, whole=[plan.data[i] for i in idx])
    n_tokens = batch.n_tokens  # counted on the host before the copy
    batch = batch.to(ctx.device)
    kwargs = {}
    if dist.world_size() > 1:  # each mean over the global batch, not the mean of the ranks' means
        kwargs["shares"] = Shares(zip(LOSS_PARTS, dist.loss_shares(loss_denominators(batch, weight)).tolist()))
    lr = plan.schedule.apply()
    with run.precision.autocast():
        loss, parts = strategy.loss(ctx, model, batch, weight, **kwargs)
    global_loss = dist.mean_over_ranks(loss.detach())  # the whole batch's loss; NaN on any rank shows
    finite = torch.isfinite(global_loss)
    if scaler is not None and not finite:  # fp16: the scaler's step reads the device anyway
        _skip_bad_step(run, global_loss)
        return None
    if run.grads is not None:
        for p, v in zip(run.params, run.grad_views):  # a hook (GEM) may have pointed .grad elsewhere
            p.grad = v
        run.grads.zero_()
    else:
        plan.optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    dist.average_gradients(run.params)
    if scaler:
        scaler.unscale_(plan.optimizer)
    gnorm = (torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
             if cfg.max_grad_norm > 0 else torch.zeros((), device=ctx.device))
    if scaler is None and cfg.max_grad_norm > 0:  # a finite loss with overflowing gradients is skipped too
        finite = finite & torch.isfinite(gnorm)
    zeroed = run.grads is not None
    if zeroed:
        run.grads.masked_fill_(~finite, 0.0)  # a skipped step's gradients: zero, not NaN
    elif scaler is None and run.hook_reads_grads:  # its hook gets finite gradients (GEM raises on NaN)
        zeroed = True
        for p in run.params:
            if p.grad is not None:
                p.grad.masked_fill_(~finite, 0.0)
    strategy.after_backward(ctx, model)
    if scaler:
        scaler.step(plan.optimizer)
        scaler.update()
    else:
        _optimizer_step(plan.optimizer, finite, zeroed)
    strategy.after_step(ctx, model, lr)
    plan.schedule.advance(len(idx))
    progress.step += 1
    progress.tokens += n_tokens
    run.stats.add(global_loss, finite)
    return {"lr": lr, "loss": global_loss, "grad_norm": gnorm, **parts}


def _optimizer_step(optimizer: torch.optim.Optimizer, finite: torch.Tensor, zeroed: bool) -> None:
    """The optimizer's step, skipped on the device when ``finite`` is false: OriginalAdamW keeps
    every value (``keep``; it reads the gradients as 0 unless they were ``zeroed``); torch's
    fused AdamW skips on its ``found_inf``; another optimizer is asked on the host."""
    if isinstance(optimizer, OriginalAdamW):
        optimizer.step(keep=finite.to(torch.float32), grads_finite=zeroed)
    elif isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def check_health(run: TaskRun) -> Dict[str, float]:
    """Read the device's step statistics: warn about skipped non-finite steps, and stop a run
    with MAX_BAD_STEPS or more in a row (diverged training, not an fp16 overflow)."""
    vals = run.stats.read()
    name, step_ = run.ctx.name, run.progress.step
    if vals["skipped"]:
        log.warning("[%s] %d non-finite losses after step %d (by step %d): those steps skipped (a loss or a "
                    "gradient norm not finite; the longest run: %d in a row)",
                    name, vals["skipped"], run.progress.checked, step_, vals["bad_max"])
    run.progress.checked = step_
    if vals["bad_max"] >= MAX_BAD_STEPS:
        raise FloatingPointError(
            f"[{name}] {MAX_BAD_STEPS} consecutive non-finite losses (a run of {int(vals['bad_max'])} by step "
            f"{step_}, skipped on the device): training diverged; lower --learning_rate or check the data. "
            "Earlier tasks' models are intact.")
    return vals


def _skip_bad_step(run: TaskRun, loss: torch.Tensor) -> None:
    """fp16: skip a non-finite step on the host (the scaler's overflow path); a run of them goes
    into the same device statistics and is stopped by :func:`check_health`."""
    run.stats.add(loss, torch.isfinite(loss))
    log.warning("[%s] non-finite loss %s at step %d: step skipped", run.ctx.name, loss.item(), run.progress.step)
    vals = check_health(run)
    if vals["bad_run"] and run.precision.scaler:
        run.precision.scaler.update(run.precision.scaler.get_scale() / 2)


def log_marks(total_steps: int, n: int = 4) -> set:
    """Steps logged whatever ``--logging_steps`` is: ``n`` evenly spaced ones ending with the
    last, so that a task shorter than ``--logging_steps`` still logs its loss."""
    return {max(1, round(total_steps * k / n)) for k in range(1, n + 1)} if total_steps else set()


def _log_step(name: str, epoch: int, rec: Dict[str, object], progress: Progress, seconds: float,
              scalars: Optional[ScalarLog]) -> Dict[str, object]:
    """Read the step's values (one copy from the device) and log them."""
    keys = [k for k in rec if k != "lr"]
    got = dict(zip(keys, torch.stack([torch.as_tensor(rec[k]).detach().to(torch.float64) for k in keys]).tolist()))
    progress.losses.append(got["loss"])
    out = {"task": name, "step": progress.step, "epoch": epoch, "lr": rec["lr"], "loss": got["loss"],
           "grad_norm": got["grad_norm"], "tokens_per_s": progress.tokens / max(seconds, 1e-9),
           **{k: v for k, v in got.items() if k not in ("loss", "grad_norm")}}
    log.info("[%s] %s", name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in out.items() if k != "task"))
    if scalars:
        scalars.write(out)
    return out


def end_epoch(run: TaskRun, epoch: int) -> None:
    """``model-<epoch>``, the resume state at the start of the next epoch (both handed to the
    background writer), the epoch's mean loss and the bytes of tensors the two files hold."""
    ctx, progress = run.ctx, run.progress
    size = save_epoch_model(ctx.task_dir, epoch, run.model.state_dict(), run.writer) if dist.is_main() else 0
    vals = check_health(run)
    progress.epoch, progress.pos = epoch + 1, 0
    run.stats.new_epoch()
    size += checkpoint(run, epoch)
    log.info("[%s] epoch %d done: mean loss %s, writing model-%d and %s (%.1f MB of tensors)", ctx.name, epoch,
             f"{vals['loss_sum'] / vals['loss_n']:.4f}" if vals["loss_n"] else "n/a (every step skipped)",
             epoch, CHECKPOINT, size / 1e6)


def finish_task(run: TaskRun, elapsed: float, loop_record: Report) -> Dict[str, object]:
    """Wait for the background writes, write the finished task's outputs (``model-finish``
    last) and drop its resume state."""
    ctx, plan, progress = run.ctx, run.plan, run.progress
    run.writer.wait()  # before checkpoint.pt is dropped: a late write would bring it back
    written = _bytes_written(run)
    info = {"tasks": list(ctx.tasks), "epochs": plan.epochs, "steps": progress.step, "examples": len(plan.data),
            "replayed": len(plan.extra), "final_loss": _final_loss(run),
            "seconds": elapsed, "examples_per_s": len(plan.data) * plan.epochs / elapsed, **run.reports,
            "reported_by": {k: run.strategy.name for k in run.reports}, **loop_record, "identity": run.identity,
            "state_bytes_written": written}
    if dist.is_main():
        save_task_outputs(run.model, run.tok, ctx.task_dir, info, run.strategy.state_dict(),
                          capture_rng(ctx.rng, ctx.generator))
        drop_resume_state(ctx.task_dir)
    dist.barrier()
    log.info("[%s] finished in %.0f s (%.1f examples/s); epoch models and checkpoints: %s bytes (per epoch %s)",
             ctx.name, elapsed, info["examples_per_s"], written["total"], written["per_epoch"])
    return info


def _bytes_written(run: TaskRun) -> Dict[str, object]:
    """The bytes of ``model-<epoch>`` and ``checkpoint.pt`` files this process wrote for the
    task: in all and per epoch (a mid-epoch checkpoint counts towards its epoch; epochs a
    resumed run did not train count 0)."""
    per_epoch = [int(run.writer.written.get(e, 0)) for e in range(1, run.plan.epochs + 1)]
    return {"total": int(sum(run.writer.written.values())), "per_epoch": per_epoch}


def _final_loss(run: TaskRun) -> Optional[float]:
    """The last finite step's loss (None when there was none)."""
    last = float(run.stats.values[2])
    return None if np.isnan(last) else last
