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

    model_load      l2kd.loop.sequence.load_base_model / l2kd.evaluate.model_from_task_dir
    other           the rest of the run's wall time (data loading, model set-up, ...)

Reported per phase: self seconds, examples/s, peak RSS (VmHWM, reset per phase). Per run also the
bytes the process wrote while training (``/proc/self/io`` ``wchar``: model and checkpoint files,
logs) per epoch trained.

The training step split (:class:`benchmarks.phases.StepSplit`): batch preparation, forward (the
strategy's loss), backward, optimizer (clipping, the optimizer, the schedule, reads), and the step
logging, per student step; host wall clock, and on a GPU also CUDA-event time (read once at the
end, so the split adds no synchronisation).

Extra rows:

* ``wordkd_step_ratio``: one Word-KD student step (teacher forward under no_grad + fused KD
  loss + student forward/backward + AdamW) over one plain lll step on the same demo batch,
  medians of interleaved repeats in this process (CPU only).
* ``contention``: the lll run (kernels on) again while two CPU-bound competitor processes
  (Python busy loops) run, as slowdown vs the idle lll run of this process (CPU only).
* ``dispatch``: an lll training run of ``--dispatch-steps`` steps with every step under
  :class:`l2kd.dispatch_stats.DispatchCounter`: ATen operations and host reads (each one a
  synchronisation on a GPU) per optimizer step.
* ``startup``: in fresh processes, best of ``--startup-reps``: the time to ``import
  l2kd.cli.train`` (and by top-level package, from ``python -X importtime``), and a one-step
  ``python -m l2kd.train`` run (8 examples, batch 8, 1 epoch): time to its first log line and
  its wall time.
* ``precision`` (``--precision both``, the default on CUDA): every run also with ``--fp32``;
  the row is the fp32 / mixed-precision ratio of training-step time and wall time.

    python benchmarks/e2e.py [--quick] [--strategies lll gem] [--no-contention] [--seqkd]
    python benchmarks/e2e.py --device cuda --model gpt2-small-random --strategies lll   # a GPU

``--model`` takes a model folder, a name the loader knows (``tiny-gpt2``, ...) or
``gpt2-small-random`` (a GPT-2 124M, random init, seed 42, saved to a temporary folder).

Writes ``benchmarks/results/e2e-<device>-<date>.json`` (machine, threads, versions, commit, load
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
from contextlib import ExitStack, nullcontext
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from l2kd.runtime import apply_thread_policy  # noqa: E402  (before torch starts its pool)

THREADS = apply_thread_policy()

import torch  # noqa: E402

from benchmarks.common import print_table, write_results  # noqa: E402
from benchmarks.phases import PhaseRecorder, StepSplit, after, around, patched, proc_field  # noqa: E402

STRATEGIES = ["finetune", "lll", "lll+word_kd", "gem"]
COLUMNS = ["run", "kernels", "phase", "calls", "seconds", "items", "items_per_s", "peak_rss_mb"]
SPLIT_COLUMNS = ["run", "kernels", "section", "steps", "host_ms_per_step", "device_ms_per_step"]
SMALL_RANDOM = "gpt2-small-random"


def _config(strategy: str, out: str, args: argparse.Namespace, use_kernels: bool, fp32: bool = False):
    from l2kd.cli.demo import build_parser, demo_config

    demo_args = build_parser().parse_args(
        ["--out", out, "--tasks", *args.tasks, "--train", str(args.train), "--test", str(args.test),
         "--epochs", str(args.epochs), "--quiet"])
    name = "lll+seqkd_soft" if strategy == "lll+seqkd" else strategy
    cfg = demo_config(name, demo_args)
    extra = {"model_name": args.model_dir} if getattr(args, "model_dir", None) else {}
    return dataclasses.replace(
        cfg, use_kernels=use_kernels, checkpoint_steps=0, device=getattr(args, "device", "cpu"), fp32=fp32,
        torch_compile=getattr(args, "torch_compile", "off"),
        qa_sampling=dataclasses.replace(cfg.qa_sampling, use_kernels=use_kernels),
        lm_sampling=dataclasses.replace(cfg.lm_sampling, use_kernels=use_kernels), **extra)


def small_random_model(out: str, seed: int = 42) -> str:
    """A GPT-2 124M (12 layers, 768 wide, 1024 positions), random init, saved in ``out``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
                    ).save_pretrained(out)
    return out


def _written_bytes() -> Optional[int]:
    """Bytes this process has written so far (``wchar``: every write call, files and logs)."""
    return proc_field("/proc/self/io", "wchar:")


def _wraps(rec: PhaseRecorder):
    """The (owner, attribute, phase, item counter) of every timed library function."""
    import l2kd.distillation as distillation
    import l2kd.evaluate as evaluate
    import l2kd.loop.sequence as sequence
    import l2kd.loop.task as task
    import l2kd.strategies.lamol as lamol
    import l2kd.strategies.word_kd as word_kd

    return [
        (task, "step", "train_step", lambda a, k, r: len(a[1])),  # step(run, idx)
        (task, "end_epoch", "save", None),
        (task, "finish_task", "save", None),
        (lamol, "generate_pseudo", "pseudo_gen", lambda a, k, r: r[1].generated),
        (sequence, "_train_teacher", "teacher_train", None),
        (word_kd, "load_teacher", "teacher_load", None),
        (distillation, "predict", "seqkd_decode", lambda a, k, r: len(r)),
        (evaluate, "predict", "test_decode", lambda a, k, r: len(r)),
        (evaluate, "compute_metrics", "scoring", lambda a, k, r: len(a[1])),
        (sequence, "load_base_model", "model_load", None),
        (evaluate, "model_from_task_dir", "model_load", None),
    ]


def _strategy_classes():
    """Every strategy class that defines its own ``loss`` (a wrapper's loss calls its base's)."""
    from l2kd.strategies import Strategy

    seen, todo = [], [Strategy]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [c for c in seen if "loss" in c.__dict__]


def _instrument(stack: ExitStack, rec: PhaseRecorder, split: StepSplit) -> List[str]:
    """Enter the phase wrappers and the step split's marks; the names that were not found."""
    import l2kd.loop.task as task

    missing = []
    for owner, attr, name, items in _wraps(rec):
        if hasattr(owner, attr):
            stack.enter_context(rec.wrap(owner, attr, name, items))
        else:
            missing.append(f"{owner.__name__}.{attr}")
    in_teacher = lambda: any(o.path.startswith("teacher_train") for o in rec._stack)  # noqa: E731
    for owner, attr, make in (
            (task, "step", around(lambda: nullcontext() if in_teacher() else split.step())),
            (task, "_log_step", around(split.log_call)),
            (torch.Tensor, "backward", after(lambda: split.mark("backward_end", last=True)))):
        if not stack.enter_context(patched(owner, attr, make)):
            missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
    for cls in _strategy_classes():
        stack.enter_context(patched(cls, "loss", around(split.loss)))
    return missing


def run_one(strategy: str, use_kernels: bool, args: argparse.Namespace, fp32: bool = False) -> Dict[str, object]:
    """Train and test one strategy in a fresh folder; the phase report, the step split, the
    bytes written and the wall time."""
    from l2kd.evaluate import evaluate_run
    from l2kd.loop import train_sequence

    out = tempfile.mkdtemp(prefix=f"e2e-{strategy}-")
    device = torch.device(getattr(args, "device", "cpu"))
    try:
        cfg = _config(strategy, out, args, use_kernels, fp32)
        if strategy == "lll+seqkd":  # Seq-KD writes its decodes beside the data: a private copy
            shutil.copytree(cfg.data_dir, os.path.join(out, "data"))
            cfg = dataclasses.replace(cfg, data_dir=os.path.join(out, "data"))
        rec = PhaseRecorder()
        split = StepSplit(cuda=device.type == "cuda")
        load0 = os.getloadavg()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        with ExitStack() as stack:
            missing = _instrument(stack, rec, split)
            w0 = _written_bytes()
            train_sequence(cfg)
            w1 = _written_bytes()
            t_train = time.perf_counter() - t0
            evaluate_run(cfg, quiet=True)
        wall = time.perf_counter() - t0
        epochs = len(cfg.tasks) * cfg.n_train_epochs
        written = (w1 - w0) if w0 is not None and w1 is not None else None
        r = {"run": strategy, "kernels": use_kernels, "precision": "fp32" if fp32 else "default",
             "torch_compile": cfg.torch_compile,
             "wall_s": wall, "train_s": t_train, "phases": rec.report(wall), "largest_phase": rec.largest(wall)[0],
             "step_split": split.report(), "train_written_mb": written / 2**20 if written is not None else None,
             "written_mb_per_epoch": written / 2**20 / epochs if written is not None else None,
             "load_before": load0, "load_after": os.getloadavg(),
             "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if device.type == "cuda":
            r["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if missing:
            r["not_instrumented"] = missing
        return r
    finally:
        shutil.rmtree(out, ignore_errors=True)


def dispatch_counts(args: argparse.Namespace, steps: int) -> Dict[str, object]:
    """ATen operations and host reads per optimizer step of an lll training run of ``steps``
    steps (one task, batch 8, one epoch), each step under a DispatchCounter."""
    import l2kd.loop.task as task
    from l2kd.dispatch_stats import DispatchCounter
    from l2kd.loop import train_sequence

    counts: List[Dict[str, int]] = []

    def make(original):
        def counted(*a, **k):
            with DispatchCounter() as c:
                out = original(*a, **k)
            counts.append({**c.summary(), "host_read_ops": dict((op, n) for op, n in c.ops.items()
                                                                 if "_local_scalar_dense" in op)})
            return out
        return counted

    sub = argparse.Namespace(**{**vars(args), "tasks": args.tasks[:1], "train": steps * 8, "epochs": 1})
    out = tempfile.mkdtemp(prefix="e2e-dispatch-")
    try:
        cfg = _config("lll", out, sub, use_kernels=True)
        with patched(task, "step", make) as found:
            train_sequence(cfg)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = len(counts)
    return {"run": "dispatch", "found_step": found, "steps": n,
            "ops_per_step": sum(c["ops"] for c in counts) / n if n else None,
            "host_reads_per_step": sum(c["host_reads"] for c in counts) / n if n else None,
            "host_reads_first_step": counts[0]["host_reads"] if n else None,
            "host_reads_last_step": counts[-1]["host_reads"] if n else None, "device": cfg.device}


def _import_profile(stderr: str) -> Dict[str, float]:
    """Seconds of import-time code by top-level package (the self column of a ``python -X
    importtime`` trace summed per package: whose modules the start-up runs)."""
    out: Dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        self_us = parts[0].split(":")[1].strip()
        if not self_us.isdigit():
            continue  # the header
        top = parts[2].strip().split(".")[0]
        out[top] = out.get(top, 0.0) + int(self_us) / 1e6
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def one_step_argv(args: argparse.Namespace, root: str) -> List[str]:
    """The one-step training command of the start-up row."""
    from l2kd.data import bundled_data_dir

    return [sys.executable, "-m", "l2kd.train", "--data_dir", bundled_data_dir(), "--model_dir_root", root,
            "--model_name", getattr(args, "model_dir", None) or "tiny-gpt2", "--tasks", args.tasks[0],
            "--seq_train_type", "lll", "--max_train_examples", "8", "--train_batch_size", "8",
            "--n_train_epochs", "1", "--device", getattr(args, "device", "cpu")]


def startup(args: argparse.Namespace, reps: int) -> Dict[str, object]:
    """Import time of ``l2kd.cli.train`` and a one-step training run, in fresh processes (best of ``reps``)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    imports, first_log, walls, by_package = [], [], [], {}
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import l2kd.cli.train"], env=env, check=True, cwd=ROOT)
        imports.append(time.perf_counter() - t)
        root = tempfile.mkdtemp(prefix="e2e-startup-")
        try:
            t = time.perf_counter()
            proc = subprocess.Popen(one_step_argv(args, root), env=env, cwd=root, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            first = None
            for line in proc.stderr:
                if first is None and " INFO " in line:
                    first = time.perf_counter() - t
            rc = proc.wait()
            walls.append(time.perf_counter() - t)
            if rc != 0:
                raise RuntimeError(f"one-step run failed (exit {rc}): {' '.join(one_step_argv(args, root))}")
            if first is not None:
                first_log.append(first)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import l2kd.cli.train"], env=env,
                           cwd=ROOT, capture_output=True, text=True)
    by_package = _import_profile(trace.stderr)
    return {"run": "startup", "reps": reps, "import_s": min(imports), "first_log_line_s": min(first_log, default=None),
            "one_step_wall_s": min(walls), "import_by_package_s": by_package,
            "command": " ".join(one_step_argv(args, "<tmp>")), "load": os.getloadavg()}


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


def _phase_rows(r: Dict[str, object], cuda: bool) -> List[Dict[str, object]]:
    base = {"run": r["run"], "kernels": "on" if r["kernels"] else "off"}
    if cuda:
        base["precision"] = r["precision"]
    rows = [{**base, "phase": phase, **st} for phase, st in r["phases"].items()]
    rows.append({**base, "phase": "TOTAL", "calls": 1, "seconds": r["wall_s"], "peak_rss_mb": r["maxrss_mb"]})
    return rows


def _split_rows(r: Dict[str, object]) -> List[Dict[str, object]]:
    return [{"run": r["run"] + ("" if r["precision"] == "default" else "+fp32"), "kernels": "on" if r["kernels"] else "off",
             "section": name, **st} for name, st in r["step_split"].items()]


def precision_ratio(runs: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """fp32 over default precision, per strategy run with both: train-step seconds and wall time."""
    out = []
    for r in runs:
        if r["precision"] != "default":
            continue
        twin = next((x for x in runs if x["precision"] == "fp32" and x["run"] == r["run"]
                     and x["kernels"] == r["kernels"]), None)
        if twin is None:
            continue
        step = lambda x: x["phases"].get("train_step", {}).get("seconds") or float("nan")  # noqa: E731
        out.append({"run": "precision", "strategy": r["run"], "kernels": r["kernels"],
                    "train_step_fp32_over_default": step(twin) / step(r), "wall_fp32_over_default": twin["wall_s"] / r["wall_s"]})
    return out


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
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", default=None,
                   help=f"model folder or name (default: the demo's tiny GPT-2); {SMALL_RANDOM}: GPT-2 124M, random init")
    p.add_argument("--precision", choices=["both", "default", "fp32"], default=None,
                   help="the runs' precision; both (default on CUDA) adds the fp32 / default row")
    p.add_argument("--dispatch-steps", type=int, default=32, help="steps of the dispatch-count run (0: skip)")
    p.add_argument("--startup-reps", type=int, default=3, help="fresh processes of the start-up row (0: skip)")
    p.add_argument("--torch-compile", dest="torch_compile", default="off",
                   choices=["off", "default", "reduce-overhead", "max-autotune"],
                   help="the runs' --torch_compile (the body under torch.compile; its compile time is in train_step)")
    p.add_argument("--no-runs", action="store_true", help="skip the strategy runs (only the extra rows)")
    p.add_argument("--no-contention", action="store_true")
    p.add_argument("--step-reps", type=int, default=5)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    quick = dict(tasks=["rnnlg.rest", "rnnlg.hotel"], train=40, test=12, epochs=1)
    full = dict(tasks=["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"], train=200, test=40, epochs=2)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("e2e: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    precisions = {"both": [False, True], "default": [False], "fp32": [True]}[args.precision or ("both" if cuda else "default")]
    strategies = [] if args.no_runs else args.strategies or STRATEGIES + (["lll+seqkd"] if args.seqkd else [])
    kernels = {"both": [True, False], "on": [True], "off": [False]}[args.kernels]
    logging.getLogger("l2kd").setLevel(logging.WARNING)
    from l2kd.runtime import setup_console_logging

    setup_console_logging(quiet=True)
    scratch = tempfile.mkdtemp(prefix="e2e-model-")
    try:
        args.model_dir = small_random_model(scratch) if args.model == SMALL_RANDOM else args.model
        return _run_all(args, cuda, precisions, strategies, kernels)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_all(args, cuda: bool, precisions, strategies, kernels) -> int:
    runs, rows, split_rows = [], [], []
    for use_kernels in kernels:
        for s in strategies:
            for fp32 in precisions:
                r = run_one(s, use_kernels, args, fp32)
                runs.append(r)
                rows += _phase_rows(r, cuda)
                split_rows += _split_rows(r)
                print(f"{s} kernels={'on' if use_kernels else 'off'}{' fp32' if fp32 and cuda else ''}: "
                      f"{r['wall_s']:.1f} s, largest phase {r['largest_phase']}, load {r['load_after'][0]:.1f}"
                      + (f", not instrumented: {', '.join(r['not_instrumented'])}" if r.get("not_instrumented") else ""),
                      flush=True)
    if runs:
        print_table(rows, COLUMNS[:2] + ["precision"] + COLUMNS[2:] if cuda else COLUMNS)
        print("\ntraining step split (per student step)")
        print_table(split_rows, SPLIT_COLUMNS if cuda else SPLIT_COLUMNS[:-1])
    for r in runs:
        if r["written_mb_per_epoch"] is not None:
            print(f"{r['run']} kernels={'on' if r['kernels'] else 'off'}: {r['written_mb_per_epoch']:.1f} MB written "
                  f"per epoch ({r['train_written_mb']:.1f} MB while training)")
    extra: List[Dict[str, object]] = precision_ratio(runs)
    for x in extra:
        print(f"fp32 / default precision, {x['strategy']}: train steps {x['train_step_fp32_over_default']:.2f}x, "
              f"wall {x['wall_fp32_over_default']:.2f}x")
    if args.dispatch_steps > 0:
        d = dispatch_counts(args, args.dispatch_steps)
        extra.append(d)
        print(f"dispatch: {d['ops_per_step']:.0f} ATen ops and {d['host_reads_per_step']:.2f} host reads per optimizer "
              f"step ({d['steps']} lll steps, {d['device']})")
    if args.startup_reps > 0:
        st = startup(args, args.startup_reps)
        extra.append(st)
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(st["import_by_package_s"].items())[:4])
        print(f"startup: import l2kd.cli.train {st['import_s']:.2f} s (self time by package: {top}); one-step run: "
              f"first log line {st['first_log_line_s'] or float('nan'):.2f} s, wall {st['one_step_wall_s']:.2f} s "
              f"(best of {st['reps']})")
    if not cuda and runs:
        extra.append(wordkd_step_ratio(args.step_reps))
        print(f"\nWord-KD step / lll step: {extra[-1]['ratio']:.2f}x ({extra[-1]['word_kd_step_ms']:.0f} ms vs "
              f"{extra[-1]['lll_step_ms']:.0f} ms)")
    if not args.no_contention and not cuda and runs:
        idle = next((r["wall_s"] for r in runs if r["run"] == "lll" and r["kernels"]), None)
        c = contention(args, idle)
        extra.append(c)
        print(f"contention: lll with 2 busy competitors {c['busy_wall_s']:.1f} s vs idle {c['idle_wall_s']:.1f} s: "
              f"{c['slowdown']:.2f}x slower (load {c['load_during'][0]:.1f}, {c['threads']} threads, "
              f"OMP_WAIT_POLICY={c['omp_wait_policy']})")
    device = torch.device(args.device)
    path = write_results("e2e", device, runs + extra,
                         {"quick": args.quick, "tasks": args.tasks, "train": args.train, "test": args.test,
                          "epochs": args.epochs, "strategies": strategies, "threads": torch.get_num_threads(),
                          "thread_policy": THREADS, "load_start": os.getloadavg(), "device": args.device,
                          "model": args.model or "demo default",
                          "precisions": ["fp32" if f else "default" for f in precisions],
                          "torch_compile": args.torch_compile},
                         args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
