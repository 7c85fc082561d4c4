"""LAMOL replay: pseudo-sample generation and parsing, ``lm.csv``, and ``--real_sample``.

Before task t > 0, ``n = ceil(pct * N_t)`` prompts (``n -= n % t``) are split evenly over
the t previous tasks; each prompt is just that task's generation token. Samples are decoded
with the ``--top_k_lm/--top_p_lm/--temperature_lm`` flags (the original used the ``_qa``
values; same defaults) until eos or the length cap, written to ``lm.csv`` in the *previous*
task's folder (header ``gen``, one decoded sequence per row including the generation token),
then parsed back. Unparsable samples are counted, logged and dropped; fewer than half
parsing raises a loud warning (the original dropped them silently). ``N_t`` is the size of
the training set actually loaded (equal to the original's data_attrs size on full data).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from l2kd import distributed as dist
from l2kd.config import SamplingConfig
from l2kd.data.qa_format import Encoded, pseudo_from_ids
from l2kd.generation import generate, progress
from l2kd.io_utils import atomic_write_text
from l2kd.tokenizer import SpecialIds

log = logging.getLogger("l2kd")


@dataclass
class ReplayStats:
    """Counts of one task's replay data."""

    requested: int = 0
    generated: int = 0
    parsed: int = 0
    dropped: int = 0
    per_task: Dict[str, int] = field(default_factory=dict)
    source: str = "generated"  # generated | lm.csv | real

    @property
    def parse_rate(self) -> float:
        return self.parsed / self.generated if self.generated else 0.0


def n_pseudo(pct: float, train_size: int, n_prev: int) -> int:
    """``ceil(pct * size)`` rounded down to a multiple of the number of previous tasks."""
    n = int(math.ceil(pct * train_size))
    return n - n % n_prev if n_prev else 0


def pseudo_len(max_gen_len: int, max_len: int) -> int:
    """Length cap of a pseudo-sample in tokens: ``--max_gen_len`` when set, else the context."""
    return min(max_len, max_gen_len) if max_gen_len > 0 else max_len


