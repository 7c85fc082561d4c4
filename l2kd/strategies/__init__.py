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
