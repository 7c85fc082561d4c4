"""L2KD teachers and Seq-KD data.

A teacher of task t is a single-task LAMOL model (``lll`` on ``[t]``, QA + LM loss, no
replay). l2kd looks for one, in order:

1. ``--teacher_dir`` (a folder with ``<t>/model-finish`` or ``model-finish`` itself),
2. where the original hard-codes it: ``models/<model>/lll/<t>_0.2/<t>/`` relative to the
   working directory (logged when used),
3. under the run's model root, in l2kd's layout: ``<root>/<model>/lll/<t>_0.2_<seed>/<t>/``,

and trains it there (same hyper-parameters unless ``--teacher_*`` overrides) when none exists,
through the ``train_teacher`` function the training loop passes in (this module does not
import the loop). A teacher l2kd trained records its learning configuration; one found in 2. or
3. that was trained under another one (say, other ``--teacher_n_train_epochs``) is not used: the
loop then refuses its folder as it refuses any stale run (``--discard_stale`` retrains it).
Settings only the student uses (temperature, regulariser, ``--teacher_*`` themselves) are reset
in the teacher's configuration, so students that differ only in them share one teacher.

Seq-KD replaces a task's gold training answers by the teacher's greedy decodes. The file is
named as the original expected it (``str.replace("train", "distil")`` on the file name:
``<t>_to_squad-distil-v2.0.json``), written beside the data, or in the teacher's folder when
the data folder is read-only or inside the installed l2kd package (its bundled data), and reused by the teacher that built it (an ``l2kd_teacher``
record in the file says which); a file l2kd did not build is the user's and is used as is.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Callable, Dict, Optional, Tuple

import torch
from transformers import PreTrainedTokenizer

from l2kd.checkpoint import load_task_model
from l2kd.config import SamplingConfig, TrainConfig, keys_of
from l2kd.data.qa_format import encode_example
from l2kd.data.squad import QAExample, load_squad_file, squad_document
from l2kd.data.tasks import task_file
from l2kd.evaluate import predict
from l2kd.generation import progress
from l2kd.io_utils import atomic_write_json
from l2kd.layout import TASK_RECORD, model_tag, run_dir
from l2kd.model import context_length, model_from_task_dir
from l2kd.run_identity import differences, learning_config, read_task_identity
from l2kd.tokenizer import SpecialIds, add_special_tokens, load_base_tokenizer

log = logging.getLogger("l2kd")
TEACHER_PCT = 0.2  # the original's teacher folder name hard-codes 0.2
TrainTeacher = Callable[[TrainConfig], str]  # trains a config, returns its run folder


# student-only settings, reset to their defaults in a teacher's configuration
_STUDENT_ONLY = keys_of(TrainConfig, student_only=True)  # from the config fields' metadata
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _STUDENT_ONLY}


def teacher_config(cfg: TrainConfig, task: str) -> TrainConfig:
    """The single-task LAMOL configuration of ``task``'s teacher."""
    return dataclasses.replace(
        cfg, tasks=(task,), seq_train_type="lll", gen_lm_sample_percentage=TEACHER_PCT, distil=False,
        seq_distil=False, n_train_epochs=cfg.teacher_n_train_epochs or cfg.n_train_epochs,
        learning_rate=cfg.teacher_learning_rate or cfg.learning_rate, teacher_dir="", skip_tasks=(),
        model_dir_root=cfg.teacher_root or cfg.model_dir_root, **_DEFAULTS,
    )


def _trained_otherwise(teacher_dir: str, tcfg: TrainConfig) -> list:
    """How the learning configuration recorded in ``teacher_dir`` differs from ``tcfg`` (empty when
    equal or when the folder has no record, e.g. the original's)."""
    recorded = read_task_identity(os.path.join(teacher_dir, TASK_RECORD))
    return differences(recorded, learning_config(tcfg)) if recorded is not None else []


def find_teacher(cfg: TrainConfig, task: str) -> Optional[str]:
    """The folder holding ``task``'s teacher ``model-finish``, or None when there is none yet."""
    candidates = []
    if cfg.teacher_dir:  # the user's choice: used as is
        candidates += [os.path.join(cfg.teacher_dir, task), cfg.teacher_dir]
    explicit = len(candidates)
    candidates.append(os.path.join("models", model_tag(cfg.model_name), "lll", f"{task}_{TEACHER_PCT}", task))
    tcfg = teacher_config(cfg, task)
    candidates.append(os.path.join(run_dir(tcfg.model_dir_root, tcfg.model_name, "lll", [task], TEACHER_PCT,
                                           tcfg.seed), task))
    for i, d in enumerate(candidates):
        if os.path.isfile(os.path.join(d, "model-finish")) and os.path.isfile(os.path.join(d, "config.json")):
            stale = [] if i < explicit else _trained_otherwise(d, tcfg)
            if not stale:
                return d
            log.warning("[%s] not using the teacher in %s: it was trained with another configuration (%s)",
                        task, d, "; ".join(stale))
    if cfg.teacher_dir:
        raise FileNotFoundError(f"--teacher_dir {cfg.teacher_dir}: no model-finish for task {task} "
                                f"(looked in {candidates[0]} and {candidates[1]})")
    return None


def ensure_teacher(cfg: TrainConfig, task: str, train_teacher: TrainTeacher) -> str:
    """Find ``task``'s teacher, training it with ``train_teacher`` first when none exists; return its folder."""
    found = find_teacher(cfg, task)
    if found:
        log.info("[%s] teacher: %s", task, found)
        return found
    tcfg = teacher_config(cfg, task)
    log.info("[%s] no teacher found: training a single-task teacher (%d epochs)", task, tcfg.n_train_epochs)
    return os.path.join(train_teacher(tcfg), task)


