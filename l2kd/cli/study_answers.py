"""The form of a finished run's test answers, read back from its ``qa_<task>_<epoch>.csv`` files.

A score does not say *why* an answer is wrong. The bundled NLG tasks (e2enlg, rnnlg.*) answer
with a sentence, woz.en with a slot list (``food: basque; phone``, or ``; address`` when only
requests are asked) or ``None`` (no change of state). A model that mixes the tasks up answers one
in the other's form: an NLG question with ``None``, a woz.en one with a sentence. The study
counts, after every stage and on every test task, the answers in each form and those *off form*:
in a form that fewer than :data:`MIN_SHARE` of the task's own reference answers take. The same
for LAMOL's pseudo-samples: a replayed sample that imitates a task by its question
(:mod:`l2kd.cli.study_replay`) but answers off that task's form (an NLG question with ``None``)
teaches the confusion. A diagnostic only; it reads what training and ``python -m l2kd.test`` wrote.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from l2kd.cli.study_replay import imitated, replayed, training_examples
from l2kd.layout import stages, task_dir
from l2kd.tokenizer import ANS

FORMS = ("sentence", "slots", "none", "empty")
MIN_SHARE = 0.1  # a form a task's references take less often than this is not the task's form
_SLOTS = re.compile(r"^(?:[A-Za-z][A-Za-z ]*:|;)")  # "food: basque; ...", "price range: ...", "; phone"


def answer_form(text: str) -> str:
    """``sentence``, ``slots`` (a ``slot: value`` list or a bare ``; request`` list), ``none``
    (the literal ``None``) or ``empty``."""
    t = text.strip()
    if not t:
        return "empty"
    if t == "None":
        return "none"
    return "slots" if _SLOTS.match(t) else "sentence"


def read_qa_csv(path: str) -> Tuple[List[List[str]], List[str]]:
    """The reference lists and the predictions of one ``qa_<task>_<epoch>.csv`` (columns ``y``:
    a JSON list of references, ``pred``). Raises ValueError naming the file and row when a row
    is not of that form."""
    golds: List[List[str]] = []
    preds: List[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                refs = json.loads(row["y"])
                pred = row["pred"]
            except (KeyError, TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}, line {i}: not a qa row (y: a JSON list, pred: text): {exc}") from exc
            if not isinstance(refs, list) or pred is None:
                raise ValueError(f"{path}, line {i}: y must be a JSON list of references and pred present")
            golds.append([str(r) for r in refs])
            preds.append(pred)
    return golds, preds


def reference_forms(golds: Sequence[Sequence[str]], min_share: float = MIN_SHARE) -> Set[str]:
    """The forms that at least ``min_share`` of all the references take."""
    counts = Counter(answer_form(r) for refs in golds for r in refs)
    total = sum(counts.values())
    return {f for f, n in counts.items() if total and n / total >= min_share}


def latest_qa_csv(folder: str, task: str) -> Optional[str]:
    """The ``qa_<task>_<epoch>.csv`` of the highest epoch in ``folder`` (None when there is none)."""
    prefix = f"qa_{task}_"
    best: Optional[Tuple[int, str]] = None
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for name in names:
        epoch = name[len(prefix):-len(".csv")]
        if name.startswith(prefix) and name.endswith(".csv") and epoch.isdigit():
            if best is None or int(epoch) > best[0]:
                best = (int(epoch), os.path.join(folder, name))
    return best[1] if best else None


def folder_forms(folder: str, tasks: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """test task -> ``n``, ``off_form`` and a count per form of :data:`FORMS`, from the latest qa
    file of each task in ``folder`` (tasks without one are left out)."""
    out: Dict[str, Dict[str, int]] = {}
    for task in tasks:
        path = latest_qa_csv(folder, task)
        if path is None:
            continue
        golds, preds = read_qa_csv(path)
        own = reference_forms(golds)
        forms = Counter(answer_form(p) for p in preds)
        out[task] = {"n": len(preds), "off_form": sum(n for f, n in forms.items() if f not in own),
                     **{f: forms.get(f, 0) for f in FORMS}}
    return out


def answer_forms(run_dir: str, seq_train_type: str, tasks: Sequence[str]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """stage -> test task -> counts (:func:`folder_forms`) for every stage of the run that was
    tested; a stage is named by its tasks joined with ``+`` (the task just learnt, for a
    sequential run)."""
    out = {}
    for stage in stages(seq_train_type, tasks):
        forms = folder_forms(task_dir(run_dir, seq_train_type, stage[0]), tasks)
        if forms:
            out["+".join(stage)] = forms
    return out


def training_forms(data_dir: str, task: str) -> Set[str]:
    """The forms of ``task``'s training answers (:func:`reference_forms`); empty when the file
    cannot be read."""
    return reference_forms([ex.answers or [""] for ex in training_examples(data_dir, task)])


def replay_forms(rdir_task: Callable[[str], str], tasks: Sequence[str], data_dir: str
                 ) -> Dict[str, Dict[str, Dict[str, int]]]:
    """task -> earlier task -> ``n`` (the pseudo-samples replayed while learning the task that
    imitate the earlier one by their question) and ``off_form`` (those whose answer is in a form
    the earlier task's training answers do not take). ``rdir_task(task)`` gives a task's folder."""
    own: Dict[str, Set[str]] = {}
    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for task, samples, questions in replayed(rdir_task, tasks, data_dir):
        counts: Dict[str, Dict[str, int]] = {}
        for sample in samples:
            source = imitated(sample, questions)
            if source is None:
                continue
            if source not in own:
                own[source] = training_forms(data_dir, source)
            c = counts.setdefault(source, {"n": 0, "off_form": 0})
            c["n"] += 1
            c["off_form"] += answer_form(sample.partition(ANS)[2]) not in own[source]
        out[task] = counts
    return out
