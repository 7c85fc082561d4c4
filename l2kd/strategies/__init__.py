"""Lifelong-learning strategies, one file each; ``make_strategy`` maps ``--seq_train_type``."""
from __future__ import annotations

from l2kd.config import TrainConfig
from l2kd.strategies.base import Sequential, Strategy, TaskContext
from l2kd.strategies.ewc import EWC
from l2kd.strategies.gem import GEM
from l2kd.strategies.lamol import LAMOL, MultiLM
from l2kd.strategies.mas import MAS
from l2kd.strategies.word_kd import WordKD


def make_strategy(cfg: TrainConfig) -> Strategy:
    """The strategy for ``cfg.seq_train_type``, wrapped in Word-KD with ``--distil``."""
    base = _base_strategy(cfg)
    return WordKD(base) if cfg.distil else base


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


__all__ = ["Strategy", "Sequential", "TaskContext", "LAMOL", "MultiLM", "WordKD", "EWC", "MAS", "GEM", "make_strategy"]


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
    return cls()
