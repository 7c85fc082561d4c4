"""Probes that set up the study from the base model itself, measured before the study runs.

* :func:`forgetting_probe`: finetune on ordered task pairs (A then B) and measure how much
  learning B lowers the score on A. A sequence of tasks that transfer forward has nothing for
  replay or distillation to protect, so :func:`choose_sequence` picks the sequence whose
  consecutive pairs forget most.
* :func:`parse_rate_probe`: LAMOL on one task for several epochs, then from the model of every
  epoch as many pseudo-samples as replay would generate, and the share of them that parse
  (``__gen__ context question __ans__ answer``). A pretrained model keeps writing its own prose
  after ``__gen__`` until it has learnt the format; replay does nothing before that.
  :func:`epochs_for_parse_rate` reads the shortest training that parses half of them.

Both write their result file after every measurement and skip what a file already holds, so
an interrupted probe continues where it stopped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from l2kd.checkpoint import load_task_model
from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import pseudo_from_ids
from l2kd.evaluate import evaluate_run
from l2kd.generation import generate
from l2kd.io_utils import atomic_write_json, atomic_write_text
from l2kd.layout import run_dir_of, saved_epochs, task_dir
from l2kd.loop import train_sequence
from l2kd.model import context_length, model_from_task_dir, resize_for_tokenizer
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

FORGETTING_FILE = "forgetting_probe.json"
PARSE_FILE = "parse_rate_probe.json"
PARSE_TARGET = 0.5  # the share of pseudo-samples that must parse for replay to act
LM_LAMBDA = TrainConfig.__dataclass_fields__["lm_lambda"].default  # the original's 0.25
# settings recorded (in probe files and study cells) only since their flags exist: older records had these
RECORD_DEFAULTS = {"lm_lambda": LM_LAMBDA, "bf16_cpu": False}


def with_record_defaults(record: dict) -> dict:
    """``record`` with the settings it predates filled in from :data:`RECORD_DEFAULTS`."""
    return {**RECORD_DEFAULTS, **record}


def _base_cfg(args: argparse.Namespace, tasks: Sequence[str], seq_type: str, root: str, epochs: int,
              seed: int) -> TrainConfig:
    return TrainConfig(
        tasks=tuple(tasks), data_dir=args.data_dir, model_name=args.model_name, model_dir_root=root,
        seq_train_type=seq_type, seed=seed, learning_rate=args.lr, train_batch_size=args.batch,
        n_train_epochs=epochs, max_train_examples=args.train, max_test_examples=args.test,
        gen_lm_sample_percentage=args.pct, max_gen_len=args.max_gen_len, qa_sampling=SamplingConfig(top_k=1),
        lm_sampling=SamplingConfig(top_k=20), lm_lambda=args.lm_lambda, logging_steps=10**9, quiet=args.quiet,
        device=args.device, bf16_cpu=args.bf16_cpu)


def _load(path: str, key: str) -> Dict[str, dict]:
    try:
        with open(path) as f:
            return {r[key]: r for r in json.load(f)["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def parse_pairs(specs: Sequence[str]) -> List[Tuple[str, str]]:
    """``A:B`` strings -> ordered pairs (an error names a malformed one)."""
    out = []
    for s in specs:
        a, sep, b = s.partition(":")
        if not sep or not a or not b or a == b:
            raise ValueError(f"--probe_pairs: {s!r} is not FIRST:SECOND with two different tasks")
        out.append((a, b))
    return out


def forgetting_probe(args: argparse.Namespace, pairs: Sequence[Tuple[str, str]]) -> Dict[str, object]:
    """Finetune A then B for every pair; record the score on A after A and after B (forgetting =
    the drop), the score on B, and the wall time. Results go to ``<out>/forgetting_probe.json``."""
    path = os.path.join(args.out, FORGETTING_FILE)
    done = _load(path, "pair")
    root = os.path.join(args.out, "probe_forgetting")
    for a, b in pairs:
        key = f"{a}:{b}"
        if key in done:
            continue
        cfg = _base_cfg(args, (a, b), "finetune", root, args.epochs, args.probe_seed)
        print(f"\n[forgetting probe] finetune {a} -> {b}", flush=True)
        t0 = time.time()
        train_sequence(cfg)
        res = evaluate_run(cfg, quiet=args.quiet)
        r = res["matrix"]
        done[key] = {"pair": key, "first": a, "second": b, "first_after_first": r[0][0],
                     "first_after_second": r[1][0], "second_after_second": r[1][1],
                     "forgetting": r[0][0] - r[1][0], "seconds": time.time() - t0, "run_dir": run_dir_of(cfg)}
        print(f"  {a}: {r[0][0]:.1f} after itself, {r[1][0]:.1f} after {b} (forgetting {r[0][0] - r[1][0]:.1f}); "
              f"{b}: {r[1][1]:.1f}", flush=True)
        _write_probe(path, args, list(done.values()))
        atomic_write_text(os.path.join(args.out, "forgetting_probe.md"), forgetting_markdown(list(done.values()), args))
        if args.prune_models:
            prune_run(run_dir_of(cfg))
    out = {"results": [done[f"{a}:{b}"] for a, b in pairs if f"{a}:{b}" in done]}
    atomic_write_text(os.path.join(args.out, "forgetting_probe.md"), forgetting_markdown(out["results"], args))
    return out


def _write_probe(path: str, args: argparse.Namespace, results: List[dict]) -> None:
    atomic_write_json(path, {"model_name": args.model_name, "train": args.train, "test": args.test,
                             "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "seed": args.probe_seed,
                             "results": results})


def forgetting_markdown(results: List[dict], args: argparse.Namespace) -> str:
    lines = [f"Finetuning on ordered pairs from {args.model_name} ({args.train} examples x {args.epochs} epochs "
             f"per task, lr {args.lr:g}, batch {args.batch}, {args.test} test examples, seed {args.probe_seed}):", "",
             "| first -> second | first after first | first after second | forgetting | second | wall s |",
             "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: -r["forgetting"]):
        lines.append(f"| {r['first']} -> {r['second']} | {r['first_after_first']:.1f} | "
                     f"{r['first_after_second']:.1f} | {r['forgetting']:.1f} | {r['second_after_second']:.1f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def choose_sequence(results: Sequence[dict], length: int = 3) -> Tuple[Tuple[str, ...], float]:
    """The sequence of ``length`` distinct tasks whose consecutive pairs were all measured and
    forget most on average (ties: the first found); returns it with that mean."""
    forget = {(r["first"], r["second"]): r["forgetting"] for r in results}
    tasks = sorted({t for p in forget for t in p})
    best: Optional[Tuple[Tuple[str, ...], float]] = None
    for seq in itertools.permutations(tasks, length):
        links = list(zip(seq, seq[1:]))
        if all(p in forget for p in links):
            mean = sum(forget[p] for p in links) / len(links)
            if best is None or mean > best[1]:
                best = (seq, mean)
    if best is None:
        raise ValueError(f"the forgetting probe measured no chain of {length} tasks (pairs: "
                         f"{', '.join(f'{a}:{b}' for a, b in forget) or 'none'}); probe more pairs")
    return best


def parse_rate_probe(args: argparse.Namespace, task: str, epochs: int, n_samples: int) -> Dict[str, object]:
    """LAMOL on ``task`` alone for ``epochs`` epochs (one model file per epoch), then
    ``n_samples`` pseudo-samples from every epoch's model with the study's sampling; records the
    share that parse per epoch (and per optimizer step count) in ``<out>/parse_rate_probe.json``."""
    path = os.path.join(args.out, PARSE_FILE)
    done = _load(path, "epoch")
    if done:
        with open(path) as f:
            recorded = json.load(f)
        settings = {"model_name": args.model_name, "task": task, "train": args.train, "lr": args.lr,
                    "batch": args.batch, "lm_lambda": args.lm_lambda, "bf16_cpu": args.bf16_cpu}
        recorded = with_record_defaults(recorded)
        differ = [k for k, v in settings.items() if recorded.get(k) != v]
        if differ:
            raise SystemExit(f"--probe parse_rate: {path} holds a probe with other settings ({', '.join(differ)}); "
                             "use another --out, or move that file away")
    cfg = _base_cfg(args, (task,), "lll", os.path.join(args.out, "probe_parse"), epochs, args.probe_seed)
    tdir = task_dir(run_dir_of(cfg), "lll", task)
    if any(str(e) not in done for e in range(1, epochs + 1)):
        print(f"\n[parse-rate probe] lll on {task}, {epochs} epochs", flush=True)
        t0 = time.time()
        summary = train_sequence(cfg)
        steps = summary["tasks"][task]["steps"]
        tok = load_base_tokenizer(cfg.model_name)
        ids = add_special_tokens(tok, [task], cfg.add_task_tokens, cfg.use_sep)
        model = model_from_task_dir(tdir)
        resize_for_tokenizer(model, len(tok))
        max_len = context_length(model)
        for ep in saved_epochs(tdir):
            if str(ep) in done:
                continue
            load_task_model(model, tdir, f"model-{ep}")
            model.eval()
            gen = torch.Generator().manual_seed(args.probe_seed)
            prompts = [[ids.gen[task]] for _ in range(n_samples)]
            new = generate(model, prompts, [min(max_len, args.max_gen_len) - 1] * n_samples, ids.eos, ids.pad,
                           cfg.lm_sampling, gen)
            seqs = [p + n for p, n in zip(prompts, new)]
            parsed, dropped = pseudo_from_ids(seqs, ids, {ids.gen[task]: task}, max_len)
            done[str(ep)] = {"epoch": str(ep), "steps": steps * ep // epochs, "generated": len(seqs),
                             "parsed": len(parsed), "parse_rate": len(parsed) / len(seqs),
                             "examples": [tok.decode(s) for s in seqs[:3]]}
            print(f"  epoch {ep} ({done[str(ep)]['steps']} steps): {len(parsed)} of {len(seqs)} parsed", flush=True)
            atomic_write_json(path, {"model_name": args.model_name, "task": task, "epochs": epochs,
                                     "train": args.train, "lr": args.lr, "batch": args.batch, "pct": args.pct,
                                     "lm_lambda": args.lm_lambda, "bf16_cpu": args.bf16_cpu,
                                     "seconds": time.time() - t0,
                                     "results": list(done.values())})
        if args.prune_models:
            prune_run(run_dir_of(cfg))
    with open(path) as f:
        out = json.load(f)
    atomic_write_text(os.path.join(args.out, "parse_rate_probe.md"), parse_markdown(out))
    return out


def parse_markdown(probe: dict) -> str:
    lines = [f"LAMOL on {probe['task']} alone from {probe['model_name']} ({probe['train']} examples, lr "
             f"{probe['lr']:g}, batch {probe['batch']}, LM loss weight {probe.get('lm_lambda', LM_LAMBDA):g}; "
             f"the schedule spans {probe['epochs']} epochs), pseudo-samples "
             "from the model after each epoch (an epoch before the last is read mid-schedule and says more "
             "than a schedule that ends there reaches):", "", "| epoch | steps | parsed | rate |", "|---|---|---|---|"]
    for r in sorted(probe["results"], key=lambda r: int(r["epoch"])):
        lines.append(f"| {r['epoch']} | {r['steps']} | {r['parsed']} / {r['generated']} | {100 * r['parse_rate']:.0f}% |")
    return "\n".join(lines) + "\n"


def probed_schedule(probe: dict) -> int:
    """The number of epochs the probe's learning-rate schedule spanned."""
    return int(probe.get("epochs") or max(int(r["epoch"]) for r in probe["results"]))


