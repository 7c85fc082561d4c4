"""Every random-number state a run draws from, saved with each finished task so that a run
restarted after a finished task continues bit-identically (on CPU) to an uninterrupted one."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch


def capture_rng(rng: np.random.Generator, generator: torch.Generator) -> dict:
    """Global torch/CUDA/python/numpy states plus the loop's own ``rng`` and ``generator``."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
             "loop_rng": rng.bit_generator.state, "loop_generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict], rng: np.random.Generator, generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng` (no-op for ``None``)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    rng.bit_generator.state = state["loop_rng"]
    generator.set_state(state["loop_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
