"""End-to-end benchmark of the demo-scale workload, phase by phase.

Runs the demo's configuration (``l2kd.cli.demo.demo_config``: offline tiny GPT-2, bundled RNNLG
tasks, batch 8, lr 1e-3) for ``finetune``, ``lll``, ``lll+word_kd`` and ``gem``, each with the
compiled kernels on and off (``TrainConfig.use_kernels`` and the samplers' ``use_kernels``: the
switch the CLI's reference-ops flag sets), training then testing, every run in a fresh output
folder (so Word-KD trains its teachers every time). The library has no timing code:
:class:`benchmarks.phases.PhaseRecorder` wraps the phase functions for the run:

    train_step      l2kd.loop.task.step                    (examples = the step's batch)
    save            l2kd.loop.task.end_epoch / finish_task (model-<epoch>, checkpoint, outputs)
    pseudo_gen      l2kd.strategies.lamol.generate_pseudo  (items = sequences generated)
    teacher_train   l2kd.loop.sequence._train_teacher      (its steps: teacher_train/train_step)
    teacher_load    l2kd.strategies.word_kd.load_teacher
    seqkd_decode    l2kd.distillation.predict              (only with --seqkd)
    test_decode     l2kd.evaluate.predict                  (items = test examples)
    scoring         l2kd.evaluate.compute_metrics
    other           the rest of the run's wall time (data loading, model set-up, ...)

Reported per phase: self seconds, examples/s, peak RSS (VmHWM, reset per phase). Two extra rows:

* ``wordkd_step_ratio``: one Word-KD student step (teacher forward under no_grad + fused KD
  loss + student forward/backward + AdamW) over one plain lll step on the same demo batch,
  medians of interleaved repeats in this process.
* ``contention``: the lll run (kernels on) again while two CPU-bound competitor processes
  (Python busy loops) run, as slowdown vs the idle lll run of this process.

    python benchmarks/e2e.py [--quick] [--strategies lll gem] [--no-contention] [--seqkd]

Writes ``benchmarks/results/e2e-cpu-<date>.json`` (machine, threads, versions, commit, load
averages before and after every run).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from l2kd.runtime import apply_thread_policy  # noqa: E402  (before torch starts its pool)

THREADS = apply_thread_policy()

import torch  # noqa: E402

from benchmarks.common import print_table, write_results  # noqa: E402
from benchmarks.phases import PhaseRecorder  # noqa: E402

STRATEGIES = ["finetune", "lll", "lll+word_kd", "gem"]
COLUMNS = ["run", "kernels", "phase", "calls", "seconds", "items", "items_per_s", "peak_rss_mb"]


def _config(strategy: str, out: str, args: argparse.Namespace, use_kernels: bool):
    from l2kd.cli.demo import build_parser, demo_config

    demo_args = build_parser().parse_args(
        ["--out", out, "--tasks", *args.tasks, "--train", str(args.train), "--test", str(args.test),
         "--epochs", str(args.epochs), "--quiet"])
    name = "lll+seqkd_soft" if strategy == "lll+seqkd" else strategy
    cfg = demo_config(name, demo_args)
    return dataclasses.replace(
        cfg, use_kernels=use_kernels, checkpoint_steps=0,
        qa_sampling=dataclasses.replace(cfg.qa_sampling, use_kernels=use_kernels),
        lm_sampling=dataclasses.replace(cfg.lm_sampling, use_kernels=use_kernels))


def _wraps(rec: PhaseRecorder):
    """The (owner, attribute, phase, item counter) of every timed library function."""
    import l2kd.distillation as distillation
    import l2kd.evaluate as evaluate
    import l2kd.loop.sequence as sequence
    import l2kd.loop.task as task
    import l2kd.strategies.lamol as lamol
    import l2kd.strategies.word_kd as word_kd

    return [
        (task, "step", "train_step", lambda a, k, r: len(a[6])),
        (task, "end_epoch", "save", None),
        (task, "finish_task", "save", None),
        (lamol, "generate_pseudo", "pseudo_gen", lambda a, k, r: r[1].generated),
        (sequence, "_train_teacher", "teacher_train", None),
        (word_kd, "load_teacher", "teacher_load", None),
        (distillation, "predict", "seqkd_decode", lambda a, k, r: len(r)),
        (evaluate, "predict", "test_decode", lambda a, k, r: len(r)),
        (evaluate, "compute_metrics", "scoring", lambda a, k, r: len(a[1])),
    ]


def run_one(strategy: str, use_kernels: bool, args: argparse.Namespace) -> Dict[str, object]:
    """Train and test one strategy in a fresh folder; the phase report and the wall time."""
    from contextlib import ExitStack

    from l2kd.evaluate import evaluate_run
    from l2kd.loop import train_sequence

    out = tempfile.mkdtemp(prefix=f"e2e-{strategy}-")
    try:
        cfg = _config(strategy, out, args, use_kernels)
        if strategy == "lll+seqkd":  # Seq-KD writes its decodes beside the data: a private copy
            shutil.copytree(cfg.data_dir, os.path.join(out, "data"))
            cfg = dataclasses.replace(cfg, data_dir=os.path.join(out, "data"))
        rec = PhaseRecorder()
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        with ExitStack() as stack:
            for owner, attr, name, items in _wraps(rec):
                stack.enter_context(rec.wrap(owner, attr, name, items))
            train_sequence(cfg)
            evaluate_run(cfg, quiet=True)
        wall = time.perf_counter() - t0
        return {"run": strategy, "kernels": use_kernels, "wall_s": wall, "phases": rec.report(wall),
                "largest_phase": rec.largest(wall)[0], "load_before": load0, "load_after": os.getloadavg(),
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def wordkd_step_ratio(reps: int, rounds: int = 3) -> Dict[str, object]:
    """Median Word-KD student step / median lll step on one demo batch (interleaved rounds)."""
    import numpy as np

    from l2kd.config import TrainConfig
    from l2kd.data import bundled_data_dir
    from l2kd.data.loading import load_task_examples
    from l2kd.data.qa_format import collate
    from l2kd.losses import token_weights
    from l2kd.model import load_base_model, resize_for_tokenizer
    from l2kd.optim import make_optimizer
    from l2kd.strategies import TaskContext
    from l2kd.strategies.lamol import LAMOL
    from l2kd.strategies.word_kd import WordKD
    from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

    dev = torch.device("cpu")
    tasks = ("rnnlg.rest",)
    tok = load_base_tokenizer("tiny-gpt2")
    ids = add_special_tokens(tok, tasks, False, False)
    model = load_base_model("tiny-gpt2", 0)
    resize_for_tokenizer(model, len(tok))
    model.train()
    teacher = load_base_model("tiny-gpt2", 1)  # as l2kd.distillation.load_teacher leaves it
    resize_for_tokenizer(teacher, len(tok))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cfg = TrainConfig(tasks=tasks, data_dir=bundled_data_dir(), model_dir_root=".", model_name="tiny-gpt2",
                      seq_train_type="lll", train_batch_size=8, learning_rate=1e-3, distil=True)
    batch = collate(load_task_examples(cfg.data_dir, tasks[0], "train", tok, ids, 512, 8)[:8], ids)
    ctx = TaskContext(index=0, tasks=tasks, prev_tasks=(), cfg=cfg, run_dir=".", tokenizer=tok, ids=ids,
                      task_dir=".", prev_task_dir=None, prev_train_examples={}, max_len=512, device=dev,
                      generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0),
                      logger=logging.getLogger("e2e"))
    weight = token_weights(len(tok), ids, cfg.tokens_weight, dev)
    opt = make_optimizer(model, cfg)
    lll, kd = LAMOL(), WordKD(LAMOL())
    kd.teacher = teacher

    def step(strategy) -> None:  # the loop's step: loss, backward, clip, optimizer
        loss, _ = strategy.loss(ctx, model, batch, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times: Dict[str, List[float]] = {"lll": [], "word_kd": []}
    for s in (lll, kd):
        step(s)  # warm-up
    for _ in range(rounds):
        for name, s in (("lll", lll), ("word_kd", kd)):
            for _ in range(reps):
                t = time.perf_counter()
                step(s)
                times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"run": "wordkd_step_ratio", "lll_step_ms": med["lll"] * 1e3, "word_kd_step_ms": med["word_kd"] * 1e3,
            "ratio": med["word_kd"] / med["lll"], "batch": list(batch.lm_input.shape), "load": os.getloadavg()}


def _competitors(n: int) -> List[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def contention(args: argparse.Namespace, idle_wall: Optional[float]) -> Dict[str, object]:
    """The lll run (kernels on) with two busy-loop competitors, as slowdown vs the idle run."""
    if idle_wall is None:
        idle_wall = run_one("lll", True, args)["wall_s"]
    procs = _competitors(2)
    try:
        time.sleep(1.0)  # let them reach the scheduler's run queue
        busy = run_one("lll", True, args)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {"run": "contention", "competitors": 2, "idle_wall_s": idle_wall, "busy_wall_s": busy["wall_s"],
            "slowdown": busy["wall_s"] / idle_wall, "load_during": busy["load_after"],
            "busy_phases": busy["phases"], "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 tasks, 40 examples, 1 epoch (about 2-3 minutes)")
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--train", type=int, default=None)
    p.add_argument("--test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES + ["lll+seqkd"], default=None)
    p.add_argument("--seqkd", action="store_true", help="also lll + Seq-KD (its teacher decodes the training set)")
    p.add_argument("--kernels", choices=["both", "on", "off"], default="both")
    p.add_argument("--no-contention", action="store_true")
    p.add_argument("--step-reps", type=int, default=5)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    quick = dict(tasks=["rnnlg.rest", "rnnlg.hotel"], train=40, test=12, epochs=1)
    full = dict(tasks=["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"], train=200, test=40, epochs=2)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    strategies = args.strategies or STRATEGIES + (["lll+seqkd"] if args.seqkd else [])
    kernels = {"both": [True, False], "on": [True], "off": [False]}[args.kernels]
    logging.getLogger("l2kd").setLevel(logging.WARNING)
    from l2kd.runtime import setup_console_logging

    setup_console_logging(quiet=True)

    runs, rows = [], []
    for use_kernels in kernels:
        for s in strategies:
            r = run_one(s, use_kernels, args)
            runs.append(r)
            for phase, st in r["phases"].items():
                rows.append({"run": s, "kernels": "on" if use_kernels else "off", "phase": phase, **st})
            rows.append({"run": s, "kernels": "on" if use_kernels else "off", "phase": "TOTAL", "calls": 1,
                         "seconds": r["wall_s"], "peak_rss_mb": r["maxrss_mb"]})
            print(f"{s} kernels={'on' if use_kernels else 'off'}: {r['wall_s']:.1f} s, largest phase "
                  f"{r['largest_phase']}, load {r['load_after'][0]:.1f}", flush=True)
    print_table(rows, COLUMNS)
    extra = [wordkd_step_ratio(args.step_reps)]
    print(f"\nWord-KD step / lll step: {extra[0]['ratio']:.2f}x ({extra[0]['word_kd_step_ms']:.0f} ms vs "
          f"{extra[0]['lll_step_ms']:.0f} ms)")
    if not args.no_contention:
        idle = next((r["wall_s"] for r in runs if r["run"] == "lll" and r["kernels"]), None)
        c = contention(args, idle)
        extra.append(c)
        print(f"contention: lll with 2 busy competitors {c['busy_wall_s']:.1f} s vs idle {c['idle_wall_s']:.1f} s: "
              f"{c['slowdown']:.2f}x slower (load {c['load_during'][0]:.1f}, {c['threads']} threads, "
              f"OMP_WAIT_POLICY={c['omp_wait_policy']})")
    path = write_results("e2e", torch.device("cpu"), runs + extra,
                         {"quick": args.quick, "tasks": args.tasks, "train": args.train, "test": args.test,
                          "epochs": args.epochs, "strategies": strategies, "threads": torch.get_num_threads(),
                          "thread_policy": THREADS, "load_start": os.getloadavg()}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
