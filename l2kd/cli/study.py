"""``python -m l2kd.study``: the distillation study on the bundled RNNLG sequence.

Trains and tests every method of the study (finetune, multitask, LAMOL, LAMOL + Word-KD /
Seq-KD / Seq-KD soft, EWC and MAS at the original's ``--reg_lambda`` and at one where the
regulariser acts, GEM) for each seed and each task order (the bundled order and its
reverse), starting from one base model, then writes the report of ``python -m l2kd.report``
over all runs (``report.json`` / ``report.md``, plots in every run folder) plus
``study.json`` with the wall time of every run and, for distilled runs, the teacher
diagnostics recorded in each task's ``l2kd_task.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data import bundled_data_dir
from l2kd.diagnostics import DIAGNOSTICS
from l2kd.evaluate import evaluate_run
from l2kd.io_utils import atomic_write_json
from l2kd.layout import TASK_RECORD, run_dir_of, task_dir
from l2kd.loop import train_sequence
from l2kd.runtime import apply_thread_policy

# The original's --reg_lambda 1.0 leaves EWC / MAS with no effect here (the pull of the most
# important weight, 2 * lr * reg_lambda * max(Omega), is ~1e-7 of its distance to the anchor per
# step). The study also runs each at a strength where that pull is ~0.1-0.3 at lr 1e-3: max Omega
# after one task is ~1e-4 for EWC but ~1e-7 for MAS (its MSE is a mean over the vocabulary of
# squared probabilities), so MAS needs a thousand times EWC's lambda.
STRONG_REG_LAMBDA = {"ewc": 1e6, "mas": 1e9}
PRETRAINED = "pretrained"  # --model_name value naming l2kd's pretrained tiny base

# name -> (seq_train_type, config fields)
METHODS: Dict[str, Tuple[str, Dict[str, object]]] = {
    "finetune": ("finetune", {}),
    "multitask": ("multitask", {}),
    "lll": ("lll", {}),
    "lll+word_kd": ("lll", {"distil": True}),
    # the same teachers distilled at other temperatures (the study's --temperature_kd is the default's)
    "lll+word_kd@T1": ("lll", {"distil": True, "temperature_kd": 1.0}),
    "lll+word_kd@T4": ("lll", {"distil": True, "temperature_kd": 4.0}),
    # teachers trained for --long_teacher_epochs instead of --epochs (their own teacher folder)
    "lll+word_kd@long_teacher": ("lll", {"distil": True, "long_teacher": True}),
    "lll+seq_kd": ("lll", {"seq_distil": True}),
    "lll+seq_kd_soft": ("lll", {"distil": True, "seq_distil": True}),
    "ewc": ("ewc", {"reg_lambda": 1.0}),
    "ewc_strong": ("ewc", {}),  # --reg_lambda from --ewc_strong_reg_lambda (STRONG_REG_LAMBDA)
    "mas": ("mas", {"reg_lambda": 1.0}),
    "mas_strong": ("mas", {}),  # --reg_lambda from --mas_strong_reg_lambda
    "gem": ("gem", {}),
}

ORDERS = ("forward", "reverse")


def ordered_tasks(tasks: Sequence[str], order: str) -> Tuple[str, ...]:
    """The task sequence for ``order`` ("forward": as given, "reverse": last task first)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: expected one of {', '.join(ORDERS)}")
    return tuple(tasks) if order == "forward" else tuple(reversed(tasks))


