"""Lifelong-learning strategies, one file each. A class with a ``name`` of its own registers
itself when defined (:func:`l2kd.config.register_strategy`); ``make_strategy`` builds the one
``--seq_train_type`` names from that registry, and wraps it for ``--seq_distil`` / ``--distil``.
Every module of this package is imported here, so a new method is one new file."""
from __future__ import annotations

import importlib
import pkgutil

from l2kd.config import TrainConfig, is_builtin, strategy_class, strategy_names
from l2kd.strategies.base import (HOOKS, ONE_PROCESS, Report, Sequential, Shares, StepSetup, Strategy, TaskContext,
                                  TaskStart, Wrapper, edits_gradients)

for _mod in pkgutil.iter_modules(__path__):  # each built-in strategy registers as its module runs
    importlib.import_module(f"{__name__}.{_mod.name}")

from l2kd.strategies.ewc import EWC  # noqa: E402
from l2kd.strategies.gem import GEM  # noqa: E402
from l2kd.strategies.lamol import LAMOL, MultiLM  # noqa: E402
from l2kd.strategies.mas import MAS  # noqa: E402
from l2kd.strategies.seq_kd import SeqKD  # noqa: E402
from l2kd.strategies.word_kd import WordKD  # noqa: E402


def make_strategy(cfg: TrainConfig) -> Strategy:
    """The strategy for ``cfg.seq_train_type``: Seq-KD around it with ``--seq_distil``, and
    Word-KD outermost with ``--distil`` (both: Seq-KD soft)."""
    cls = strategy_class(cfg.seq_train_type)
    if cls is None:
        raise ValueError(f"unknown --seq_train_type {cfg.seq_train_type!r} (registered: {', '.join(strategy_names())})")
    strategy = cls()
    if cfg.seq_distil:
        strategy = SeqKD(strategy)
    if cfg.distil:
        strategy = WordKD(strategy)
    return strategy


__all__ = ["Strategy", "Sequential", "Wrapper", "HOOKS", "TaskContext", "TaskStart", "StepSetup", "Shares",
           "ONE_PROCESS", "Report", "LAMOL", "MultiLM", "WordKD", "SeqKD", "EWC", "MAS", "GEM", "make_strategy",
           "load_custom_strategy", "edits_gradients"]


def load_custom_strategy(spec: str) -> Strategy:
    """Instantiate ``FILE.py:Class`` or ``package.module:Class`` (a :class:`Strategy` subclass)."""
    import importlib.util
    import os

    if ":" not in spec:
        raise ValueError(f"--custom_strategy {spec!r}: expected FILE.py:Class or module:Class")
    where, cls_name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise FileNotFoundError(f"--custom_strategy: no such file {where}")
        mod_spec = importlib.util.spec_from_file_location(f"l2kd_user_{abs(hash(where))}", where)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"--custom_strategy {spec!r}: {cls_name} is not a l2kd.strategies.Strategy subclass")
    check_custom_name(cls, spec)
    return cls()


def check_custom_name(cls: type, spec: str) -> None:
    """A user strategy must name itself: the name is its output folder, and an inherited one
    (``finetune``, ``lll``...) would write into, and resume from, a built-in strategy's runs."""
    import re

    own = next((c for c in cls.__mro__ if "name" in c.__dict__), None)
    name = getattr(cls, "name", "")
    held = strategy_class(name) if isinstance(name, str) and name else None
    if own is None or is_builtin(own) or (held is not None and held is not cls and is_builtin(held)):
        raise ValueError(f"--custom_strategy {spec!r}: {cls.__name__} must set its own class attribute `name` "
                         f"(the output folder; got {name!r}, which is a built-in strategy's)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"--custom_strategy {spec!r}: name {name!r} is not a valid folder name "
                         "(letters, digits, _ . + -)")
