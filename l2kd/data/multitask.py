"""How a stage's training examples are arranged: the original's ``--upsample_data``,
``--round_robin``, ``--multitask_specific`` and ``--debug`` (docs/original.md section 9).

The original arranges *paragraphs* (a SQuAD paragraph may hold several questions): task i's
paragraphs are repeated ``rate_i`` times; with round robin each task's list is shuffled and
the tasks are interleaved one paragraph each, taking from the end of each list, until all are
used; ``--debug`` then keeps the first 10 paragraphs of the stage. The shuffle here draws from
the run's seeded NumPy generator (the original used Python's ``random``), so the order is
reproducible but not the original's.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

from l2kd.data.qa_format import Encoded

DEBUG_PARAGRAPHS = 10  # --debug keeps the first paragraphs of every data set
MULTITASK_SPECIFIC_ROWS = 4  # embedding rows --multitask_specific adds after the tokenizer's

Paragraphs = List[List[Encoded]]


def task_specific_gen(per_task: Sequence[Paragraphs], base_gen_id: int) -> List[Paragraphs]:
    """``--multitask_specific``: task i's LM rows start with ``base_gen_id + i`` (the original
    adds the task index to the first LM token of each row)."""
    return [[[dataclasses.replace(e, gen_id=base_gen_id + i) for e in para] for para in paras]
            for i, paras in enumerate(per_task)]


def round_robin(per_task: Sequence[Paragraphs], rng: np.random.Generator) -> Paragraphs:
    """Shuffle each task's paragraphs, then take one from the end of each task's list in turn
    (a finished task is skipped) until every list is empty."""
    lists = [[paras[i] for i in rng.permutation(len(paras))] for paras in per_task]
    out: Paragraphs = []
    while any(lists):
        for lst in lists:
            if lst:
                out.append(lst.pop())
    return out


def arrange_stage(per_task: Sequence[Paragraphs], rng: np.random.Generator, rates: Sequence[int] = (),
                  interleave: bool = False, debug: bool = False) -> List[Encoded]:
    """A stage's training examples from its tasks' paragraphs: repeated ``rates[i]`` times,
    interleaved (``interleave``) or concatenated in task order, cut to the first
    :data:`DEBUG_PARAGRAPHS` paragraphs under ``debug``."""
    if rates and len(rates) != len(per_task):
        raise ValueError(f"--upsample_data: {len(rates)} rate(s) for {len(per_task)} task(s)")
    repeated = [list(paras) * (rates[i] if rates else 1) for i, paras in enumerate(per_task)]
    paras = round_robin(repeated, rng) if interleave else [p for lst in repeated for p in lst]
    if debug:
        paras = paras[:DEBUG_PARAGRAPHS]
    return [e for p in paras for e in p]


def shuffles_batches(debug: bool, interleave: bool, fixed_batches: bool) -> bool:
    """Whether each epoch's batches are drawn in a random order. The original's fixed-size
    DataLoader does not shuffle under ``--debug`` or ``--round_robin``; its dynamic batch
    sampler permutes unless ``--debug`` (round robin does not reach it)."""
    if debug:
        return False
    return not (interleave and fixed_batches)


def embedding_rows(n_tokens: int, multitask_specific: bool) -> int:
    """Rows of the embedding (and of the class weights) for a tokenizer of ``n_tokens``."""
    return n_tokens + (MULTITASK_SPECIFIC_ROWS if multitask_specific else 0)
