"""Data layer: task registry, LAMOL SQuAD-layout files, raw-data converters.

``bundled_data_dir()`` is a small LAMOL-layout data directory shipped with the
package (RNNLG restaurant/hotel/tv/laptop, E2E NLG and WOZ subsets; see its
ATTRIBUTION.md) for the demo and the tests.
"""
from __future__ import annotations

import os

from .squad import (
    DataError,
    DataFileNotFoundError,
    QAExample,
    load_answers_file,
    load_squad_file,
    order_by_qa_id,
    write_squad_file,
)
from .tasks import TASKS, TaskSpec, answers_path, get_task, task_file, task_names

__all__ = [
    "TASKS",
    "TaskSpec",
    "get_task",
    "task_file",
    "task_names",
    "answers_path",
    "QAExample",
    "DataError",
    "DataFileNotFoundError",
    "load_squad_file",
    "load_answers_file",
    "write_squad_file",
    "order_by_qa_id",
    "bundled_data_dir",
    "BUNDLED_TASKS",
]

# Tasks with files in bundled_data_dir(), and their example counts per split.
BUNDLED_TASKS = {
    "rnnlg.rest": {"train": 1500, "test": 120},
    "rnnlg.hotel": {"train": 1500, "test": 120},
    "rnnlg.tv": {"train": 1500, "test": 120},
    "rnnlg.laptop": {"train": 1500, "test": 120},
    "e2enlg": {"train": 1500, "test": 120},
    "woz.en": {"train": 300, "dev": 100, "test": 100},
}


def bundled_data_dir() -> str:
    """Absolute path of the bundled LAMOL-layout data directory (``--data_dir`` for the demo)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "data")
