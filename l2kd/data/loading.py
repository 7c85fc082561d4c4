"""Reading and encoding one task's split: the file, the example limit, the truncation warning."""
from __future__ import annotations

import logging
from typing import List, Optional

from l2kd.data.qa_format import Encoded, encode_example
from l2kd.data.squad import load_squad_file
from l2kd.data.tasks import task_file
from l2kd.tokenizer import SpecialIds

log = logging.getLogger("l2kd")


def load_task_paragraphs(data_dir: str, task: str, split: str, tok, ids: SpecialIds, max_len: int,
                         limit: int = 0, path: Optional[str] = None) -> List[List[Encoded]]:
    """The first ``limit`` (0 = all) examples of ``task``'s ``split`` (or of the file ``path``,
    e.g. Seq-KD data), encoded in LAMOL's QA format for a model of context ``max_len`` and
    grouped by paragraph: the original shuffles, repeats and cuts (``--debug``) paragraphs."""
    path = path or task_file(data_dir, task, split)
    raw = load_squad_file(path, task)
    if limit:
        raw = raw[:limit]
    groups: List[List[Encoded]] = []
    last = None
    n_trunc = n = 0
    for ex in raw:
        enc = encode_example(tok, ids, ex.context, ex.question, ex.answers, task, max_len, qa_id=ex.qa_id)
        if ex.paragraph != last:
            groups.append([])
            last = ex.paragraph
        groups[-1].append(enc)
        n_trunc += enc.truncated
        n += 1
    if n_trunc:
        log.warning("%s: %d of %d examples longer than the model context (%d) were truncated",
                    path, n_trunc, n, max_len)
    return groups


def load_task_examples(data_dir: str, task: str, split: str, tok, ids: SpecialIds, max_len: int,
                       limit: int = 0, path: Optional[str] = None, paragraphs: int = 0) -> List[Encoded]:
    """:func:`load_task_paragraphs` flattened; ``paragraphs`` > 0 keeps only the first ones."""
    groups = load_task_paragraphs(data_dir, task, split, tok, ids, max_len, limit, path)
    if paragraphs:
        groups = groups[:paragraphs]
    return [e for g in groups for e in g]
