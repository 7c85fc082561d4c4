"""The output layout of a run: folder names, file names, and what "finished" means.

It is the original's layout (so its scripts and result readers work unchanged) plus l2kd's
own records. A run folder ``X`` holds ``log_train.txt``, ``log_test.txt``, the run record
``l2kd_run.json``, ``accuracy_matrix.json``, ``train_scalars.jsonl`` and one folder per task
(multitask and multilm write into ``X`` itself). A task folder holds ``model-<epoch>`` (one
state dict per epoch), ``model-finish``, ``config.json`` + weights + tokenizer files (a plain
``save_pretrained`` folder), ``l2kd_task.json``, and while the task trains its resume state
``checkpoint.pt``.

With ``--unbound K`` the stages are not the tasks but the chunks of their concatenated
training data, ``task_0, task_1, ...`` (:func:`plan_stages`), each with a folder of its own in
the run folder (named, as the run folder itself, after the original tasks).
"""
from __future__ import annotations

import os
import re
from typing import List, Sequence

from l2kd.config import strategy_traits
from l2kd.data.unbound import chunk_names, n_chunks

MODEL_FINISH = "model-finish"  # the original's final state dict of a task
TASK_RECORD = "l2kd_task.json"  # summary of a finished task (written just before model-finish)
RUN_RECORD = "l2kd_run.json"  # the run's configuration, identity and per-task summaries
CHECKPOINT = "checkpoint.pt"  # latest resumable state of an unfinished task
STRATEGY_STATE = "strategy_state.pt"  # importances / memories saved with a finished task
RNG_STATE = "rng_state.pt"  # random streams where a finished task left them
LOCK = ".l2kd.lock"  # held by the process training in the run folder
ACCURACY_MATRIX = "accuracy_matrix.json"
TRAIN_LOG = "log_train.txt"
TEST_LOG = "log_test.txt"


def model_tag(model_name: str) -> str:
    """The model's name in paths: a local directory is named by its last component."""
    return os.path.basename(os.path.normpath(model_name)) if os.path.isdir(model_name) else model_name


def run_dir(model_dir_root: str, model_name: str, seq_train_type: str, tasks: Sequence[str],
            gen_lm_sample_percentage: float, seed: int) -> str:
    """``root/model/type/T1_T2.._<pct>_<seed>`` for a strategy whose traits put the replay share
    in the folder name (lll), else ``root/model/type/T1_T2.._seed_<seed>`` (pct printed as a
    float, as the original)."""
    name = "_".join(tasks)
    if strategy_traits(seq_train_type).pct_in_folder:
        name = f"{name}_{float(gen_lm_sample_percentage)}_{seed}"
    else:
        name = f"{name}_seed_{seed}"
    return os.path.join(model_dir_root, model_tag(model_name), seq_train_type, name)


def run_dir_of(cfg) -> str:
    """:func:`run_dir` of a :class:`~l2kd.config.TrainConfig`."""
    return run_dir(cfg.model_dir_root, cfg.model_name, cfg.seq_train_type, list(cfg.tasks),
                   cfg.gen_lm_sample_percentage, cfg.seed)


def task_dir(run_directory: str, seq_train_type: str, task: str) -> str:
    """Per-task folder; a joint strategy (multitask, multilm) writes into the run folder itself."""
    if strategy_traits(seq_train_type).joint:
        return run_directory
    return os.path.join(run_directory, task)


def stages(seq_train_type: str, tasks: Sequence[str]) -> List[List[str]]:
    """The training stages: one per task, or a single stage of all tasks for a joint strategy."""
    return [list(tasks)] if strategy_traits(seq_train_type).joint else [[t] for t in tasks]


def plan_stages(cfg, n_train: int = 0) -> List[List[str]]:
    """The stages a run trains, in order, each the list of names it trains under (the names of
    its generation tokens and, first name, of its folder: :func:`task_dir`).

    That is :func:`stages` of the tasks, except with ``--unbound K``: one stage per chunk of
    the ``n_train`` concatenated training questions (``ceil(n / ceil(n / K))`` of them), named
    ``task_0, task_1, ...`` as the original. ``n_train`` is only read with ``--unbound``.
    """
    if cfg.unbound and not strategy_traits(cfg.seq_train_type).joint:
        if n_train < 1:
            raise ValueError(f"--unbound {cfg.unbound}: the tasks {' '.join(cfg.tasks)} have no training "
                             "examples to cut into chunks")
        return [[name] for name in chunk_names(n_chunks(n_train, cfg.unbound))]
    return stages(cfg.seq_train_type, cfg.tasks)


def is_finished(tdir: str) -> bool:
    """A task is finished when its ``model-finish`` and summary exist (model-finish is written last)."""
    return os.path.isfile(os.path.join(tdir, MODEL_FINISH)) and os.path.isfile(os.path.join(tdir, TASK_RECORD))


def saved_epochs(tdir: str) -> List[int]:
    """Epoch numbers of the ``model-<epoch>`` files in ``tdir``, ascending."""
    found = [int(m.group(1)) for f in os.listdir(tdir) if (m := re.fullmatch(r"model-(\d+)", f))]
    return sorted(found)
