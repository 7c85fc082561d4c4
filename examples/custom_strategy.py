"""A new continual-learning method in one user file: an L2 pull towards the previous task's weights.

Run it through the CLI (no package edit needed)::

    python -m l2kd.train --custom_strategy examples/custom_strategy.py:L2Pull --tasks rnnlg.rest rnnlg.tv \\
        --data_dir DATA --model_dir_root models --model_name tiny-gpt2 --learning_rate 1e-3
    python -m l2kd.test  --custom_strategy examples/custom_strategy.py:L2Pull ...same flags...

or through the API::

    from l2kd import TrainConfig, train_sequence
    train_sequence(TrainConfig(...), strategy=L2Pull(strength=0.1))

Outputs go to ``<root>/<model>/<strategy name>/...`` (here ``l2_pull``).
"""
from __future__ import annotations

from typing import Dict

import torch

from l2kd.config import StrategyTraits
from l2kd.strategies import Strategy


class L2Pull(Strategy):
    """After every optimizer step, move each weight a fraction ``strength * lr`` back towards its
    value at the end of the previous task (a decoupled L2 penalty; plain QA loss otherwise)."""

    name = "l2_pull"
    # What the rest of l2kd asks of a method: no replay, a plain per-task stage, and the
    # optional flags it works with (Word-KD / Seq-KD can wrap it, --unbound chunks it).
    traits = StrategyTraits(joint=False, replays=False, memory_factor=0.58, pct_in_folder=False,
                            accepts=frozenset({"distil", "seq_distil", "unbound"}))

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength
        self.anchor: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def after_step(self, ctx, model, lr: float) -> None:
        for n, p in model.named_parameters():
            a = self.anchor.get(n)
            if a is not None and a.shape == p.shape:
                p.add_(a - p, alpha=min(1.0, lr * self.strength))

    @torch.no_grad()
    def after_task(self, ctx, model) -> Dict[str, float]:
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        # a returned report is filed in the task summary (l2kd_task.json) under this strategy's name
        return {"l2_pull_anchor_params": float(sum(a.numel() for a in self.anchor.values()))}

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = dict(state["anchor"])
