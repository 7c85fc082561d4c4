"""A model-finish written by the original LAMOL/L2KD code (pytorch-transformers key layout) loads."""
from __future__ import annotations

import pytest
import torch

from l2kd.model import load_base_model
from l2kd.checkpoint import StateFileError, UnreadableStateFile, load_task_model


def test_original_key_layout_loads(tmp_path):
    src = load_base_model("tiny-gpt2", 1)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    n_pos = src.config.n_positions
    for i in range(src.config.n_layer):  # buffers pytorch-transformers 1.2.0 saved in every state dict
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "model-finish")
    dst = load_base_model("tiny-gpt2", 2)
    load_task_model(dst, str(tmp_path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_wrong_state_dict_is_refused(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "model-finish")
    with pytest.raises(StateFileError, match="not a state dict of this model"):
        load_task_model(load_base_model("tiny-gpt2", 0), str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model-finish").write_bytes(b"truncated")
    with pytest.raises(UnreadableStateFile, match="cannot be read"):
        load_task_model(load_base_model("tiny-gpt2", 0), str(tmp_path / "bad"))
