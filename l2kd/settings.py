"""Command-line flags: every flag of L2KD's settings.py (a superset of LAMOL's), same names,
types, choices and defaults, plus a few l2kd options (clearly grouped), and the output layout.

The parser only parses and validates; :func:`to_train_config` turns the namespace into the
frozen dataclasses the library takes. No module-level ``args``.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

from l2kd.data.tasks import TASKS

SEQ_TRAIN_TYPES = ["lll", "finetune", "multitask", "multilm", "mas", "ewc", "gem"]
BUILTIN_MODELS = ["gpt2", "openai-gpt", "gpt2-medium", "tiny-gpt2"]


class FlagError(SystemExit):
    """Raised (as a clean exit with status 2) for a bad or contradictory flag."""


def _model_name(value: str) -> str:
    if value in BUILTIN_MODELS or os.path.isdir(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid model name {value!r}: choose from {', '.join(BUILTIN_MODELS)} or give a local model directory"
    )


def build_parser(prog: str = "l2kd.train") -> argparse.ArgumentParser:
    """The parser shared by ``python -m l2kd.train`` and ``python -m l2kd.test``."""
    p = argparse.ArgumentParser(prog=prog, description="LAMOL / L2KD lifelong language learning (l2kd)")
    a = p.add_argument
    # --- the original's 51 flags (K:settings.py), same names, types and defaults ---
    a("--adam_epsilon", default=1e-4, type=float)
    a("--add_task_tokens", action="store_true")
    a("--data_dir", type=str, required=True)
    a("--debug", action="store_true")
    a("--decay_style", type=str, default="linear", choices=["linear", "cos", "constant", "exp"])
    a("--distil", action="store_true")
    a("--dynamic_epochs", action="store_true")
    a("--extra_e2e", action="store_true")
    a("--fp32", action="store_true")
    a("--gen_lm_sample_percentage", type=float, default=0.05)
    a("--learning_rate", type=float, default=6.25e-5)
    a("--lm_lambda", type=float, default=0.25)
    a("--logging_steps", type=int, default=1000)
    a("--lr_schedule", type=str, default="warmup_linear")
    a("--max_grad_norm", type=int, default=1)
    a("--max_n_epochs", type=int, default=9)
    a("--min_batch_size", type=int, default=4)
    a("--min_n_steps", type=int, default=1500)
    a("--model_dir_root", type=str, required=True)
    a("--model_name", type=_model_name, default="gpt2",
      help="gpt2 | openai-gpt | gpt2-medium | tiny-gpt2 (offline, random init) | a local model directory")
    a("--multitask_specific", action="store_true")
    a("--n_gpus", type=int, default=1)
    a("--n_train_epochs", type=int, default=9)
    a("--n_warmup_ratio", type=float, default=0.005)
    a("--n_workers", type=int, default=4)
    a("--qp_margin", type=float, default=0.5)
    a("--real_sample", action="store_true")
    a("--ref1", action="store_true")
    a("--reg_lambda", type=float, default=1.0)
    a("--round_robin", action="store_true")
    a("--seed", type=int, default=42)
    a("--seq_distil", action="store_true")
    a("--seq_train_type", type=str, default="lll", choices=SEQ_TRAIN_TYPES)
    a("--skip_tasks", nargs="+")
    a("--tasks", nargs="+", default=["squad2"])
    a("--temperature_kd", type=float, default=2.0)
    a("--temperature_lm", type=float, default=1.0)
    a("--temperature_qa", type=float, default=1.0)
    a("--test_all", action="store_true")
    a("--test_batch_size", type=int, default=0)
    a("--test_training_set", action="store_true")
    a("--tokens_weight", type=float, default=5)
    a("--top_k_lm", type=int, default=20)
    a("--top_k_qa", type=int, default=20)
    a("--top_p_lm", type=float, default=0.0)
    a("--top_p_qa", type=float, default=0.0)
    a("--train_batch_size", type=int, default=0)
    a("--unbound", type=int, default=0)
    a("--upsample_data", type=str, default=None)
    a("--use_sep", action="store_true")
    a("--weight_decay", type=float, default=0.01)
    # --- l2kd additions ---
    g = p.add_argument_group("l2kd additions")
    g.add_argument("--max_train_examples", type=int, default=0,
                   help="use only the first N training examples of each task (0 = all)")
    g.add_argument("--max_test_examples", type=int, default=0,
                   help="evaluate only the first N test examples of each task (0 = all)")
    g.add_argument("--max_gen_len", type=int, default=0,
                   help="cap on pseudo-sample length in tokens (0 = the model's context, as the original)")
    g.add_argument("--cpu_batch_tokens", type=int, default=2048,
                   help="token budget of a dynamic batch (--train_batch_size 0) on CPU")
    g.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--bf16_cpu", action="store_true", help="bf16 autocast on CPU (off by default)")
    g.add_argument("--textbook_schedule", action="store_true",
                   help="count the LR schedule in optimizer steps and decay to 0 (the original counts examples "
                        "and ends at lr*warmup/end)")
    g.add_argument("--no_decay_layernorm", action="store_true",
                   help="exclude GPT-2 LayerNorm weights from weight decay (the original decays them by a name "
                        "mismatch)")
    g.add_argument("--torch_adamw", action="store_true",
                   help="use torch.optim.AdamW (fused): bias correction inside the denominator, sqrt(v/(1-b2^t))+eps, "
                        "and weight decay before the step; by default l2kd uses the original's pytorch-transformers "
                        "1.2.0 AdamW, sqrt(v)+eps with step lr*sqrt(1-b2^t)/(1-b1^t) and weight decay after the step, "
                        "which differs a lot early in each task with --adam_epsilon 1e-4")
    g.add_argument("--no_kernels", action="store_true", help="use the pure-PyTorch reference ops")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--checkpoint_steps", type=int, default=500,
                   help="write the task's resumable checkpoint.pt every N optimizer steps (and at every epoch "
                        "end; only the latest is kept); 0 = epoch ends only")
    g.add_argument("--custom_strategy", type=str, default="",
                   help="a user strategy, FILE.py:Class or package.module:Class (a l2kd.strategies.Strategy "
                        "subclass); its `name` replaces --seq_train_type in the output folder")
    g.add_argument("--reg_anchor", choices=["initial", "previous"], default="initial",
                   help="EWC/MAS pull towards the weights before the first task (initial, as the original) or "
                        "after the previous task (previous, as the papers)")
    g.add_argument("--teacher_dir", type=str, default="",
                   help="folder of the L2KD teachers (<dir>/<task>/model-finish); default: search where the "
                        "original looks, then under --model_dir_root, and train missing teachers")
    g.add_argument("--teacher_n_train_epochs", type=int, default=0, help="teacher epochs (0 = --n_train_epochs)")
    g.add_argument("--teacher_learning_rate", type=float, default=0.0, help="teacher lr (0 = --learning_rate)")
    return p


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Reject unknown tasks, bad ranges and contradictory flags with a message naming the flag."""
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        parser.error(f"--tasks: unknown task(s) {', '.join(bad)}; valid tasks: {' '.join(TASKS)}")
    if len(set(args.tasks)) != len(args.tasks):
        parser.error(f"--tasks: a task appears twice in {' '.join(args.tasks)}")
    if args.skip_tasks:
        bad = [t for t in args.skip_tasks if t not in args.tasks]
        if bad:
            parser.error(f"--skip_tasks: {', '.join(bad)} not in --tasks")
    checks = [
        ("--gen_lm_sample_percentage", 0.0 <= args.gen_lm_sample_percentage <= 10.0, "must be in [0, 10]"),
        ("--learning_rate", args.learning_rate > 0, "must be > 0"),
        ("--adam_epsilon", args.adam_epsilon > 0, "must be > 0"),
        ("--lm_lambda", args.lm_lambda >= 0, "must be >= 0"),
        ("--n_train_epochs", args.n_train_epochs >= 1, "must be >= 1"),
        ("--max_n_epochs", args.max_n_epochs >= 1, "must be >= 1"),
        ("--n_warmup_ratio", 0.0 <= args.n_warmup_ratio < 1.0, "must be in [0, 1)"),
        ("--min_batch_size", args.min_batch_size >= 1, "must be >= 1"),
        ("--min_n_steps", args.min_n_steps >= 1, "must be >= 1"),
        ("--train_batch_size", args.train_batch_size >= 0, "must be >= 0 (0 = dynamic)"),
        ("--test_batch_size", args.test_batch_size >= 0, "must be >= 0 (0 = dynamic)"),
        ("--temperature_qa", args.temperature_qa > 0, "must be > 0"),
        ("--temperature_lm", args.temperature_lm > 0, "must be > 0"),
        ("--temperature_kd", args.temperature_kd > 0, "must be > 0"),
        ("--top_k_qa", args.top_k_qa >= 0, "must be >= 0 (0 = no top-k)"),
        ("--top_k_lm", args.top_k_lm >= 0, "must be >= 0 (0 = no top-k)"),
        ("--top_p_qa", 0.0 <= args.top_p_qa <= 1.0, "must be in [0, 1]"),
        ("--top_p_lm", 0.0 <= args.top_p_lm <= 1.0, "must be in [0, 1]"),
        ("--tokens_weight", args.tokens_weight > 0, "must be > 0"),
        ("--weight_decay", args.weight_decay >= 0, "must be >= 0"),
        ("--max_grad_norm", args.max_grad_norm >= 0, "must be >= 0"),
        ("--n_gpus", args.n_gpus >= 1, "must be >= 1"),
        ("--reg_lambda", args.reg_lambda >= 0, "must be >= 0"),
        ("--logging_steps", args.logging_steps >= 1, "must be >= 1"),
        ("--checkpoint_steps", args.checkpoint_steps >= 0, "must be >= 0"),
        ("--max_train_examples", args.max_train_examples >= 0, "must be >= 0"),
        ("--max_test_examples", args.max_test_examples >= 0, "must be >= 0"),
        ("--cpu_batch_tokens", args.cpu_batch_tokens >= 64, "must be >= 64"),
        ("--teacher_n_train_epochs", args.teacher_n_train_epochs >= 0, "must be >= 0"),
        ("--teacher_learning_rate", args.teacher_learning_rate >= 0, "must be >= 0"),
    ]
    for flag, ok, why in checks:
        if not ok:
            parser.error(f"{flag}: {why} (got {getattr(args, flag[2:])})")
    if args.real_sample and "lll" not in args.seq_train_type:
        parser.error("--real_sample only applies to --seq_train_type lll")
    if args.seq_train_type in ("multitask", "multilm") and (args.distil or args.seq_distil):
        parser.error(f"--distil/--seq_distil are not supported with --seq_train_type {args.seq_train_type}")
    if args.teacher_dir and not os.path.isdir(args.teacher_dir):
        parser.error(f"--teacher_dir: {args.teacher_dir!r} is not a directory")
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir: {args.data_dir!r} is not a directory")
    root = os.path.abspath(args.model_dir_root)
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        parser.error(f"--model_dir_root: {args.model_dir_root!r} cannot be created or written ({existing} is not a "
                     "writable directory)")
    if args.device != "auto" and not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device: expected auto, cpu, cuda or cuda:N (got {args.device!r})")
    return args


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = "l2kd.train") -> argparse.Namespace:
    """Parse and validate a LAMOL/L2KD command line."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    return validate(args, parser)


def run_dir(model_dir_root: str, model_name: str, seq_train_type: str, tasks: List[str],
            gen_lm_sample_percentage: float, seed: int) -> str:
    """The original's run folder: ``root/model/type/T1_T2.._<pct>_<seed>`` for lll types,
    else ``root/model/type/T1_T2.._seed_<seed>`` (K:settings.py:95-97)."""
    model_tag = os.path.basename(os.path.normpath(model_name)) if os.path.isdir(model_name) else model_name
    name = "_".join(tasks)
    if "lll" in seq_train_type:
        name = f"{name}_{float(gen_lm_sample_percentage)}_{seed}"
    else:
        name = f"{name}_seed_{seed}"
    return os.path.join(model_dir_root, model_tag, seq_train_type, name)


def task_dir(run_directory: str, seq_train_type: str, task: str) -> str:
    """Per-task folder; multitask and multilm write into the run folder itself."""
    if seq_train_type in ("multitask", "multilm"):
        return run_directory
    return os.path.join(run_directory, task)