def load_teacher(tdir: str, device: torch.device) -> torch.nn.Module:
    """The teacher model in eval mode, frozen."""
    model = model_from_task_dir(tdir)
    load_task_model(model, tdir)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_vocabulary(cfg: TrainConfig, task: str) -> Tuple[PreTrainedTokenizer, SpecialIds]:
    """The tokenizer and special ids ``task``'s teacher was trained with (the base's, plus the
    tokens of its one task): its generation token may sit elsewhere than the student's."""
    tok = load_base_tokenizer(cfg.model_name)
    return tok, add_special_tokens(tok, [task], cfg.add_task_tokens, cfg.use_sep)


def teacher_fingerprint(teacher_dir: str) -> Dict[str, object]:
    """What identifies a teacher: its folder and its ``model-finish`` file's size and mtime."""
    st = os.stat(os.path.join(teacher_dir, "model-finish"))
    return {"teacher": os.path.abspath(teacher_dir), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _built_by(distil_path: str) -> Optional[Dict[str, object]]:
    """The fingerprint of the teacher that built ``distil_path``, stored in the file itself under
    ``l2kd_teacher`` (the LAMOL loader reads only ``data``); None for a user's file."""
    try:
        with open(distil_path) as f:
            record = json.load(f).get("l2kd_teacher")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def _beside_data(cfg: TrainConfig, task: str) -> str:
    """Where the original looks for ``task``'s Seq-KD file: beside its training file."""
    src = task_file(cfg.data_dir, task, "train")
    return os.path.join(os.path.dirname(src), os.path.basename(src).replace("train", "ref1" if cfg.ref1 else "distil"))


def user_distil_file(cfg: TrainConfig, task: str) -> Optional[str]:
    """The Seq-KD file beside the data that l2kd did not build (the user's), or None."""
    beside = _beside_data(cfg, task)
    return beside if os.path.isfile(beside) and _built_by(beside) is None else None


def _inside_package(path: str) -> bool:
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.commonpath([package, os.path.abspath(path)]) == package


def distil_file_path(cfg: TrainConfig, task: str, teacher_dir: str) -> str:
    """``<task>_to_squad-distil-v2.0.json`` beside the data, or in the teacher folder when the
    data folder is read-only or l2kd's own bundled data (never write inside the package)."""
    beside = _beside_data(cfg, task)
    folder = os.path.dirname(beside) or "."
    if os.access(folder, os.W_OK) and not _inside_package(folder):
        return beside
    return os.path.join(teacher_dir, os.path.basename(beside))


def ensure_distil_data(cfg: TrainConfig, task: str, device: torch.device, train_teacher: TrainTeacher) -> str:
    """Path of ``task``'s Seq-KD training file, building it with the teacher when missing.

    A file beside the data that l2kd did not build (no ``l2kd_teacher`` record) is the user's,
    as in the original: used as is. A file l2kd built (an ``l2kd_teacher`` record) is reused only
    by the teacher that built it; another teacher (another seed, a retrained teacher) builds its own in its own folder, so
    a multi-seed study never trains seed 2 on seed 1's teacher's decodes.
    """
    beside = _beside_data(cfg, task)
    name = os.path.basename(beside)
    if user_distil_file(cfg, task):
        log.info("[%s] Seq-KD data: using %s (not built by l2kd)", task, beside)
        return beside
    teacher_dir = ensure_teacher(cfg, task, train_teacher)
    mine = teacher_fingerprint(teacher_dir)
    for path in (beside, os.path.join(teacher_dir, name)):
        if os.path.isfile(path) and _built_by(path) == mine:
            log.info("[%s] Seq-KD data: reusing %s (built by this teacher)", task, path)
            return path
    path = distil_file_path(cfg, task, teacher_dir)
    if os.path.isfile(path):  # built by another teacher: keep it, write ours beside our teacher
        log.info("[%s] Seq-KD data %s was built by another teacher (%s); building this teacher's in %s",
                 task, path, (_built_by(path) or {}).get("teacher"), teacher_dir)
        path = os.path.join(teacher_dir, name)
    raw = load_squad_file(task_file(cfg.data_dir, task, "train"), task)
    if cfg.max_train_examples:
        raw = raw[: cfg.max_train_examples]
    tok, ids = teacher_vocabulary(cfg, task)
    teacher = load_teacher(teacher_dir, device)
    max_len = context_length(teacher)
    enc = [encode_example(tok, ids, ex.context, ex.question, ex.answers, task, max_len) for ex in raw]
    log.info("[%s] Seq-KD: decoding %d training answers with the teacher (greedy)", task, len(enc))
    with progress(f"Seq-KD {task}", cfg.quiet):
        preds = predict(teacher, tok, enc, ids.eos, ids.pad, SamplingConfig(top_k=1, use_kernels=cfg.use_kernels),
                        None, max_len, 64)
    out = [QAExample(context=ex.context, question=ex.question, answers=[p], qa_id=ex.qa_id, task=task)
           for ex, p in zip(raw, preds)]
    doc = squad_document(out)
    doc["l2kd_teacher"] = mine  # provenance, in the same atomic write as the data
    atomic_write_json(path, doc)
    log.info("[%s] Seq-KD data written to %s", task, path)
    return path
