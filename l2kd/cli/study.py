"""``python -m l2kd.study``: the distillation study on the bundled RNNLG sequence.

Trains and tests every method of the study (finetune, multitask, LAMOL, LAMOL + Word-KD /
Seq-KD / Seq-KD soft, EWC and MAS at the original's ``--reg_lambda`` and at one where the
regulariser acts, GEM) for each seed and each task order (the bundled order and its
reverse), starting from one base model, then writes the report of ``python -m l2kd.report``
over all runs (``report.json`` / ``report.md``, plots in every run folder) plus
``study.json`` with the wall time of every run and, for distilled runs, the teacher
diagnostics recorded in each task's ``l2kd_task.json``, and ``summary.md`` / ``summary.json``
(per method: average, BWT, forgetting, the score on the task just learnt, LAMOL's pseudo-sample
parse rate, the teachers' scores, wall time).

``--base smollm2-135m`` starts from the real pretrained SmolLM2-135M (:mod:`l2kd.bases`) with
settings sized for it (:data:`BASE_PRESETS`). ``--probe forgetting`` / ``--probe parse_rate``
measure first which sequence finetuning forgets most on and how long LAMOL must train for its
pseudo-samples to parse (:mod:`l2kd.cli.study_probes`); ``--tasks auto`` and ``--epochs auto``
then read those measurements. A study that is stopped and started again with the same command
skips every run it already finished (recorded in ``study.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from l2kd.bases import BaseUnavailable, ensure_packaged_base, is_packaged_base
from l2kd.cli import study_probes as probes
from l2kd.cli.device_flags import add_device_flags
from l2kd.cli.study_answers import answer_forms, replay_forms
from l2kd.cli.study_replay import replay_mix, teacher_own_samples
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

# --base NAME: the --model_name and the defaults sized for that base (any flag given overrides).
# SmolLM2-135M: lr 2e-4 learns the RNNLG format in ~40 steps where 1e-4 did not in 15; an
# example is ~40 of its tokens, so 60 generated tokens hold a pseudo-sample; a step is ~3 s on
# 2 cores, hence fewer examples, one order, and the model files of finished runs deleted. LM loss
# weight 1.0: with the original's 0.25, 1 of 32 pseudo-samples parsed after 120 steps (the
# Instruct model keeps writing its own prose after __gen__); with 1.0, 19 of 32 (docs/study.md).
# bf16 autocast on CPU: a training step of batch 8 x 64 tokens takes 1.1 s instead of 2.3 s on
# the 2-core development machine (AVX512-BF16), and a GPU from Ampere on trains in bf16 anyway.
# 6 epochs a task (120 steps): at the end of a 3-epoch schedule 0-6% of the pseudo-samples of
# e2enlg parsed (38% at lr 4e-4), at the end of a 6-epoch one 84%. Teachers train as long as the
# students (docs/study.md reports their scores beside the students').
BASE_PRESETS: Dict[str, Dict[str, object]] = {
    "smollm2-135m": dict(model_name="smollm2-135m", lr=2e-4, train=160, test=30, epochs=6, batch=8, lm_lambda=1.0,
                         bf16_cpu=True,
                         max_gen_len=60, orders=["forward"], teacher_epochs="1x", prune_models=True,
                         methods=["finetune", "multitask", "lll", "lll+word_kd", "lll+word_kd@T1",
                                  "lll+seq_kd_soft"],
                         probe_pairs=["rnnlg.rest:woz.en", "woz.en:rnnlg.rest", "e2enlg:woz.en", "woz.en:e2enlg",
                                      "rnnlg.rest:e2enlg", "e2enlg:rnnlg.rest", "rnnlg.tv:woz.en",
                                      "woz.en:rnnlg.tv", "e2enlg:rnnlg.tv", "rnnlg.tv:e2enlg"]),
}
# the settings a finished run of study.json must share to be reused (else it is run again)
CELL_KEYS = ("model_name", "tasks", "train", "test", "epochs", "batch", "lr", "pct", "gem_pct", "temperature_kd",
             "long_teacher_epochs", "teacher_epochs", "max_gen_len", "ewc_strong_reg_lambda",
             "mas_strong_reg_lambda", "lm_lambda", "bf16_cpu")
LM_LAMBDA = probes.LM_LAMBDA

# name -> (seq_train_type, config fields)
METHODS: Dict[str, Tuple[str, Dict[str, object]]] = {
    "finetune": ("finetune", {}),
    "multitask": ("multitask", {}),
    "lll": ("lll", {}),
    "lll+word_kd": ("lll", {"distil": True}),
    # the same teachers distilled at other temperatures (the study's --temperature_kd is the default's)
    "lll+word_kd@T1": ("lll", {"distil": True, "temperature_kd": 1.0}),
    "lll+word_kd@T4": ("lll", {"distil": True, "temperature_kd": 4.0}),
    # the KD and the replayed rows' CE means weighted by their rows' shares of the batch, not added
    "lll+word_kd@weighted": ("lll", {"distil": True, "distil_weighting": True}),
    # only the QA loss distilled; the LM loss (what is generated after __gen__) stays LAMOL's
    "lll+word_kd@qa_only": ("lll", {"distil": True, "distil_qa_only": True}),
    # both: the QA loss distilled with the rows weighted, the LM loss LAMOL's
    "lll+word_kd@qa_only_weighted": ("lll", {"distil": True, "distil_qa_only": True, "distil_weighting": True}),
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
    elif int(args.teacher_epochs or 0) and seq_type == "lll" and (extra.get("distil") or extra.get("seq_distil")):
        extra["teacher_n_train_epochs"] = int(args.teacher_epochs)
        teachers += f"-{int(args.teacher_epochs)}ep"
    return TrainConfig(
        tasks=ordered_tasks(args.tasks, order), data_dir=args.data_dir, model_name=args.model_name,
        model_dir_root=os.path.join(args.out, order, method), teacher_root=teachers,
        seq_train_type=seq_type, seed=seed, temperature_kd=temperature, learning_rate=args.lr,
        train_batch_size=args.batch, n_train_epochs=int(args.epochs), max_train_examples=args.train,
        max_test_examples=args.test, gen_lm_sample_percentage=pct, max_gen_len=args.max_gen_len,
        qa_sampling=SamplingConfig(top_k=1), lm_sampling=SamplingConfig(top_k=20), lm_lambda=args.lm_lambda,
        logging_steps=10**9, quiet=args.quiet, device=args.device, bf16_cpu=args.bf16_cpu, **extra,
    )


def teacher_diagnostics(cfg: TrainConfig) -> Dict[str, object]:
    """The teacher diagnostics recorded for every task of a finished distilled run (empty when none),
    the teacher's own pseudo-samples reduced to their counts (:func:`teacher_own_samples`)."""
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
            out[task] = diag = dict(rec[DIAGNOSTICS])
            if isinstance(diag.get("teacher_pseudo"), dict):
                diag["teacher_pseudo"] = teacher_own_samples(diag["teacher_pseudo"], task, cfg.data_dir)
    return out


