"""Command-line flags: every flag of L2KD's settings.py (a superset of LAMOL's), same names,
types, choices and defaults, plus a few l2kd options (clearly grouped), and the output layout.

The parser is generated from the metadata of :class:`~l2kd.config.TrainConfig`'s fields (and
of :class:`SamplingConfig`'s, once per ``_lm`` / ``_qa`` suffix), plus the few flags that
only the command line reads (:class:`CommandLineOnly`). :func:`config_from_args` turns the
namespace into the frozen config, which validates itself, so the command line and the
library refuse the same things with the same messages. No module-level ``args``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from l2kd.bases import BASES
from l2kd.config import (RUNTIME, ConfigError, SamplingConfig, TrainConfig, _upsample, flag, strategy_names)
from l2kd.layout import run_dir, task_dir

__all__ = ["build_parser", "parse_args", "validate", "config_from_args", "flag_notes", "upsample_rates", "run_dir",
           "task_dir", "CommandLineOnly"]
BUILTIN_MODELS = ["gpt2", "openai-gpt", "gpt2-medium", "tiny-gpt2"]
SAMPLING_SUFFIXES = {"lm_sampling": "lm", "qa_sampling": "qa"}
upsample_rates = _upsample


def _model_name(value: str) -> str:
    if value in BUILTIN_MODELS or value in BASES or os.path.isdir(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid model name {value!r}: choose from {', '.join(BUILTIN_MODELS + sorted(BASES))} or give a local "
        "model directory"
    )


@dataclass(frozen=True)
class CommandLineOnly:
    """The flags only the command line reads (they change nothing a config describes)."""

    lr_schedule: str = flag("warmup_linear", "accepted and ignored, as the original (--decay_style picks the "
                                             "schedule)", RUNTIME, cli={"type": str})
    n_gpus: int = flag(1, "number of processes/GPUs: > 1 relaunches this command under torchrun, one rank per "
                          "GPU", RUNTIME)
    n_workers: int = flag(4, "accepted for the original's command lines; l2kd tokenizes in the main process",
                          RUNTIME)
    custom_strategy: str = flag("", "a user strategy, FILE.py:Class or package.module:Class (a "
                                    "l2kd.strategies.Strategy subclass); its `name` replaces --seq_train_type in "
                                    "the output folder", RUNTIME, original=False)


def _argument(f: dataclasses.Field, dest: str, default: Any) -> Tuple[str, Dict[str, Any]]:
    """(flag, add_argument keywords) of a field with flag metadata."""
    meta = f.metadata
    kw: Dict[str, Any] = {"help": meta["help"] or None}
    cli = dict(meta["cli"])
    if cli.get("action") is None and isinstance(default, bool) and "type" not in cli:
        kw["action"] = "store_true"
    elif cli.get("action") is None:
        kw["type"] = cli.pop("type", type(default) if default is not None and not isinstance(default, tuple)
                             else str)
        kw["default"] = default
    if "default" in cli:
        kw["default"] = cli.pop("default")
    kw.update(cli)
    if kw.get("action") == "store_true":
        kw.pop("type", None), kw.pop("default", None)
    if kw.get("required"):
        kw.pop("default", None)
    if dest == "model_name":
        kw["type"] = _model_name
    if dest == "seq_train_type":
        kw["choices"] = strategy_names(builtin_only=True)
    return f"--{dest}", kw


def _dest(f: dataclasses.Field, name: str) -> str:
    """The namespace attribute of a field's flag (``--no_kernels`` -> ``no_kernels``)."""
    return f.metadata["flag"][2:] if f.metadata.get("flag") else name


def _flag_fields() -> List[Tuple[str, dataclasses.Field, Any]]:
    """(dest, field, default) of every flag."""
    out = []
    for cls in (TrainConfig, CommandLineOnly):
        for f in dataclasses.fields(cls):
            if f.name in SAMPLING_SUFFIXES:
                for g in dataclasses.fields(SamplingConfig):
                    if "help" in g.metadata:
                        out.append((f"{g.name}_{SAMPLING_SUFFIXES[f.name]}", g, g.default))
            elif "help" in f.metadata:
                out.append((_dest(f, f.name), f, f.default))
    return out


def build_parser(prog: str = "l2kd.train") -> argparse.ArgumentParser:
    """The parser shared by ``python -m l2kd.train`` and ``python -m l2kd.test``."""
    p = argparse.ArgumentParser(prog=prog, description="LAMOL / L2KD lifelong language learning (l2kd)")
    original = p.add_argument_group("the original's flags (L2KD's settings.py: same names, types and defaults)")
    added = p.add_argument_group("l2kd additions")
    for dest, f, default in sorted(_flag_fields(), key=lambda x: x[0]):
        name, kw = _argument(f, dest, None if default is dataclasses.MISSING else default)
        (original if f.metadata["original"] else added).add_argument(name, dest=dest, **kw)
    return p


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Refuse what :class:`~l2kd.config.TrainConfig` refuses (same messages) and missing or
    unwritable folders (:meth:`~l2kd.config.TrainConfig.path_problems`, the one path check)."""
    problems = []
    try:
        problems += config_from_args(args).path_problems()
    except ConfigError as exc:
        problems.append(str(exc))
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


def _value(f: dataclasses.Field, args: argparse.Namespace, dest: str) -> Any:
    value = getattr(args, dest)
    convert = f.metadata.get("convert")
    return convert(value) if convert else value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn a parsed command line into a (self-validating) :class:`TrainConfig`, field by field
    from the same metadata the parser was built from."""
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SAMPLING_SUFFIXES:
            suffix = SAMPLING_SUFFIXES[f.name]
            kw[f.name] = SamplingConfig(**{g.name: _value(g, args, f"{g.name}_{suffix}")
                                           for g in dataclasses.fields(SamplingConfig) if "help" in g.metadata})
        elif "help" in f.metadata:
            kw[f.name] = _value(f, args, _dest(f, f.name))
    if kw["debug"]:  # the original's --debug logs every step
        kw["logging_steps"] = 1
    return TrainConfig(**kw)


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
