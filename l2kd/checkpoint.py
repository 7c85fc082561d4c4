"""What a task leaves on disk and how it is read back: the finished task's outputs, the
resume state of an unfinished task, and state dicts of the original code.

Every file is written atomically (temp file, then rename), and ``model-finish`` is written
last, so a folder with ``model-finish`` is a finished task whatever happened to the process.

A run folder must not run code: every file here is read with ``torch.load(weights_only=True)``
(tensors, numbers, strings, lists, tuples, dicts). What else a state holds is stored as plain
values by :func:`to_plain` (the replay examples and GEM memories, :class:`Encoded`, and numpy
arrays and scalars of the random states) and rebuilt by :func:`from_plain`. A file holding any
other object is refused (:class:`UnsafeStateFile`), a truncated one reported
(:class:`UnreadableStateFile`), each naming the file.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Dict, Optional

import numpy as np
import torch

from l2kd.async_writer import StateWriter
from l2kd.data.qa_format import Encoded
from l2kd.io_utils import atomic_torch_save, atomic_write_json
from l2kd.layout import CHECKPOINT, MODEL_FINISH, RNG_STATE, STRATEGY_STATE, TASK_RECORD

_TAG = "__l2kd_type__"  # marks a plain dict that stands for an Encoded or a numpy value


class StateFileError(ValueError):
    """A run folder's state file cannot be used; the message names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class UnreadableStateFile(StateFileError):
    """Truncated or corrupt (a copy cut short, a damaged disk): not a file l2kd wrote whole."""


class UnsafeStateFile(StateFileError):
    """Holds objects that unpickling would construct or run: refused, nothing of it executed."""


