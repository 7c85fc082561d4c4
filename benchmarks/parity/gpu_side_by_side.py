"""l2kd beside the original L2KD on one GPU: the same weights, data and flags, one after the other.

    python benchmarks/parity/gpu_side_by_side.py --home H --orig H/L2KD --orig-python H/venv-orig/bin/python

``--orig`` is an untouched checkout of voidism/L2KD; ``shim/`` (first on its PYTHONPATH) gives it
a device, the shared local weights and import-only metric modules (see ``shim/README.md``).
The harness writes the cut data's sizes into the checkout's ``data_attrs.json`` (the original
counts pseudo-samples from it; the file is kept as ``data_attrs.json.full`` first).

Steps, each a fresh process with its wall time and the GPU's memory peak (``nvidia-smi`` polled
every 0.2 s, minus the figure before the step):

1. ``data``: the first ``--train`` / ``--test`` examples of rnnlg.rest and rnnlg.hotel.
2. ``init``: ``make_init.py`` in the original's environment: the shared initial GPT-2
   (``--size small``: 124M, seed 42), which l2kd loads as ``--model_name DIR``.
3. ``orig_train``, ``l2kd_train``, ``orig_test``, ``l2kd_test`` with the flags of ``FLAGS``
   (``--fp32`` for both: the original trains fp32 on any card it does not list as Turing), then,
   with ``--l2kd-amp``, l2kd again under its default mixed precision.
4. One scorer for both (``score.py``): the score matrix of each system.

Prints the table and ratios and writes ``<home>/gpu_side_by_side.json``. ``--dry-run`` (any
machine, no GPU): checks the checkout and the two Pythons, makes the data, and prints every
command and environment without running them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from make_data import TASKS, cut_data  # noqa: E402
from score import score_run  # noqa: E402

SHIM = os.path.join(HERE, "shim")
FLAGS = ["--tasks", *TASKS, "--seq_train_type", "lll", "--gen_lm_sample_percentage", "0.2", "--n_train_epochs", "2",
         "--train_batch_size", "8", "--learning_rate", "1e-3", "--fp32"]


def gpu_memory_mib() -> Optional[float]:
    """Memory in use on GPU 0 as ``nvidia-smi`` reports it (None without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class MemoryPeak:
    """Polls :func:`gpu_memory_mib` in a thread while a step runs; ``peak`` above ``base``."""

    def __init__(self, probe=gpu_memory_mib, every_s: float = 0.2) -> None:
        self.probe, self.every_s = probe, every_s
        self.base = probe()
        self.top = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            m = self.probe()
            if m is not None and (self.top is None or m > self.top):
                self.top = m

    def __enter__(self) -> "MemoryPeak":
        if self.base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak(self) -> Optional[float]:
        return None if self.base is None else self.top - self.base


def set_data_attrs(orig: str, sizes: Dict[str, Dict[str, int]]) -> None:
    """The cut sizes in the original's ``data_attrs.json`` (the full file kept beside it once)."""
    path = os.path.join(orig, "data_attrs.json")
    if not os.path.exists(path + ".full"):
        shutil.copyfile(path, path + ".full")
    with open(path + ".full") as f:
        attrs = json.load(f)
    for task, n in sizes.items():
        for split, key in (("train", "train"), ("test", "eval"), ("test", "test")):
            attrs[task][key]["data_size"] = n[split]
    with open(path, "w") as f:
        json.dump(attrs, f)


def plan(args: argparse.Namespace, model_dir: str) -> List[Dict[str, object]]:
    """Every step after the data: name, argv, working folder, environment additions."""
    home = args.home
    data = os.path.join(home, "data")
    orig_env = {"PYTHONPATH": SHIM, "PARITY_INIT_DIR": model_dir}
    if args.memory_mib:
        orig_env["PARITY_MEMORY_MIB"] = str(args.memory_mib)
    l2kd_env = {"PYTHONPATH": ROOT}
    common = ["--data_dir", data, "--seed", str(args.seed), *FLAGS]
    orig = lambda phase: {"name": f"orig_{phase}", "cwd": args.orig, "env": orig_env,  # noqa: E731
                          "argv": [args.orig_python, os.path.join(args.orig, f"{phase}.py"), "--model_dir_root",
                                   os.path.join(home, "root_orig"), "--model_name", "gpt2", *common]}
    mine = lambda phase, root, extra=(): {"name": f"l2kd_{phase}", "cwd": home, "env": l2kd_env,  # noqa: E731
                                          "argv": [args.l2kd_python, "-m", f"l2kd.{phase}", "--model_dir_root",
                                                   os.path.join(home, root), "--model_name", model_dir, "--device",
                                                   "cuda", *common, *extra]}
    steps = [{"name": "init", "cwd": home, "env": {}, "skip": os.path.isfile(os.path.join(model_dir, "config.json")),
              "argv": [args.orig_python, os.path.join(HERE, "make_init.py"), model_dir, args.size, str(args.seed)]},
             orig("train"), mine("train", "root_l2kd"), orig("test"), mine("test", "root_l2kd")]
    if args.l2kd_amp:
        amp = [dict(s, name=s["name"] + "_amp", argv=[a for a in s["argv"] if a != "--fp32"])
               for s in (mine("train", "root_l2kd_amp"), mine("test", "root_l2kd_amp"))]
        steps += amp
    return steps


def run_step(step: Dict[str, object], logs: str) -> Dict[str, object]:
    """Run one step with its output in ``<logs>/<name>.log``; wall time, GPU peak, exit status."""
    env = {**os.environ, **step["env"]}
    log_path = os.path.join(logs, f"{step['name']}.log")
    with open(log_path, "w") as log, MemoryPeak() as mem:
        log.write("# " + " ".join(step["argv"]) + "\n")
        log.flush()
        t = time.perf_counter()
        rc = subprocess.run(step["argv"], cwd=step["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t
    return {"step": step["name"], "rc": rc, "wall_s": wall, "gpu_peak_mib": mem.peak, "log": log_path}


def run_dir(home: str, system: str, seed: int, model_dir: str) -> str:
    sub = "gpt2" if system == "orig" else os.path.basename(os.path.normpath(model_dir))
    root = {"orig": "root_orig", "l2kd": "root_l2kd", "l2kd_amp": "root_l2kd_amp"}[system]
    return os.path.join(home, root, sub, "lll", f"{'_'.join(TASKS)}_0.2_{seed}")


def matrix(scores: Dict[str, Dict[str, dict]]) -> List[List[Optional[float]]]:
    """R[i][j]: avg_rouge on task j of the model after task i (None where missing)."""
    return [[scores.get(a, {}).get(b, {}).get("avg_rouge") for b in TASKS] for a in TASKS]


def format_matrix(title: str, R: List[List[Optional[float]]]) -> str:
    lines = [title, "| after \\ test | " + " | ".join(TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
    for task, row in zip(TASKS, R):
        lines.append(f"| {task} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row) + " |")
    last = [v for v in R[-1] if v is not None]
    if last:
        lines.append(f"final average: {sum(last) / len(last):.2f}")
    return "\n".join(lines)


def ratios(results: Dict[str, Dict[str, object]]) -> Dict[str, float]:
    """Original over l2kd wall time of training and test (above 1: l2kd is faster)."""
    out = {}
    for phase in ("train", "test"):
        o, m = results.get(f"orig_{phase}"), results.get(f"l2kd_{phase}")
        if o and m and o["rc"] == 0 and m["rc"] == 0:
            out[f"{phase}_wall_orig_over_l2kd"] = o["wall_s"] / m["wall_s"]
    return out


def check_inputs(args: argparse.Namespace) -> List[str]:
    """What is missing before anything runs."""
    problems = []
    for name in ("train.py", "test.py", "data_attrs.json", "settings.py"):
        if not os.path.isfile(os.path.join(args.orig, name)):
            problems.append(f"--orig {args.orig}: no {name} (a checkout of voidism/L2KD)")
    for flag, py in (("--orig-python", args.orig_python), ("--l2kd-python", args.l2kd_python)):
        if shutil.which(py) is None and not os.access(py, os.X_OK):
            problems.append(f"{flag} {py}: not an executable")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True, help="working folder (data, weights, runs, logs)")
    p.add_argument("--orig", required=True, help="checkout of voidism/L2KD (left unmodified but data_attrs.json)")
    p.add_argument("--orig-python", required=True, help="python of the original's environment (pytorch-transformers 1.2.0)")
    p.add_argument("--l2kd-python", default=sys.executable)
    p.add_argument("--size", choices=["tiny", "small"], default="small")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--memory-mib", type=int, default=None, help="the memory figure the original's GPU query reports")
    p.add_argument("--l2kd-amp", action="store_true", help="also l2kd without --fp32 (its mixed precision)")
    p.add_argument("--dry-run", action="store_true", help="check, make the data, print the commands; run nothing")
    args = p.parse_args(argv)
    args.home = os.path.abspath(args.home)
    problems = check_inputs(args)
    if problems and not args.dry_run:
        for msg in problems:
            print(f"gpu_side_by_side: {msg}", file=sys.stderr)
        return 2
    sizes = cut_data(os.path.join(args.home, "data"), args.train, args.test)
    model_dir = os.path.join(args.home, f"gpt2-{args.size}-init-{args.seed}")
    steps = plan(args, model_dir)
    if args.dry_run:
        for msg in problems:
            print(f"would stop: {msg}")
        print(f"data: {json.dumps(sizes)} in {os.path.join(args.home, 'data')}")
        print(f"data_attrs.json of {args.orig}: the sizes above")
        for s in steps:
            env = " ".join(f"{k}={v}" for k, v in s["env"].items())
            print(f"{s['name']}{' (done)' if s.get('skip') else ''}: cd {s['cwd']} && {env} {' '.join(s['argv'])}")
        return 0
    set_data_attrs(args.orig, sizes)
    logs = os.path.join(args.home, "logs")
    os.makedirs(logs, exist_ok=True)
    results: Dict[str, Dict[str, object]] = {}
    for s in steps:
        if s.get("skip"):
            continue
        r = results[s["name"]] = run_step(s, logs)
        peak = "-" if r["gpu_peak_mib"] is None else f"{r['gpu_peak_mib']:.0f}"
        print(f"{r['step']:16s} rc {r['rc']}  {r['wall_s']:7.1f} s  GPU peak {peak} MiB", flush=True)
        if r["rc"] != 0 and s["name"] == "init":
            print(f"init failed: see {r['log']}", file=sys.stderr)
            return 1
    systems = ["orig", "l2kd"] + (["l2kd_amp"] if args.l2kd_amp else [])
    scores = {name: score_run(run_dir(args.home, name, args.seed, model_dir)) for name in systems}
    for name in systems:
        print(format_matrix(f"\nROUGE ({name}; rows: model after task i, cols: test task; mean R-1/2/Lsum F1)",
                            matrix(scores[name])))
    rat = ratios(results)
    print("\n" + ", ".join(f"{k} {v:.2f}" for k, v in rat.items()))
    out = os.path.join(args.home, "gpu_side_by_side.json")
    with open(out, "w") as f:
        json.dump({"config": {k: v for k, v in vars(args).items()}, "sizes": sizes, "steps": results,
                   "scores": scores, "ratios": rat}, f, indent=1)
    print(f"wrote {out}")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
