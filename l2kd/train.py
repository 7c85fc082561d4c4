"""Lifelong training: ``train_sequence`` (the loop, read top to bottom) and the train CLI.

``python -m l2kd.train`` takes an original LAMOL/L2KD command line unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from l2kd import distributed as dist
from l2kd.batching import budget_for_device, train_batches
from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import Encoded, collate, encode_example
from l2kd.data.squad import load_squad_file
from l2kd.data.tasks import task_file
from l2kd.distillation import ensure_distil_data, ensure_teacher
from l2kd.io_utils import atomic_torch_save, atomic_write_json, remove_stale_temps
from l2kd.losses import token_weights
from l2kd.model import context_length, load_base_model, resize_for_tokenizer
from l2kd.rng import capture_rng, restore_rng
from l2kd.scalars import ScalarLog
from l2kd.schedule import LRSchedule
from l2kd.settings import parse_args, run_dir, task_dir
from l2kd.strategies import Strategy, TaskContext, load_custom_strategy, make_strategy
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

log = logging.getLogger("l2kd")

CHECKPOINT = "checkpoint.pt"  # latest resumable state of an unfinished task
MAX_BAD_STEPS = 5  # consecutive non-finite losses before a run stops

# The original's per-strategy share of GPU memory for dynamic batches (K:settings.py).
MEMORY_FACTOR = {"lll": 0.35, "multilm": 0.35, "finetune": 0.58, "multitask": 0.58, "gem": 0.50,
                 "ewc": 0.30, "mas": 0.18}


# ----------------------------------------------------------------------------- setup helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(path: Optional[str], quiet: bool = False) -> None:
    """Log to stderr and (append) to ``path``, once per file."""
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h.setLevel(logging.WARNING if quiet else logging.INFO)
        log.addHandler(h)
    if path:
        path = os.path.abspath(path)
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                if h.baseFilename == path:
                    return
                log.removeHandler(h)
                h.close()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        log.addHandler(fh)


def precision_context(device: torch.device, cfg: TrainConfig):
    """(autocast context factory, GradScaler or None) for the precision policy of DESIGN.md."""
    if device.type == "cuda" and not cfg.fp32:
        if torch.cuda.is_bf16_supported():
            return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    if device.type == "cpu" and cfg.bf16_cpu:
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None
    return nullcontext, None


def load_task_examples(cfg: TrainConfig, task: str, split: str, tok, ids, max_len: int,
                       limit: int = 0, path: Optional[str] = None) -> List[Encoded]:
    """Read and encode one task's split (or the file ``path``, e.g. Seq-KD data)."""
    path = path or task_file(cfg.data_dir, task, split)
    raw = load_squad_file(path, task)
    if limit:
        raw = raw[:limit]
    enc = [encode_example(tok, ids, ex.context, ex.question, ex.answers, task, max_len, qa_id=ex.qa_id)
           for ex in raw]
    n_trunc = sum(e.truncated for e in enc)
    if n_trunc:
        log.warning("%s: %d of %d examples longer than the model context (%d) were truncated",
                    path, n_trunc, len(enc), max_len)
    return enc


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as the original: no decay on names containing ``bias`` (and, by the original's
    name mismatch, GPT-2's ``ln_*`` weights *are* decayed unless ``no_decay_layernorm``)."""
    no_decay = ["bias"] + (["ln_", "LayerNorm"] if cfg.no_decay_layernorm else ["LayerNorm"])
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    # The fused (single-kernel) AdamW is the same update with far less memory traffic.
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon, fused=fused)