def to_plain(obj: Any) -> Any:
    """``obj`` with every :class:`Encoded` and numpy value replaced by tagged plain values, so
    that it loads with ``weights_only=True``."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass that pickles as numpy
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, Encoded):
        return {_TAG: "Encoded", **{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}}
    if isinstance(obj, np.ndarray):
        return {_TAG: "ndarray", "dtype": obj.dtype.str, "data": obj.tolist()}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return obj if obj and type(obj[0]) is int else [to_plain(v) for v in obj]  # token ids: nothing to do
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj  # anything else is saved as is and refused on load (named there)


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        kind = obj.get(_TAG)
        if kind == "Encoded":
            return Encoded(**{k: v for k, v in obj.items() if k != _TAG})
        if kind == "ndarray":
            return np.array(obj["data"], dtype=np.dtype(obj["dtype"]))
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return obj if obj and type(obj[0]) is int else [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def save_state_file(path: str, obj: Any) -> None:
    """Write a state that :func:`load_state_file` reads back with ``weights_only=True``."""
    atomic_torch_save(path, to_plain(obj))


def load_state_file(path: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """A state file written by :func:`save_state_file` (or a plain ``torch.save`` of tensors),
    loaded without unpickling arbitrary objects. Raises :class:`UnsafeStateFile` or
    :class:`UnreadableStateFile` (each naming ``path``); FileNotFoundError when it is absent."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:  # the restricted unpickler met something it does not allow
            lines = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "WeightsUnpickler" in ln]
            detail = lines[0].split(" whose module")[0].split(" was not")[0] if lines else "a disallowed object"
            raise UnsafeStateFile(path, (
                f"{path}: refused: it holds Python objects that loading would construct or run ({detail}); l2kd "
                "writes only tensors and plain values there, so an older l2kd wrote it or it was tampered with. "
                "Nothing of it was executed. Delete it (a checkpoint.pt: the task restarts) or its task folder "
                "(the task is trained again), then re-run the same command.")) from None
        raise UnreadableStateFile(path, f"{path}: truncated or corrupt ({text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableStateFile(path, f"{path}: truncated or corrupt ({first})") from None
    return from_plain(obj)


def save_task_outputs(model, tok, tdir: str, info: Dict[str, object], strategy_state: dict,
                      rng_state: dict) -> None:
    """config.json + weights + tokenizer files, strategy and RNG state, the summary, and
    ``model-finish`` last: the folder then loads with plain ``GPT2LMHeadModel.from_pretrained``
    and with the original's ``model-finish`` reader."""
    from transformers.utils import logging as hf_logging

    save_state_file(os.path.join(tdir, RNG_STATE), rng_state)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny shard: its progress bar is noise in the logs
    try:
        model.save_pretrained(tdir, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(tdir)
    if strategy_state:
        save_state_file(os.path.join(tdir, STRATEGY_STATE), strategy_state)
    atomic_write_json(os.path.join(tdir, TASK_RECORD), info)
    atomic_torch_save(os.path.join(tdir, MODEL_FINISH), model.state_dict())


def load_finished_state(tdir: str, device: torch.device) -> Dict[str, Optional[dict]]:
    """The strategy state and RNG state a finished task saved (None where absent)."""
    out: Dict[str, Optional[dict]] = {"strategy": None, "rng": None}
    for key, name, where in (("strategy", STRATEGY_STATE, device), ("rng", RNG_STATE, "cpu")):
        path = os.path.join(tdir, name)
        if os.path.isfile(path):
            out[key] = load_state_file(path, where)
    return out


def load_task_model(model: torch.nn.Module, tdir: str, name: str = MODEL_FINISH) -> None:
    """Load a saved state dict (the original's ``model-*`` files) into ``model``."""
    path = os.path.join(tdir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (was this task trained?)")
    try:
        state = load_state_file(path)
    except UnreadableStateFile as exc:
        raise UnreadableStateFile(path, f"{path}: cannot be read as a model state dict: {exc}") from None
    # Checkpoints of the original code (pytorch-transformers 1.2.0 GPT2LMHeadModel) carry the
    # attention-mask buffers ``attn.bias`` / ``attn.masked_bias`` that current transformers
    # rebuilds; anything else missing or unexpected is a wrong file, not something to skip.
    if isinstance(state, dict) and "state_dict" in state and "model" not in state:
        state = state["state_dict"]
    result = model.load_state_dict(state, strict=False)
    tolerated = (".attn.bias", ".attn.masked_bias", "lm_head.weight")  # lm_head is tied to wte
    missing = [k for k in result.missing_keys if not k.endswith(tolerated)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(tolerated)]
    if missing or unexpected:
        raise StateFileError(path, f"{path}: not a state dict of this model (missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]})")


def save_resume_state(tdir: str, state: Dict[str, Any], writer: Optional[StateWriter] = None,
                      label: object = None) -> int:
    """Replace the task's ``checkpoint.pt`` (only the latest is kept); with ``writer`` in the
    background (a snapshot is taken now; ``label``: what its bytes count towards). Returns the
    bytes of its tensors."""
    path = os.path.join(tdir, CHECKPOINT)
    if writer is None:
        save_state_file(path, state)
        return 0
    return writer.submit(path, to_plain(state), label)


def save_epoch_model(tdir: str, epoch: int, state_dict: Dict[str, Any], writer: Optional[StateWriter] = None) -> int:
    """``model-<epoch>``, the original's per-epoch state dict; with ``writer`` in the background
    (its bytes counted under ``epoch``). Returns the bytes of its tensors."""
    path = os.path.join(tdir, f"model-{epoch}")
    if writer is None:
        atomic_torch_save(path, state_dict)
        return 0
    return writer.submit(path, state_dict, epoch)


def load_resume_state(tdir: str, device: torch.device) -> Optional[Dict[str, Any]]:
    """The task's ``checkpoint.pt``, or None when the task has none (raises
    :class:`StateFileError` for a damaged or unsafe one)."""
    path = os.path.join(tdir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    return load_state_file(path, device)


def resume_identity(tdir: str) -> Optional[dict]:
    """The learning configuration recorded in ``checkpoint.pt`` (None: no checkpoint, or one
    written before identities were recorded). Memory-mapped: the tensors are not read."""
    path = os.path.join(tdir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    state = load_state_file(path, "cpu", mmap=True)
    return state.get("identity") if isinstance(state, dict) else None


def drop_resume_state(tdir: str) -> None:
    """Remove ``checkpoint.pt`` once ``model-finish`` holds the task."""
    path = os.path.join(tdir, CHECKPOINT)
    if os.path.isfile(path):
        os.remove(path)
