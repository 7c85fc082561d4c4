"""Which earlier task each of LAMOL's pseudo-samples imitates, read back from a finished run.

With one shared generation token the model decides by itself which task a pseudo-sample belongs
to, and a student that stops generating one task never replays it. The study attributes every
sample in a run's ``lm.csv`` files by its question: the text before ``__ans__`` ends with one of
an earlier task's training questions (case and spacing ignored). Samples without ``__ans__`` or
with a question of no earlier task count as ``other``. The teachers' own pseudo-samples (recorded
by the teacher diagnostics) are attributed the same way, to their one task. A diagnostic only:
training never reads the old tasks' data.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from l2kd.data.squad import DataError, QAExample, load_squad_file
from l2kd.data.tasks import task_file
from l2kd.replay import read_lm_csv
from l2kd.tokenizer import ANS

OTHER = "other"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def training_examples(data_dir: str, task: str) -> List[QAExample]:
    """``task``'s training examples; empty when its file cannot be read (a diagnostic goes without)."""
    try:
        return load_squad_file(task_file(data_dir, task, "train"), task)
    except (OSError, DataError):
        return []


def training_questions(data_dir: str, task: str) -> Set[str]:
    """The distinct questions of ``task``'s training file (normalised); empty when it cannot be read."""
    return {_norm(ex.question) for ex in training_examples(data_dir, task)}


def imitated(sample: str, questions: Dict[str, Set[str]]) -> Optional[str]:
    """The task whose question ``sample`` ends its prompt with (None: no ``__ans__``, or no task's);
    a prompt that ends with questions of several tasks goes to the task with the longest match."""
    head, sep, _ = sample.partition(ANS)
    if not sep:
        return None
    prompt = _norm(head)
    best: Optional[str] = None
    best_len = 0
    for task, qs in questions.items():
        for q in qs:
            if len(q) > best_len and prompt.endswith(q):
                best, best_len = task, len(q)
    return best


def attribute(samples: Iterable[str], questions: Dict[str, Set[str]]) -> Dict[str, int]:
    """Count ``samples`` per task they imitate (:func:`imitated`; ``other``: none)."""
    out = {task: 0 for task in questions}
    out[OTHER] = 0
    for s in samples:
        out[imitated(s, questions) or OTHER] += 1
    return out


def replayed(rdir_task: Callable[[str], str], tasks: Sequence[str], data_dir: str
             ) -> Iterator[Tuple[str, List[str], Dict[str, Set[str]]]]:
    """For every task after the first: the task, the pseudo-samples replayed while learning it (the
    ``lm.csv`` the previous task's folder holds; ``rdir_task(task)`` gives a task's folder) and the
    training questions of each earlier task. Tasks without one are skipped."""
    questions: Dict[str, Set[str]] = {}
    for i in range(1, len(tasks)):
        questions[tasks[i - 1]] = training_questions(data_dir, tasks[i - 1])
        try:
            samples: List[str] = read_lm_csv(os.path.join(rdir_task(tasks[i - 1]), "lm.csv"))
        except (OSError, ValueError):
            continue
        yield tasks[i], samples, dict(questions)


def replay_mix(rdir_task: Callable[[str], str], tasks: Sequence[str], data_dir: str) -> Dict[str, Dict[str, int]]:
    """task -> counts per earlier task of the pseudo-samples replayed while learning it
    (:func:`replayed`); tasks without them are left out."""
    return {task: attribute(samples, questions) for task, samples, questions in replayed(rdir_task, tasks, data_dir)}


def teacher_own_samples(record: Dict[str, object], task: str, data_dir: str) -> Dict[str, int]:
    """The counts of a teacher's own pseudo-samples (a ``teacher_pseudo`` record of the teacher
    diagnostics): ``generated``, ``parsed`` and ``own_task``, those whose question is one of
    ``task``'s training questions."""
    texts = [str(t) for t in record.get("texts") or []]
    return {"generated": int(record.get("generated", len(texts))), "parsed": int(record.get("parsed", 0)),
            "own_task": attribute(texts, {task: training_questions(data_dir, task)})[task]}