def n_epochs_for(cfg: TrainConfig, size: int, max_size: int) -> int:
    """``--dynamic_epochs``: ``min(max_n_epochs, max_size * n_train_epochs // size)``."""
    if cfg.dynamic_epochs and size:
        return max(1, min(cfg.max_n_epochs, max_size * cfg.n_train_epochs // size))
    return cfg.n_train_epochs


def is_finished(tdir: str) -> bool:
    return os.path.isfile(os.path.join(tdir, "model-finish")) and os.path.isfile(os.path.join(tdir, "l2kd_task.json"))


# ----------------------------------------------------------------------------- the loop
def train_sequence(cfg: TrainConfig, strategy: Optional[Strategy] = None) -> Dict[str, object]:
    """Train ``cfg.tasks`` one after another (all at once for multitask/multilm).

    Writes the original's layout (run dir, per-task ``model-<epoch>``, ``model-finish``,
    ``config.json``, tokenizer files, ``lm.csv``) plus ``l2kd_task.json`` summaries, and
    returns a summary dict. A task whose ``model-finish`` exists is loaded, not retrained.
    """
    strategy = strategy or make_strategy(cfg)
    dist.init_from_env()
    device = dist.local_device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    rdir = run_dir(cfg.model_dir_root, cfg.model_name, cfg.seq_train_type, list(cfg.tasks),
                   cfg.gen_lm_sample_percentage, cfg.seed)
    os.makedirs(rdir, exist_ok=True)
    if dist.is_main():
        remove_stale_temps(rdir)  # half-written files of a killed earlier run
    setup_logging(os.path.join(rdir, "log_train.txt") if dist.is_main() else None, cfg.quiet or not dist.is_main())
    log.info("run dir %s | device %s | strategy %s", rdir, device, strategy.name)

    tok = load_base_tokenizer(cfg.model_name)
    model = load_base_model(cfg.model_name, cfg.seed).to(device)
    max_len = context_length(model)
    autocast, scaler = precision_context(device, cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    multitask = cfg.seq_train_type in ("multitask", "multilm")
    stages: List[Tuple[str, ...]] = [tuple(cfg.tasks)] if multitask else [(t,) for t in cfg.tasks]
    summary: Dict[str, object] = {"run_dir": rdir, "config": dataclasses.asdict(cfg), "tasks": {}}
    prev_examples: Dict[str, List[Encoded]] = {}
    prev_dir: Optional[str] = None
    seen: List[str] = []

    for index, stage in enumerate(stages):
        seen += list(stage)
        tdir = task_dir(rdir, cfg.seq_train_type, stage[0])
        ids = add_special_tokens(tok, seen, cfg.add_task_tokens, cfg.use_sep)
        resize_for_tokenizer(model, len(tok))
        name = "+".join(stage)
        finished = is_finished(tdir)
        train_ex = []
        for t in stage:
            # Seq-KD trains on the teacher's decoded answers (built once, then reused)
            src = None
            if cfg.seq_distil and not finished:
                ensure_teacher(cfg, t)  # every rank: training a missing teacher is collective
                src = dist.broadcast(ensure_distil_data(cfg, t, device) if dist.is_main() else None)
            train_ex += load_task_examples(cfg, t, "train", tok, ids, max_len, cfg.max_train_examples, src)
        if finished or (cfg.skip_tasks and set(stage) <= set(cfg.skip_tasks)):
            load_task_model(model, tdir)
            state_path = os.path.join(tdir, "strategy_state.pt")
            if os.path.isfile(state_path):  # importances / memories saved with the task's model
                strategy.load_state_dict(torch.load(state_path, map_location=device, weights_only=False))
            rng_path = os.path.join(tdir, "rng_state.pt")
            if os.path.isfile(rng_path):  # continue the random streams where the finished task left them
                restore_rng(torch.load(rng_path, weights_only=False), rng, generator)
            log.info("[%s] model-finish found in %s: loaded, not retrained", name, tdir)
            with open(os.path.join(tdir, "l2kd_task.json")) as f:
                summary["tasks"][name] = json.load(f)
        else:
            ctx = TaskContext(index=index, tasks=stage, prev_tasks=tuple(seen[: -len(stage)]), cfg=cfg, run_dir=rdir,
                              tokenizer=tok, ids=ids, task_dir=tdir, prev_task_dir=prev_dir,
                              train_examples=train_ex, prev_train_examples=dict(prev_examples), max_len=max_len,
                              device=device, generator=generator, rng=rng, logger=log)
            summary["tasks"][name] = _train_task(model, tok, ctx, strategy, autocast, scaler)
        for t in stage:
            prev_examples[t] = [e for e in train_ex if e.task == t]
        prev_dir = tdir
    if dist.is_main():
        atomic_write_json(os.path.join(rdir, "l2kd_run.json"), summary)
    dist.barrier()
    return summary


def _train_task(model, tok, ctx: TaskContext, strategy: Strategy, autocast, scaler) -> Dict[str, object]:
    cfg, device, name = ctx.cfg, ctx.device, "+".join(ctx.tasks)
    os.makedirs(ctx.task_dir, exist_ok=True)
    t0 = time.time()
    model.train()
    scalars = ScalarLog(ctx.run_dir) if dist.is_main() else None  # JSONL (+ TensorBoard when installed)
    extra = strategy.before_task(ctx, model)
    if "replay" in ctx.stats and scalars:  # pseudo-samples generated / parsed / dropped
        scalars.write({"task": name, "step": 0, "event": "replay", **ctx.stats["replay"]})
    data = ctx.train_examples + extra
    if not data:
        raise SystemExit(f"[{name}] no training examples")
    max_size = len(ctx.train_examples)
    epochs = n_epochs_for(cfg, len(ctx.train_examples), max_size)
    budget = budget_for_device(device, MEMORY_FACTOR.get(cfg.seq_train_type, 0.35), cfg.cpu_batch_tokens)
    max_count = max(len(data) // cfg.min_n_steps, cfg.min_batch_size)
    weight = token_weights(len(tok), ctx.ids, cfg.tokens_weight, device)
    optimizer = make_optimizer(model, cfg)
    plan = [train_batches(data, ctx.rng, cfg.train_batch_size, budget, max_count) for _ in range(epochs)]
    schedule = LRSchedule(optimizer, cfg.learning_rate, len(data), epochs, sum(len(p) for p in plan),
                          cfg.n_warmup_ratio, cfg.decay_style, cfg.textbook_schedule)
    step, tokens, losses, bad_steps, start_epoch, start_pos = 0, 0, [], 0, 1, 0
    ckpt_path = os.path.join(ctx.task_dir, CHECKPOINT)
    if os.path.isfile(ckpt_path):  # an interrupted run of this task: continue where it stopped
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        extra, plan = ck["extra"], ck["plan"]
        data = ctx.train_examples + extra
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["schedule"])
        if scaler and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        strategy.load_state_dict(ck["strategy"])
        ctx.stats.update(ck["stats"])
        restore_rng(ck["rng"], ctx.rng, ctx.generator)
        step, tokens, losses, start_epoch, start_pos = ck["step"], ck["tokens"], ck["losses"], ck["epoch"], ck["pos"]
        log.info("[%s] resuming from %s: epoch %d, step %d", name, ckpt_path, start_epoch, step)
    log.info("[%s] training on %d examples (%d replayed) for %d epochs, %d steps",
             name, len(data), len(extra), epochs, schedule.end if cfg.textbook_schedule else sum(len(p) for p in plan))
    params = [p for p in model.parameters() if p.requires_grad]

    def checkpoint(epoch: int, pos: int) -> None:
        """The latest resumable state of this task (one file, replaced atomically)."""
        if dist.is_main():
            atomic_torch_save(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "strategy": strategy.state_dict(),
                "rng": capture_rng(ctx.rng, ctx.generator), "extra": extra, "plan": plan, "epoch": epoch,
                "pos": pos, "step": step, "tokens": tokens, "losses": losses, "stats": dict(ctx.stats)})

    t_log = time.time()
    for epoch in range(start_epoch, epochs + 1):
        skip = start_pos if epoch == start_epoch else 0
        bar = tqdm(plan[epoch - 1][skip:], desc=f"{name} epoch {epoch}/{epochs}", disable=cfg.quiet, leave=False,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        for pos, idx in enumerate(bar, start=skip + 1):
            batch = collate([data[i] for i in dist.shard(idx)], ctx.ids).to(device)
            lr = schedule.apply()
            with autocast():
                loss, scal = strategy.loss(model, batch, weight, ctx)
            if dist.any_rank(not torch.isfinite(loss)):
                # Skip the step (with a grad scaler this is its normal overflow path); stop after
                # MAX_BAD_STEPS in a row, which means diverged training, not an fp16 overflow.
                bad_steps += 1
                log.warning("[%s] non-finite loss %s at step %d: step skipped (%d in a row)", name, loss.item(),
                            step, bad_steps)
                if bad_steps >= MAX_BAD_STEPS:
                    raise FloatingPointError(
                        f"[{name}] {bad_steps} consecutive non-finite losses (last at step {step}, epoch {epoch}): "
                        "training diverged; lower --learning_rate or check the data. Earlier tasks' models are intact.")
                if scaler:
                    scaler.update(scaler.get_scale() / 2)
                continue
            bad_steps = 0
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            dist.average_gradients(params)
            if scaler:
                scaler.unscale_(optimizer)
            gnorm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                     if cfg.max_grad_norm > 0 else torch.tensor(0.0))
            strategy.after_backward(model, ctx)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            strategy.after_step(model, lr, ctx)
            schedule.advance(len(idx))
            step += 1
            tokens += batch.n_tokens
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
            if step % cfg.logging_steps == 0:
                dt = time.time() - t_log
                rec = {"task": name, "step": step, "epoch": epoch, "lr": lr, "loss": losses[-1],
                       "grad_norm": float(gnorm), "tokens_per_s": tokens / max(dt, 1e-9), **scal}
                log.info("[%s] %s", name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in rec.items() if k != "task"))
                if scalars:
                    scalars.write(rec)
            if cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0 and pos < len(plan[epoch - 1]):
                checkpoint(epoch, pos)
        bar.close()
        if dist.is_main():
            atomic_torch_save(os.path.join(ctx.task_dir, f"model-{epoch}"), model.state_dict())
        checkpoint(epoch + 1, 0)
        recent = losses[-len(plan[epoch - 1]):]
        log.info("[%s] epoch %d done: mean loss %s", name, epoch,
                 f"{float(np.mean(recent)):.4f}" if recent else "n/a (every step skipped)")
    if scalars:
        scalars.close()
    strategy.after_task(ctx, model)
    elapsed = time.time() - t0
    info = {"tasks": list(ctx.tasks), "epochs": epochs, "steps": step, "examples": len(data),
            "replayed": len(extra), "final_loss": losses[-1] if losses else None, "seconds": elapsed,
            "examples_per_s": len(data) * epochs / elapsed, **ctx.stats}
    if dist.is_main():
        atomic_torch_save(os.path.join(ctx.task_dir, "rng_state.pt"), capture_rng(ctx.rng, ctx.generator))
        save_task_outputs(model, tok, ctx.task_dir, info, strategy)
        if os.path.isfile(ckpt_path):  # model-finish now holds the task: drop the resume state
            os.remove(ckpt_path)
    dist.barrier()
    log.info("[%s] finished in %.0f s (%.1f examples/s)", name, elapsed, info["examples_per_s"])
    return info


def save_task_outputs(model, tok, tdir: str, info: Dict[str, object], strategy: Strategy) -> None:
    """config.json, tokenizer files, strategy state, summary, and ``model-finish`` last
    (atomically): a folder with ``model-finish`` is a finished task."""
    # config.json + model.safetensors + tokenizer files: the folder loads with plain
    # transformers (GPT2LMHeadModel.from_pretrained(tdir)); model-finish stays the original's file.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny shard: its progress bar is noise in the logs
    try:
        model.save_pretrained(tdir, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(tdir)
    state = strategy.state_dict()
    if state:
        atomic_torch_save(os.path.join(tdir, "strategy_state.pt"), state)
    atomic_write_json(os.path.join(tdir, "l2kd_task.json"), info)
    atomic_torch_save(os.path.join(tdir, "model-finish"), model.state_dict())


def load_task_model(model: torch.nn.Module, tdir: str, name: str = "model-finish") -> None:
    """Load a saved state dict (the original's ``model-*`` files) into ``model``."""
    path = os.path.join(tdir, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"{path}: missing (was this task trained?)") from None
    except Exception as exc:
        raise SystemExit(f"{path}: cannot be read as a model state dict ({exc})") from None
    # Checkpoints of the original code (pytorch-transformers 1.2.0 GPT2LMHeadModel) carry the
    # attention-mask buffers ``attn.bias`` / ``attn.masked_bias`` that current transformers
    # rebuilds; anything else missing or unexpected is a wrong file, not something to skip.
    if isinstance(state, dict) and "state_dict" in state and "model" not in state:
        state = state["state_dict"]
    result = model.load_state_dict(state, strict=False)
    tolerated = (".attn.bias", ".attn.masked_bias", "lm_head.weight")  # lm_head is tied to wte
    missing = [k for k in result.missing_keys if not k.endswith(tolerated)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(tolerated)]
    if missing or unexpected:
        raise SystemExit(f"{path}: not a state dict of this model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


# ----------------------------------------------------------------------------- CLI
def config_from_args(args) -> TrainConfig:
    """Turn a parsed command line into a :class:`TrainConfig`."""
    use_k = not args.no_kernels
    return TrainConfig(
        tasks=tuple(args.tasks), data_dir=args.data_dir, model_dir_root=args.model_dir_root,
        model_name=args.model_name, seq_train_type=args.seq_train_type, seed=args.seed,
        learning_rate=args.learning_rate, adam_epsilon=args.adam_epsilon, weight_decay=args.weight_decay,
        max_grad_norm=float(args.max_grad_norm), n_warmup_ratio=args.n_warmup_ratio, decay_style=args.decay_style,
        textbook_schedule=args.textbook_schedule, no_decay_layernorm=args.no_decay_layernorm,
        n_train_epochs=args.n_train_epochs, dynamic_epochs=args.dynamic_epochs, max_n_epochs=args.max_n_epochs,
        train_batch_size=args.train_batch_size, min_batch_size=args.min_batch_size, min_n_steps=args.min_n_steps,
        cpu_batch_tokens=args.cpu_batch_tokens, lm_lambda=args.lm_lambda, tokens_weight=args.tokens_weight,
        add_task_tokens=args.add_task_tokens, use_sep=args.use_sep, max_train_examples=args.max_train_examples,
        max_test_examples=args.max_test_examples, gen_lm_sample_percentage=args.gen_lm_sample_percentage,
        real_sample=args.real_sample,
        lm_sampling=SamplingConfig(args.top_k_lm, args.top_p_lm, args.temperature_lm, use_k),
        qa_sampling=SamplingConfig(args.top_k_qa, args.top_p_qa, args.temperature_qa, use_k),
        max_gen_len=args.max_gen_len, test_batch_size=args.test_batch_size, test_all=args.test_all,
        reg_lambda=args.reg_lambda, qp_margin=args.qp_margin, reg_anchor=args.reg_anchor, distil=args.distil, seq_distil=args.seq_distil,
        temperature_kd=args.temperature_kd, ref1=args.ref1, teacher_dir=args.teacher_dir,
        teacher_n_train_epochs=args.teacher_n_train_epochs, teacher_learning_rate=args.teacher_learning_rate, device=args.device, fp32=args.fp32, bf16_cpu=args.bf16_cpu,
        use_kernels=use_k, logging_steps=args.logging_steps, checkpoint_steps=args.checkpoint_steps, quiet=args.quiet,
        skip_tasks=tuple(args.skip_tasks or ()), test_training_set=args.test_training_set,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv, prog="python -m l2kd.train")
    cfg = config_from_args(args)
    try:
        strategy = None
        if args.custom_strategy:
            strategy = load_custom_strategy(args.custom_strategy)
            cfg = dataclasses.replace(cfg, seq_train_type=strategy.name)
        train_sequence(cfg, strategy)
    except (FileNotFoundError, ValueError) as exc:  # data errors name the file and entry
        log.error("%s", exc)
        print(f"l2kd.train: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