def replay_counts(summary: Dict[str, object]) -> Dict[str, Dict[str, int]]:
    """task -> LAMOL's pseudo-samples generated / parsed before it (tasks that replayed)."""
    out = {}
    for name, info in summary.get("tasks", {}).items():
        rep = info.get("replay") if isinstance(info, dict) else None
        if rep and rep.get("source") != "real":
            out[name] = {"generated": int(rep.get("generated", 0)), "parsed": int(rep.get("parsed", 0))}
    return out


def parse_rate(replay: Dict[str, Dict[str, int]]) -> Optional[float]:
    """Share of all pseudo-samples of a run that parsed (None when it generated none)."""
    gen = sum(r["generated"] for r in replay.values())
    return sum(r["parsed"] for r in replay.values()) / gen if gen else None


def run_replay_mix(rdir: str, cfg: TrainConfig, replay: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    """Which earlier task the run's pseudo-samples imitate (:mod:`l2kd.cli.study_replay`); empty
    for a run that replayed nothing."""
    if not replay:
        return {}
    return replay_mix(lambda t: task_dir(rdir, cfg.seq_train_type, t), cfg.tasks, cfg.data_dir)


READ_BACK = ("replay_mix", "replay_forms", "answer_forms")  # the keys :func:`read_back` gives


def read_back(rdir: str, cfg: TrainConfig, replay: Dict[str, Dict[str, int]]) -> Dict[str, object]:
    """What the study reads back from a finished run's folder: which earlier task its
    pseudo-samples imitate (``replay_mix``), how many of those answer off that task's form
    (``replay_forms``) and the form of its test answers after each stage (``answer_forms``)."""
    folder = functools.partial(task_dir, rdir, cfg.seq_train_type)
    return {"replay_mix": run_replay_mix(rdir, cfg, replay),
            "replay_forms": replay_forms(folder, cfg.tasks, cfg.data_dir) if replay else {},
            "answer_forms": answer_forms(rdir, cfg.seq_train_type, cfg.tasks)}


def with_read_back(cell: Dict[str, object], args: argparse.Namespace) -> Dict[str, object]:
    """``cell`` with what :func:`read_back` gives that it was recorded without (a record written
    by an older l2kd); a complete cell, or one whose run folder is gone, is returned as it is."""
    if all(k in cell for k in READ_BACK) or not os.path.isdir(str(cell.get("run_dir", ""))):
        return cell
    cfg = method_config(cell["method"], cell["order"], cell["seed"], args)
    missing = {k: v for k, v in read_back(cell["run_dir"], cfg, cell.get("replay") or {}).items() if k not in cell}
    cell.update(missing)
    return cell


def run_cell(cfg: TrainConfig, quiet: bool) -> Dict[str, object]:
    """Train and test one configuration; return its scores, wall times, pseudo-sample counts, what
    :func:`read_back` reads from its folder and its teacher diagnostics."""
    t0 = time.time()
    summary = train_sequence(cfg)
    t_train = time.time() - t0
    res = evaluate_run(cfg, quiet=quiet)
    replay = replay_counts(summary)
    return {
        "run_dir": summary["run_dir"], "tasks": list(cfg.tasks), "matrix": res["matrix"],
        "average": res.get("average"), "backward_transfer": res.get("backward_transfer"),
        "forgetting": res.get("forgetting"), "train_seconds": t_train, "test_seconds": time.time() - t0 - t_train,
        "replay": replay, "parse_rate": parse_rate(replay),
        **read_back(summary["run_dir"], cfg, replay),
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
    p.add_argument("--base", choices=list(BASE_PRESETS), default=None,
                   help="start from this named base with the settings sized for it (flags given override them)")
    p.add_argument("--model_name", default=PRETRAINED,
                   help=f"base model: {PRETRAINED!r} (default: the pretrained tiny base l2kd ships, verified, or "
                        "built into the user's cache by python -m l2kd.pretrain's recipe), smollm2-135m, a "
                        "save_pretrained folder, or tiny-gpt2 (random init)")
    p.add_argument("--data_dir", default=bundled_data_dir())
    p.add_argument("--tasks", nargs="+", default=["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"],
                   help="the task sequence, or 'auto': the 3-task chain of the forgetting probe (in --out) that "
                        "finetuning forgets most on")
    p.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    add_device_flags(p)
    p.add_argument("--train", type=int, default=300, help="training examples per task")
    p.add_argument("--test", type=int, default=60, help="test examples per task")
    p.add_argument("--epochs", default="2",
                   help="epochs per task, or 'auto': the parse-rate probe's schedule (in --out), whose final model "
                        f"should parse at least {probes.PARSE_TARGET:.0%} of LAMOL's pseudo-samples")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pct", type=float, default=0.2, help="--gen_lm_sample_percentage of the LAMOL runs")
    p.add_argument("--lm_lambda", type=float, default=LM_LAMBDA,
                   help=f"weight of the LM loss in every run and probe (default {LM_LAMBDA:g}, the original's)")
    p.add_argument("--gem_pct", type=float, default=0.05, help="GEM's memory per past task (fraction of its data)")
    p.add_argument("--temperature_kd", type=float, default=2.0)
    p.add_argument("--max_gen_len", type=int, default=96, help="length cap of pseudo-samples and answers (tokens)")
    p.add_argument("--long_teacher_epochs", type=int, default=6,
                   help="teacher epochs of the lll+word_kd@long_teacher runs (the others' teachers train --epochs)")
    p.add_argument("--teacher_epochs", default="0",
                   help="epochs of every distilled method's teachers: N, or Nx for N times --epochs (0: --epochs); "
                        "they get a folder of their own")
    for kind, lam in STRONG_REG_LAMBDA.items():
        p.add_argument(f"--{kind}_strong_reg_lambda", type=float, default=lam,
                       help=f"--reg_lambda of the {kind}_strong runs (default {lam:g})")
    p.add_argument("--prune_models", action="store_true",
                   help="delete the model weights of every finished, tested run (teachers keep model-finish)")
    g = p.add_argument_group("probes (run instead of the study)")
    g.add_argument("--probe", choices=["forgetting", "parse_rate"], default=None,
                   help="forgetting: finetune on --probe_pairs; parse_rate: LAMOL on --probe_task for "
                        "--probe_epochs epochs, parse rate of pseudo-samples after each")
    g.add_argument("--probe_pairs", nargs="+", default=["rnnlg.rest:rnnlg.hotel", "rnnlg.hotel:rnnlg.tv"],
                   help="ordered pairs FIRST:SECOND of the forgetting probe")
    g.add_argument("--probe_task", default="rnnlg.rest")
    g.add_argument("--probe_epochs", type=int, default=6)
    g.add_argument("--probe_samples", type=int, default=32, help="pseudo-samples generated per probed epoch")
    g.add_argument("--probe_seed", type=int, default=1)
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, with ``--base``'s preset as the defaults of the flags not given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.base:
        parser.set_defaults(**BASE_PRESETS[args.base])
        args = parser.parse_args(argv)
    return args


def resolve_tasks_and_epochs(args: argparse.Namespace) -> None:
    """``--tasks auto`` / ``--epochs auto`` from the probes' files in ``--out`` (an error says
    which probe to run first)."""
    if args.tasks == ["auto"]:
        path = os.path.join(args.out, probes.FORGETTING_FILE)
        if not os.path.isfile(path):
            raise SystemExit(f"--tasks auto: {path} missing; run the study with --probe forgetting first")
        with open(path) as f:
            seq, mean = probes.choose_sequence(json.load(f)["results"])
        print(f"--tasks auto: {' -> '.join(seq)} (finetuning forgot {mean:.1f} points per pair in the probe)")
        args.tasks = list(seq)
    if str(args.epochs) == "auto":
        path = os.path.join(args.out, probes.PARSE_FILE)
        if not os.path.isfile(path):
            raise SystemExit(f"--epochs auto: {path} missing; run the study with --probe parse_rate first")
        with open(path) as f:
            probe = json.load(f)
        recorded = probes.with_record_defaults(probe)
        for key in probes.RECORD_DEFAULTS:
            probed, want = recorded[key], getattr(args, key)
            if probed != want:
                raise SystemExit(f"--epochs auto: {path} was measured with --{key} {probed:g}, this study uses "
                                 f"{want:g}; run the parse-rate probe with the study's settings "
                                 "(in another --out, or after moving that file away)")
        n = probes.epochs_for_parse_rate(probe)
        if n is None:
            n = probes.probed_schedule(probe)
            print(f"--epochs auto: WARNING: at the end of the probed {n}-epoch schedule fewer than "
                  f"{probes.PARSE_TARGET:.0%} of the pseudo-samples parsed, so LAMOL's replay will be weak; "
                  f"probe a longer schedule (--probe_epochs) first. Using {n} epochs")
        else:
            print(f"--epochs auto: {n} epochs (at the end of the probed {n}-epoch schedule "
                  f"{probes.PARSE_TARGET:.0%} or more of the pseudo-samples parsed)")
        if probe.get("task") not in (None, *args.tasks[:1]):
            print(f"--epochs auto: the probe learnt {probe['task']}, the sequence starts with {args.tasks[0]}: "
                  "how soon a task's format is learnt differs between tasks (each LAMOL row reports its own "
                  "parse rate)")
        args.epochs = n
    try:
        args.epochs = int(args.epochs)
    except ValueError:
        raise SystemExit(f"--epochs {args.epochs!r}: a whole number or 'auto'") from None
    args.teacher_epochs = teacher_epochs(args.teacher_epochs, args.epochs)


def teacher_epochs(value: object, epochs: int) -> int:
    """``--teacher_epochs``: a number of epochs, or ``Nx`` (N times the students' ``epochs``)."""
    text = str(value).strip()
    try:
        n = round(float(text[:-1]) * epochs) if text.endswith("x") else int(text)
    except ValueError:
        raise SystemExit(f"--teacher_epochs {value!r}: a whole number, or a multiple of --epochs such as 2x") from None
    if n < 0:
        raise SystemExit(f"--teacher_epochs {value!r}: must not be negative")
    return n


def cell_key(args: argparse.Namespace) -> Dict[str, object]:
    """The settings a recorded run must share to be reused."""
    return {k: getattr(args, k) for k in CELL_KEYS}


CellId = Tuple[str, str, int]


def recorded_cells(args: argparse.Namespace) -> Tuple[Dict[CellId, Dict[str, object]], List[Dict[str, object]]]:
    """The runs ``<out>/study.json`` records: those under this invocation's settings, by
    (order, method, seed), and the rest (recorded under other settings, kept as they are)."""
    try:
        with open(os.path.join(args.out, "study.json")) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}, []
    key = json.loads(json.dumps(cell_key(args)))
    same, other = {}, []
    for c in old.get("cells", []) + old.get("other_settings_cells", []):
        cid = (c["order"], c["method"], c["seed"])
        if probes.with_record_defaults(c.get("key", {})) == key and cid not in same:
            same[cid] = c
        else:
            other.append(c)
    return same, other


def finished_cells(args: argparse.Namespace) -> Dict[CellId, Dict[str, object]]:
    """Runs a previous invocation recorded in ``<out>/study.json`` under the same settings."""
    return recorded_cells(args)[0]


def cells_to_write(plan_cells: List[Dict[str, object]], done: Dict[CellId, Dict[str, object]],
                   plan: Sequence[CellId]) -> List[Dict[str, object]]:
    """This invocation's runs, then the finished runs it did not plan (an invocation with fewer
    methods or seeds keeps the others' records, which later invocations resume from)."""
    planned = set(plan)
    return list(plan_cells) + [c for k, c in done.items() if k not in planned]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    apply_thread_policy()  # OMP_NUM_THREADS, else the CPUs this process may use
    if args.model_name == PRETRAINED:
        from l2kd.pretraining import ensure_base

        args.model_name = ensure_base(quiet=args.quiet)
    elif is_packaged_base(args.model_name):
        try:
            ensure_packaged_base(args.model_name, quiet=args.quiet)  # convert now, not inside the first run
        except BaseUnavailable as exc:
            print(f"l2kd.study: error: {exc}", file=sys.stderr)
            return 1
    os.makedirs(args.out, exist_ok=True)
    # Seq-KD writes its decoded training files beside the data: work on a copy, never the package's.
    copy = os.path.join(args.out, "data")
    if not os.path.isdir(copy):
        shutil.copytree(args.data_dir, copy)
    args.data_dir = copy
    if args.probe:
        return run_probe(args)
    resolve_tasks_and_epochs(args)
    done, other_settings = recorded_cells(args)
    if other_settings:
        print(f"l2kd study: {len(other_settings)} run(s) in {os.path.join(args.out, 'study.json')} were recorded "
              "under other settings: kept in it as other_settings_cells, not reused or summarised", flush=True)
    cells: List[Dict[str, object]] = []
    # seed-major: a study stopped early still has every method for the seeds it finished
    plan = [(o, m, s) for o in args.orders for s in args.seeds for m in args.methods]
    print(f"l2kd study: {len(plan)} runs ({len(args.methods)} methods x {len(args.seeds)} seeds x "
          f"{len(args.orders)} orders) from {args.model_name}, {args.train} examples x {args.epochs} epochs per task"
          + (f"; {sum(1 for p in plan if p in done)} finished earlier" if done else ""), flush=True)
    t_start = time.time()
    for i, (order, method, seed) in enumerate(plan, 1):
        if (order, method, seed) in done:
            cells.append(with_read_back(done[(order, method, seed)], args))
            continue
        cfg = method_config(method, order, seed, args)
        print(f"\n[{i}/{len(plan)}] {method}, {order} order ({' -> '.join(cfg.tasks)}), seed {seed}", flush=True)
        cell = {"method": method, "order": order, "seed": seed, **run_cell(cfg, args.quiet), "key": cell_key(args)}
        cells.append(cell)
        rate = f", pseudo-samples parsed {100 * cell['parse_rate']:.0f}%" if cell["parse_rate"] is not None else ""
        print(f"  average {cell['average']:.1f}{rate}, trained {cell['train_seconds']:.0f} s, "
              f"tested {cell['test_seconds']:.0f} s", flush=True)
        write_study(args, cells_to_write(cells, done, plan), other_settings)
        if args.prune_models:
            probes.prune_run(cell["run_dir"])
            # teachers keep model-finish (and config.json): all that later students load from them
            probes.prune_run(os.path.join(args.out, order), keep_finish=True)
    write_study(args, cells_to_write(cells, done, plan), other_settings)
    print("\nwall time per method\n" + wall_time_table(cells))
    print(f"({time.time() - t_start:.0f} s in all)\n")
    from l2kd.cli.report import main as report_main

    dirs = [c["run_dir"] for c in cells]
    if args.prune_models:  # the report reads accuracy_matrix.json and l2kd_run.json, which stay
        return report_main(dirs + ["--out", args.out, "--no-plots"])
    return report_main(dirs + ["--out", args.out] + ([] if args.plots else ["--no-plots"]))


def write_study(args: argparse.Namespace, cells: List[Dict[str, object]],
                other_settings: Sequence[Dict[str, object]] = ()) -> None:
    """``study.json`` (every run; runs recorded under other settings apart, unsummarised) and
    ``summary.json`` / ``summary.md`` (per method)."""
    from l2kd.cli.study_summary import markdown, summarize
    from l2kd.io_utils import atomic_write_text

    record = {"model_name": args.model_name, "cells": cells, "args": vars(args)}
    if other_settings:
        record["other_settings_cells"] = list(other_settings)
    atomic_write_json(os.path.join(args.out, "study.json"), record)
    rows = summarize(cells)
    atomic_write_json(os.path.join(args.out, "summary.json"), {"model_name": args.model_name, "rows": rows})
    atomic_write_text(os.path.join(args.out, "summary.md"), markdown(rows))


def run_probe(args: argparse.Namespace) -> int:
    """``--probe``: one of the measurements that set the study up."""
    args.epochs = int(args.epochs) if str(args.epochs) != "auto" else 2
    if args.probe == "forgetting":
        out = probes.forgetting_probe(args, probes.parse_pairs(args.probe_pairs))
        print("\n" + probes.forgetting_markdown(out["results"], args))
        try:
            seq, mean = probes.choose_sequence(out["results"])
            print(f"most forgetting 3-task chain so far: {' -> '.join(seq)} ({mean:.1f} points per pair)")
        except ValueError as exc:
            print(exc)
    else:
        out = probes.parse_rate_probe(args, args.probe_task, args.probe_epochs, args.probe_samples)
        print("\n" + probes.parse_markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