def epochs_for_parse_rate(probe: dict, target: float = PARSE_TARGET) -> Optional[int]:
    """The probe's schedule length when the model at its *end* parses at least ``target`` of its
    pseudo-samples, else None. An earlier epoch of the probe is not a shorter schedule: it was
    read while the learning rate was still high, and a schedule that ends there decays sooner
    (SmolLM2 on e2enlg parsed 24 of 32 after epoch 3 of a 6-epoch schedule, 0 of 32 at the end
    of a 3-epoch one), so a shorter length needs a probe of its own."""
    last = probed_schedule(probe)
    final = [r for r in probe.get("results", []) if int(r["epoch"]) == last]
    return last if final and final[0]["parse_rate"] >= target else None


HEAVY = ("model-finish", "model.safetensors")


def prune_run(rdir: str, keep_finish: bool = False) -> int:
    """Delete the model weights of a finished, tested run folder (every ``model-<epoch>``,
    ``model-finish`` unless ``keep_finish``, and the ``save_pretrained`` weights), keeping its
    records, scores and decodes; returns the bytes freed. A 135 M-parameter base writes 1.6 GB
    per task otherwise."""
    freed = 0
    for d, _, files in os.walk(rdir):
        for f in files:
            epoch_file = f.startswith("model-") and f[len("model-"):].isdigit()
            if epoch_file or (f in HEAVY and not (keep_finish and f == "model-finish")):
                p = os.path.join(d, f)
                freed += os.path.getsize(p)
                os.remove(p)
    return freed
