"""Batching: fixed-size batches, or the original's dynamic batches packed by a length budget."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from l2kd.data.qa_format import Encoded

LENGTH_EXPONENT = 1.163  # the original's memory model: cost of a batch = count * max_len ** 1.163


def train_batches(examples: Sequence[Encoded], rng: np.random.Generator, batch_size: int,
                  budget: float, max_count: int, shuffle: bool = True) -> List[List[int]]:
    """Indices of one epoch's batches in a random order (np permutation, as the original), or in
    data order when not ``shuffle`` (the original's ``--debug`` / ``--round_robin``).

    ``batch_size > 0``: fixed size. Else add examples while ``count * max_len**1.163 <= budget``,
    capped at ``max_count`` examples (the original's ``max(N // min_n_steps, min_batch_size)``).
    """
    order = rng.permutation(len(examples)) if shuffle else np.arange(len(examples))
    if batch_size > 0:
        return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return pack_by_budget([int(i) for i in order], [examples[i].lm_length for i in order], budget, max_count)


def pack_by_budget(indices: List[int], lengths: List[int], budget: float, max_count: int) -> List[List[int]]:
    """Greedy sequential packing under the ``count * max_len**1.163`` budget (at least 1 per batch)."""
    batches, cur, cur_max = [], [], 0
    for i, n in zip(indices, lengths):
        new_max = max(cur_max, n)
        if cur and ((len(cur) + 1) * new_max ** LENGTH_EXPONENT > budget or len(cur) >= max_count):
            batches.append(cur)
            cur, new_max = [], n
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def budget_for_device(device, memory_factor: float, cpu_tokens: int) -> float:
    """Batch budget in the original's units: the GPU's total memory in MiB * ``memory_factor``
    (the strategy's trait, the original's per-strategy share of GPUtil's ``memoryTotal``); on
    CPU a token budget. Total, not free, memory: the plan (and so the result) must not depend
    on what else holds memory on the GPU when the task starts."""
    import torch

    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return total / 2**20 * memory_factor
    return cpu_tokens * 40 ** (LENGTH_EXPONENT - 1)  # about cpu_tokens tokens of length-40 examples
