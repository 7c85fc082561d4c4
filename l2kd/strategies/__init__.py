"""Lifelong-learning strategies, one file each; ``make_strategy`` maps ``--seq_train_type``."""
from __future__ import annotations

from l2kd.config import TrainConfig
from l2kd.strategies.base import HOOKS, Sequential, Strategy, TaskContext, Wrapper
from l2kd.strategies.ewc import EWC
from l2kd.strategies.gem import GEM
from l2kd.strategies.lamol import LAMOL, MultiLM
from l2kd.strategies.mas import MAS
from l2kd.strategies.seq_kd import SeqKD
from l2kd.strategies.word_kd import WordKD

BUILTIN_NAMES = frozenset({"lll", "multilm", "finetune", "multitask", "ewc", "mas", "gem"})


def make_strategy(cfg: TrainConfig) -> Strategy:
    """The strategy for ``cfg.seq_train_type``: Seq-KD around it with ``--seq_distil``, and
    Word-KD outermost with ``--distil`` (both: Seq-KD soft)."""
    strategy = _base_strategy(cfg)
    if cfg.seq_distil:
        strategy = SeqKD(strategy)
    if cfg.distil:
        strategy = WordKD(strategy)
    return strategy


def _base_strategy(cfg: TrainConfig) -> Strategy:
    t = cfg.seq_train_type
    if t == "lll":
        return LAMOL()
    if t == "multilm":
        return MultiLM()
    if t in ("finetune", "multitask"):
        return Sequential()
    if t == "ewc":
        return EWC()
    if t == "mas":
        return MAS()
    if t == "gem":
        return GEM()
    raise ValueError(f"unknown --seq_train_type {t!r}")


__all__ = ["Strategy", "Sequential", "Wrapper", "HOOKS", "TaskContext", "LAMOL", "MultiLM", "WordKD", "SeqKD", "EWC",
           "MAS", "GEM", "make_strategy", "load_custom_strategy"]


def load_custom_strategy(spec: str) -> Strategy:
    """Instantiate ``FILE.py:Class`` or ``package.module:Class`` (a :class:`Strategy` subclass)."""
    import importlib
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
    if own is None or own.__module__.startswith("l2kd.strategies") or name in BUILTIN_NAMES:
        raise ValueError(f"--custom_strategy {spec!r}: {cls.__name__} must set its own class attribute `name` "
                         f"(the output folder; got {name!r}, which is a built-in strategy's)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"--custom_strategy {spec!r}: name {name!r} is not a valid folder name "
                         "(letters, digits, _ . + -)")
