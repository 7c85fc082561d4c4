"""Learning-rate schedule as the original's AnnealingLR (L2KD utils.py, from Megatron).

The original calls ``scheduler.step()`` once per *example*, so its clock counts examples:
warmup = ``int(n_warmup_ratio * N)`` and end = ``N * epochs`` for ``N`` training examples
(pseudo-samples included). Linear decay is ``lr * (end - (n - warmup)) / end``, which ends at
``lr * warmup / end`` rather than 0, and the very first update has lr 0 (n = 0 < warmup).
That is reproduced by default; ``textbook=True`` counts optimizer steps and decays to 0.
"""
from __future__ import annotations

import math

DECAY_STYLES = ("linear", "cos", "constant")  # the styles annealing_lr implements


def annealing_lr(n: float, start_lr: float, warmup: float, end: float, style: str = "linear") -> float:
    """Learning rate after ``n`` clock ticks (examples, or steps in the textbook variant)."""
    if warmup > 0 and n <= warmup:
        return start_lr * n / warmup
    if style == "linear":
        return max(start_lr * (end - (n - warmup)) / end, 0.0)
    if style == "cos":
        return start_lr / 2.0 * (math.cos(math.pi * (n - warmup) / end) + 1)
    if style == "constant":
        return start_lr
    raise ValueError(f"--decay_style {style!r} is not supported ({', '.join(DECAY_STYLES)}; the original raises on "
                     "exp)")


class LRSchedule:
    """Sets the optimizer's lr before each step from the examples (or steps) seen so far."""

    def __init__(self, optimizer, start_lr: float, n_examples: int, epochs: int, n_steps: int,
                 warmup_ratio: float, style: str = "linear", textbook: bool = False) -> None:
        self.optimizer, self.start_lr, self.style, self.textbook = optimizer, start_lr, style, textbook
        if textbook:
            self.warmup, self.end = int(warmup_ratio * n_steps), max(n_steps, 1)
        else:
            self.warmup, self.end = int(warmup_ratio * n_examples), max(n_examples * epochs, 1)
        self.clock = 0

    def lr(self) -> float:
        if self.textbook and self.style == "linear":
            if self.warmup > 0 and self.clock < self.warmup:
                return self.start_lr * (self.clock + 1) / self.warmup
            return self.start_lr * max(self.end - self.clock, 0) / max(self.end - self.warmup, 1)
        return annealing_lr(self.clock, self.start_lr, self.warmup, self.end, self.style)

    def apply(self) -> float:
        """Write the current lr into every param group and return it."""
        lr = self.lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def advance(self, n_examples: int) -> None:
        """Move the clock after an optimizer step on ``n_examples`` examples."""
        self.clock += 1 if self.textbook else n_examples

    def state_dict(self) -> dict:
        return {"clock": self.clock, "warmup": self.warmup, "end": self.end}

    def load_state_dict(self, state: dict) -> None:
        self.clock = int(state["clock"])
