"""``--unbound K``, the boundary-free setting: the training data of every task, concatenated in
``--tasks`` order, cut into chunks that are trained one after another as stages named
``task_0, task_1, ...`` (docs/original.md section 9).

The original turns every question into a paragraph of its own, concatenates the tasks'
questions without shuffling, and cuts the list into slices of ``ceil(N / K)`` questions, so
there are ``ceil(N / ceil(N / K))`` chunks: ``K`` or fewer (``N = 10, K = 4`` gives chunks of
3, 3, 3, 1; ``N = 10, K = 6`` gives 5 chunks of 2). A chunk is a data set of its own: it has
its own generation token (``__task_<i>__`` with ``--add_task_tokens``), its own folder, and
LAMOL replays pseudo-samples of the earlier chunks. The tasks themselves reappear only at
test time, where every chunk model is tested on every original task.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple, TypeVar

from l2kd.data.qa_format import Encoded, encode_example
from l2kd.data.squad import QAExample, load_squad_file
from l2kd.data.tasks import task_file
from l2kd.tokenizer import SpecialIds

log = logging.getLogger("l2kd")
CHUNK_PREFIX = "task_"  # the original's stage names: task_0, task_1, ...
T = TypeVar("T")


def chunk_size(n: int, k: int) -> int:
    """Questions per chunk: ``ceil(n / k)`` (the last chunk may hold fewer)."""
    if k < 1:
        raise ValueError(f"--unbound: the number of chunks must be >= 1 (got {k})")
    return math.ceil(n / k)


def n_chunks(n: int, k: int) -> int:
    """How many chunks ``n`` questions make: ``ceil(n / ceil(n / k))`` (0 when ``n`` is 0)."""
    size = chunk_size(n, k)
    return math.ceil(n / size) if size else 0


def chunk_names(count: int) -> List[str]:
    """The stage names of ``count`` chunks, in training order."""
    return [f"{CHUNK_PREFIX}{i}" for i in range(count)]


def chunk_bounds(n: int, k: int) -> List[Tuple[int, int]]:
    """``[start, end)`` of every chunk in the concatenated list of ``n`` questions."""
    size = chunk_size(n, k)
    return [(start, min(start + size, n)) for start in range(0, n, size)] if size else []


def split_chunks(items: Sequence[T], k: int) -> List[List[T]]:
    """``items`` cut into consecutive chunks of ``ceil(len / k)`` (order kept, nothing shuffled)."""
    return [list(items[a:b]) for a, b in chunk_bounds(len(items), k)]


def concatenated_training_data(data_dir: str, tasks: Sequence[str], limit: int = 0) -> List[QAExample]:
    """Every task's training questions in ``tasks`` order (each task's first ``limit`` when
    ``limit`` > 0, l2kd's ``--max_train_examples``), each question tagged with its task."""
    out: List[QAExample] = []
    for task in tasks:
        examples = load_squad_file(task_file(data_dir, task, "train"), task)
        out += examples[:limit] if limit else examples
    return out


def chunk_paragraphs(chunk: Sequence[QAExample], name: str, tok, ids: SpecialIds, max_len: int
                     ) -> List[List[Encoded]]:
    """A chunk encoded for training as the data set ``name``: every question a paragraph of its
    own (the original splits paragraphs up before concatenating), starting its LM rows with
    the chunk's generation token."""
    paragraphs = [[encode_example(tok, ids, ex.context, ex.question, ex.answers, name, max_len, qa_id=ex.qa_id)]
                  for ex in chunk]
    n_trunc = sum(p[0].truncated for p in paragraphs)
    if n_trunc:
        log.warning("%s: %d of %d examples longer than the model context (%d) were truncated", name, n_trunc,
                    len(paragraphs), max_len)
    return paragraphs


def chunk_record(chunk: Sequence[QAExample], index: int, start: int) -> Dict[str, object]:
    """What a chunk holds, for its ``l2kd_task.json``: its place in the concatenated list and
    how many questions each original task gave it."""
    per_task: Dict[str, int] = {}
    for ex in chunk:
        per_task[ex.task] = per_task.get(ex.task, 0) + 1
    return {"chunk": index, "start": start, "end": start + len(chunk), "per_task": per_task}