def method_config(method: str, order: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    """The run configuration of one study cell; runs of one order share a teacher folder."""
    seq_type, extra = METHODS[method]
    extra = dict(extra)
    if method.endswith("_strong"):
        extra["reg_lambda"] = getattr(args, f"{seq_type}_strong_reg_lambda")
    pct = args.gem_pct if seq_type == "gem" else args.pct
    temperature = extra.pop("temperature_kd", args.temperature_kd)
    teachers = os.path.join(args.out, order, "teachers")
    if extra.pop("long_teacher", False):
        extra["teacher_n_train_epochs"] = args.long_teacher_epochs
        teachers += f"-{args.long_teacher_epochs}ep"
    return TrainConfig(
        tasks=ordered_tasks(args.tasks, order), data_dir=args.data_dir, model_name=args.model_name,
        model_dir_root=os.path.join(args.out, order, method), teacher_root=teachers,
        seq_train_type=seq_type, seed=seed, temperature_kd=temperature, learning_rate=args.lr,
        train_batch_size=args.batch, n_train_epochs=args.epochs, max_train_examples=args.train,
        max_test_examples=args.test, gen_lm_sample_percentage=pct, max_gen_len=96,
        qa_sampling=SamplingConfig(top_k=1), lm_sampling=SamplingConfig(top_k=20),
        logging_steps=10**9, quiet=args.quiet, device="cpu", **extra,
    )


def teacher_diagnostics(cfg: TrainConfig) -> Dict[str, object]:
    """The teacher diagnostics recorded for every task of a finished distilled run (empty when none)."""
    out: Dict[str, object] = {}
    rdir = run_dir_of(cfg)
    for task in cfg.tasks:
        path = os.path.join(task_dir(rdir, cfg.seq_train_type, task), TASK_RECORD)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get(DIAGNOSTICS):
            out[task] = rec[DIAGNOSTICS]
    return out


def run_cell(cfg: TrainConfig, quiet: bool) -> Dict[str, object]:
    """Train and test one configuration; return its scores, wall times and diagnostics."""
    t0 = time.time()
    summary = train_sequence(cfg)
    t_train = time.time() - t0
    res = evaluate_run(cfg, quiet=quiet)
    return {
        "run_dir": summary["run_dir"], "matrix": res["matrix"], "average": res.get("average"),
        "backward_transfer": res.get("backward_transfer"), "forgetting": res.get("forgetting"),
        "train_seconds": t_train, "test_seconds": time.time() - t0 - t_train,
        "teacher": teacher_diagnostics(cfg) if (cfg.distil or cfg.seq_distil) else {},
    }


def wall_time_table(cells: List[Dict[str, object]]) -> str:
    """Mean wall time (train + test) per method and order, in seconds."""
    acc: Dict[Tuple[str, str], List[float]] = {}
    for c in cells:
        acc.setdefault((c["method"], c["order"]), []).append(c["train_seconds"] + c["test_seconds"])
    lines = ["method".ljust(18) + "order".ljust(10) + "runs".rjust(6) + "mean s".rjust(10)]
    for (m, o), v in acc.items():
        lines.append(m.ljust(18) + o.ljust(10) + f"{len(v):6d}" + f"{sum(v) / len(v):10.0f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m l2kd.study", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="study_runs", help="output root (default: ./study_runs)")
    p.add_argument("--model_name", default=PRETRAINED,
                   help=f"base model: {PRETRAINED!r} (default: the pretrained tiny base l2kd ships, verified, or "
                        "built into the user's cache by python -m l2kd.pretrain's recipe), a save_pretrained "
                        "folder, or tiny-gpt2 (random init)")
    p.add_argument("--data_dir", default=bundled_data_dir())
    p.add_argument("--tasks", nargs="+", default=["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"])
    p.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--train", type=int, default=300, help="training examples per task")
    p.add_argument("--test", type=int, default=60, help="test examples per task")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pct", type=float, default=0.2, help="--gen_lm_sample_percentage of the LAMOL runs")
    p.add_argument("--gem_pct", type=float, default=0.05, help="GEM's memory per past task (fraction of its data)")
    p.add_argument("--temperature_kd", type=float, default=2.0)
    p.add_argument("--long_teacher_epochs", type=int, default=6,
                   help="teacher epochs of the lll+word_kd@long_teacher runs (the others' teachers train --epochs)")
    for kind, lam in STRONG_REG_LAMBDA.items():
        p.add_argument(f"--{kind}_strong_reg_lambda", type=float, default=lam,
                       help=f"--reg_lambda of the {kind}_strong runs (default {lam:g})")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    apply_thread_policy()  # OMP_NUM_THREADS, else the CPUs this process may use
    if args.model_name == PRETRAINED:
        from l2kd.pretraining import ensure_base

        args.model_name = ensure_base(quiet=args.quiet)
    os.makedirs(args.out, exist_ok=True)
    # Seq-KD writes its decoded training files beside the data: work on a copy, never the package's.
    copy = os.path.join(args.out, "data")
    if not os.path.isdir(copy):
        shutil.copytree(args.data_dir, copy)
    args.data_dir = copy
    cells: List[Dict[str, object]] = []
    # seed-major: a study stopped early still has every method for the seeds it finished
    plan = [(o, m, s) for o in args.orders for s in args.seeds for m in args.methods]
    print(f"l2kd study: {len(plan)} runs ({len(args.methods)} methods x {len(args.seeds)} seeds x "
          f"{len(args.orders)} orders) from {args.model_name}, {args.train} examples x {args.epochs} epochs per task",
          flush=True)
    t_start = time.time()
    for i, (order, method, seed) in enumerate(plan, 1):
        cfg = method_config(method, order, seed, args)
        print(f"\n[{i}/{len(plan)}] {method}, {order} order ({' -> '.join(cfg.tasks)}), seed {seed}", flush=True)
        cell = {"method": method, "order": order, "seed": seed, **run_cell(cfg, args.quiet)}
        cells.append(cell)
        print(f"  average {cell['average']:.1f}, trained {cell['train_seconds']:.0f} s, "
              f"tested {cell['test_seconds']:.0f} s", flush=True)
        atomic_write_json(os.path.join(args.out, "study.json"),
                          {"model_name": args.model_name, "cells": cells, "args": vars(args)})
    print("\nwall time per method\n" + wall_time_table(cells))
    print(f"({time.time() - t_start:.0f} s in all)\n")
    from l2kd.cli.report import main as report_main

    return report_main([c["run_dir"] for c in cells] + ["--out", args.out] + ([] if args.plots else ["--no-plots"]))


if __name__ == "__main__":
    sys.exit(main())
