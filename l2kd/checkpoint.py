"""What a task leaves on disk and how it is read back: the finished task's outputs, the
resume state of an unfinished task, and state dicts of the original code.

Every file is written atomically (temp file, then rename), and ``model-finish`` is written
last, so a folder with ``model-finish`` is a finished task whatever happened to the process.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from l2kd.io_utils import atomic_torch_save, atomic_write_json
from l2kd.layout import CHECKPOINT, MODEL_FINISH, RNG_STATE, STRATEGY_STATE, TASK_RECORD


def save_task_outputs(model, tok, tdir: str, info: Dict[str, object], strategy_state: dict,
                      rng_state: dict) -> None:
    """config.json + weights + tokenizer files, strategy and RNG state, the summary, and
    ``model-finish`` last: the folder then loads with plain ``GPT2LMHeadModel.from_pretrained``
    and with the original's ``model-finish`` reader."""
    from transformers.utils import logging as hf_logging

    atomic_torch_save(os.path.join(tdir, RNG_STATE), rng_state)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny shard: its progress bar is noise in the logs
    try:
        model.save_pretrained(tdir, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(tdir)
    if strategy_state:
        atomic_torch_save(os.path.join(tdir, STRATEGY_STATE), strategy_state)
    atomic_write_json(os.path.join(tdir, TASK_RECORD), info)
    atomic_torch_save(os.path.join(tdir, MODEL_FINISH), model.state_dict())


def load_finished_state(tdir: str, device: torch.device) -> Dict[str, Optional[dict]]:
    """The strategy state and RNG state a finished task saved (None where absent)."""
    out: Dict[str, Optional[dict]] = {"strategy": None, "rng": None}
    for key, name, where in (("strategy", STRATEGY_STATE, device), ("rng", RNG_STATE, "cpu")):
        path = os.path.join(tdir, name)
        if os.path.isfile(path):
            out[key] = torch.load(path, map_location=where, weights_only=False)
    return out


def load_task_model(model: torch.nn.Module, tdir: str, name: str = MODEL_FINISH) -> None:
    """Load a saved state dict (the original's ``model-*`` files) into ``model``."""
    path = os.path.join(tdir, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"{path}: missing (was this task trained?)") from None
    except Exception as exc:
        raise SystemExit(f"{path}: cannot be read as a model state dict ({exc})") from None
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
        raise SystemExit(f"{path}: not a state dict of this model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


def save_resume_state(tdir: str, state: Dict[str, Any]) -> None:
    """Replace the task's ``checkpoint.pt`` (only the latest is kept)."""
    atomic_torch_save(os.path.join(tdir, CHECKPOINT), state)


def load_resume_state(tdir: str, device: torch.device) -> Optional[Dict[str, Any]]:
    """The task's ``checkpoint.pt``, or None when the task has none."""
    path = os.path.join(tdir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location=device, weights_only=False)


def resume_identity(tdir: str) -> Optional[dict]:
    """The learning configuration recorded in ``checkpoint.pt`` (None: no checkpoint, or one
    written before identities were recorded). Memory-mapped: the tensors are not read."""
    path = os.path.join(tdir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return state.get("identity") if isinstance(state, dict) else None


def drop_resume_state(tdir: str) -> None:
    """Remove ``checkpoint.pt`` once ``model-finish`` holds the task."""
    path = os.path.join(tdir, CHECKPOINT)
    if os.path.isfile(path):
        os.remove(path)
