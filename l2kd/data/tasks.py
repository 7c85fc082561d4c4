"""Task registry: every task of LAMOL and L2KD, its data files and its score.

All tasks are read from ``DATA_DIR/<task>_to_squad-<split>-v2.0.json`` (LAMOL's
SQuAD layout), except squad1/squad2, which use the SQuAD release names
(``squad-train-v1.1.json``, ``squad-dev-v1.1.json``, ``squad-*-v2.0.json``).

Splits as the original L2KD (``settings.py`` TASK_DICT):

* ``eval`` = ``test`` = the ``test`` file: e2enlg*, rnnlg.*, ag, dbpedia, yahoo,
  amazon, yelp, iwslt.en.de, cnn_dailymail (LAMOL used ``dev`` as eval split for
  the last two; L2KD uses ``test``).
* ``eval`` = ``dev``, ``test`` = ``test``: sst, srl, zre, woz.en, wikisql, schema.
* ``eval`` = ``test`` = ``dev``: multinli.in.out; squad1/squad2 (the SQuAD dev file).

``train_size`` is the training-set size of L2KD's ``data_attrs.json`` (used by the
original to count pseudo-samples: ``ceil(pct * train_size)``). L2KD shrank some
tasks against LAMOL (cnn_dailymail 6604 vs 287227, wikisql 6525 vs 56355, ag 7600
vs 115000); ``lamol_train_size`` keeps LAMOL's figure. e2enlg2 has no entry in
either file, so its size is ``None`` (count the loaded file instead).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["TaskSpec", "TASKS", "task_file", "get_task", "task_names"]


@dataclass(frozen=True)
class TaskSpec:
    """One task of the registry.

    name:        the task key, as on the command line (``--tasks``)
    metric:      the key of the single 0-100 score (docs/design-notes.md, "One score per task")
    eval_split:  file split used for ``eval`` ("test" or "dev")
    train_size:  L2KD data_attrs.json train size (pseudo-sample counts), or None
    answers_file: extra gold file the metric needs (wikisql, woz.en), else None
    test_split:  file split used at test time ("test", or "dev" for multinli/squad)
    lamol_train_size: LAMOL's data_attrs.json train size, None for L2KD-only tasks
    """

    name: str
    metric: str
    eval_split: str
    train_size: Optional[int]
    answers_file: Optional[str] = None
    test_split: str = "test"
    lamol_train_size: Optional[int] = None


def _t(name, metric, eval_split, train_size, answers_file=None, test_split="test", lamol=None):
    return TaskSpec(name, metric, eval_split, train_size, answers_file, test_split, lamol)


_SPECS = [
    # LAMOL's 16 tasks
    _t("squad1", "nf1", "dev", 87599, test_split="dev", lamol=87599),
    _t("squad2", "nf1", "dev", 130319, test_split="dev", lamol=130319),
    _t("wikisql", "lfem", "dev", 6525, answers_file="wikisql_answers.json", lamol=56355),
    _t("sst", "em", "dev", 6920, lamol=6920),
    _t("srl", "nf1", "dev", 6414, lamol=6414),
    _t("woz.en", "joint_goal_em", "dev", 2536, answers_file="woz.en_answers.json", lamol=2536),
    _t("cnn_dailymail", "avg_rouge", "test", 6604, lamol=287227),
    _t("zre", "corpus_f1", "dev", 840000, lamol=840000),
    _t("iwslt.en.de", "bleu", "test", 196884, lamol=196884),
    _t("multinli.in.out", "em", "dev", 392702, test_split="dev", lamol=392702),
    _t("schema", "em", "dev", 80, lamol=80),
    # L2KD's NLG tasks
    _t("e2enlg", "avg_rouge", "test", 6000),
    _t("rnnlg.rest", "avg_rouge", "test", 6228),
    _t("rnnlg.hotel", "avg_rouge", "test", 6446),
    _t("rnnlg.tv", "avg_rouge", "test", 8442),
    _t("rnnlg.laptop", "avg_rouge", "test", 7944),
    _t("e2enlg2", "avg_rouge", "test", None),
    # text classification (LAMOL)
    _t("ag", "em", "test", 7600, lamol=115000),
    _t("yelp", "em", "test", 115000, lamol=115000),
    _t("amazon", "em", "test", 115000, lamol=115000),
    _t("dbpedia", "em", "test", 115000, lamol=115000),
    _t("yahoo", "em", "test", 115000, lamol=115000),
]

TASKS: Dict[str, TaskSpec] = {s.name: s for s in _SPECS}


def task_names():
    """All task keys, in registry order."""
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; an unknown name raises KeyError listing the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(
            f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}"
        ) from None


def _file_split(spec: TaskSpec, split: str) -> str:
    if split == "eval":
        return spec.eval_split
    if split == "test":
        return spec.test_split
    return split  # "train", "dev", or a Seq-KD name such as "distil" / "ref1"


def task_file(data_dir: str, task: str, split: str) -> str:
    """Path of ``task``'s data file for ``split`` under ``data_dir``.

    ``split``: "train", "eval" (the task's eval split), "test" (its test split), or a
    literal file split ("dev", and L2KD's Seq-KD names "distil" / "ref1", which replace
    "train" in the original's file name).
    """
    spec = get_task(task)
    if not split:
        raise ValueError("split must be a non-empty string such as 'train', 'eval' or 'test'")
    fsplit = _file_split(spec, split)
    if task in ("squad1", "squad2"):
        version = "v1.1" if task == "squad1" else "v2.0"
        return os.path.join(data_dir, f"squad-{fsplit}-{version}.json")
    return os.path.join(data_dir, f"{task}_to_squad-{fsplit}-v2.0.json")


def answers_path(data_dir: str, task: str) -> Optional[str]:
    """Path of the task's answers file (wikisql / woz.en), or None for other tasks."""
    spec = get_task(task)
    return None if spec.answers_file is None else os.path.join(data_dir, spec.answers_file)