def write_lm_csv(path: str, texts: Sequence[str]) -> None:
    """``lm.csv`` as the original: header ``gen``, one sequence per row (written atomically)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["gen"])
    for t in texts:
        w.writerow([t])
    atomic_write_text(path, buf.getvalue())


def read_lm_csv(path: str) -> List[str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["gen"]:
        raise ValueError(f"{path}: not an lm.csv file (expected header 'gen')")
    return [r[0] for r in rows[1:] if r]


def sample_after_gen(model, ids: SpecialIds, tasks: Sequence[str], max_len: int, sampling: SamplingConfig,
                     generator: torch.Generator, batch_size: int = 64, label: str = "pseudo-samples"
                     ) -> List[List[int]]:
    """One sequence per entry of ``tasks``: its generation token and what ``model`` (in eval mode
    meanwhile) writes after it, up to ``max_len`` tokens in all (eos not included)."""
    prompts = [[ids.gen[t]] for t in tasks]
    was_training = model.training
    model.eval()
    new = generate(model, prompts, [max_len - 1] * len(prompts), ids.eos, ids.pad, sampling, generator,
                   batch_size=batch_size, task=label)
    model.train(was_training)
    return [p + n for p, n in zip(prompts, new)]


def _make_or_read(model, tok, ids: SpecialIds, prev_tasks: Sequence[str], n_total: int, max_len: int,
                  sampling: SamplingConfig, generator: torch.Generator, lm_csv_path: str, batch_size: int,
                  quiet: bool = True) -> Tuple[List[List[int]], str]:
    """Re-tokenize an existing ``lm.csv`` or generate the samples and write it; (seqs, source)."""
    ids_path = lm_csv_path[:-4] + "_ids.json"
    if os.path.isfile(lm_csv_path):
        texts = read_lm_csv(lm_csv_path)
        seqs = None
        if os.path.isfile(ids_path):  # the exact ids behind lm.csv (a resumed run trains on the same samples)
            with open(ids_path) as f:
                saved = json.load(f)
            seqs = saved["ids"] if len(saved["ids"]) == len(texts) else None
            if seqs is not None:  # leave the sampling generator where generating them left it
                generator.set_state(torch.tensor(saved["generator_state"], dtype=torch.uint8))
        if seqs is None:  # an lm.csv from elsewhere (e.g. the original code): re-tokenize, as the original
            seqs = [tok.encode(t) for t in texts]
        log.info("re-using %d pseudo-samples from %s", len(seqs), lm_csv_path)
        return seqs, "lm.csv"
    per = n_total // len(prev_tasks) if prev_tasks else 0
    log.info("generating %d pseudo-samples of %s (up to %d tokens each) into %s", per * len(prev_tasks),
             ", ".join(prev_tasks), max_len - 1, lm_csv_path)
    with progress("pseudo-samples", quiet):
        seqs = sample_after_gen(model, ids, [t for t in prev_tasks for _ in range(per)], max_len, sampling,
                                generator, batch_size, f"pseudo-samples of {', '.join(prev_tasks)}")
    atomic_write_text(ids_path, json.dumps({"ids": seqs, "generator_state": generator.get_state().tolist()}))
    write_lm_csv(lm_csv_path, [tok.decode(s) for s in seqs])
    return seqs, "generated"


def generate_pseudo(model, tok, ids: SpecialIds, prev_tasks: Sequence[str], n_total: int, max_len: int,
                    sampling: SamplingConfig, generator: torch.Generator, lm_csv_path: str,
                    batch_size: int = 64, quiet: bool = True) -> Tuple[List[Encoded], ReplayStats, List[List[int]]]:
    """Generate (or re-read from an existing ``lm.csv``) and parse pseudo-samples of ``prev_tasks``
    (a progress bar while generating unless ``quiet``)."""
    gen_to_task = {ids.gen[t]: t for t in prev_tasks}
    stats = ReplayStats(requested=n_total)
    if dist.is_main():
        seqs, stats.source = _make_or_read(model, tok, ids, prev_tasks, n_total, max_len, sampling, generator,
                                           lm_csv_path, batch_size, quiet)
    else:
        seqs = None
    # rank 0 generated (or read) the samples: every rank trains on the very same ones
    seqs, stats.source = dist.broadcast((seqs, stats.source))
    examples, dropped = pseudo_from_ids(seqs, ids, gen_to_task, max_len)
    stats.generated, stats.parsed, stats.dropped = len(seqs), len(examples), dropped
    for ex in examples:
        stats.per_task[ex.task] = stats.per_task.get(ex.task, 0) + 1
    msg = (f"pseudo-samples: {stats.generated} generated, {stats.parsed} parsed, {stats.dropped} dropped "
           f"({100 * stats.parse_rate:.0f}% parsed; source {stats.source})")
    if stats.generated and stats.parse_rate < 0.5:
        log.warning("%s -- FEWER THAN HALF PARSED: replay is weak; train the model longer or check the "
                    "learning rate", msg)
    else:
        log.info(msg)
    return examples, stats, seqs


def sample_real(prev_data: Dict[str, List[Encoded]], pct: float, rng: np.random.Generator
                ) -> Tuple[List[Encoded], ReplayStats]:
    """``--real_sample``: per previous task ``ceil(pct * size) // t`` real examples, with replacement."""
    t = len(prev_data)
    out: List[Encoded] = []
    stats = ReplayStats(source="real")
    for task, data in prev_data.items():
        k = int(math.ceil(pct * len(data))) // t
        for i in rng.integers(0, len(data), size=k):
            src = data[int(i)]
            out.append(Encoded(cq=src.cq, answer=src.answer, gen_id=src.gen_id, task=task, is_pseudo=True))
        stats.per_task[task] = k
    stats.requested = stats.generated = stats.parsed = len(out)
    return out, stats
