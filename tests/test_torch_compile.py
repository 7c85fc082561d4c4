"""--torch_compile: the transformer body of the training forwards under torch.compile.

The compiled body must train the same model as the eager one (up to inductor's float
reassociation), be compiled once per model and not change what the run folder means."""
from __future__ import annotations

import os

import pytest
import torch

from l2kd import TrainConfig
from l2kd.losses import Losses, hidden_states
from l2kd.loop import train_sequence
from l2kd.model import load_model_dir
from l2kd.run_identity import RUNTIME_KEYS
from l2kd.settings import config_from_args, parse_args


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


def test_the_flag_is_a_runtime_choice_with_named_modes(tmp_path):
    base = ["--tasks", "rnnlg.rest", "--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path)]
    args = parse_args(base + ["--torch_compile", "reduce-overhead"])
    assert config_from_args(args).torch_compile == "reduce-overhead"
    assert "torch_compile" in RUNTIME_KEYS  # the same run folder, compiled or not
    with pytest.raises(SystemExit):
        parse_args(base + ["--torch_compile", "fast"])


def test_hidden_compiles_once_per_model_and_matches_eager():
    model = _tiny_llama()
    losses = Losses(compile_mode="default")
    for length in (7, 11, 13):  # lengths vary per batch: dynamic shapes, no recompile per length
        ids = torch.randint(0, 97, (3, length))
        with torch.no_grad():
            got, want = losses.hidden(model, ids), hidden_states(model, ids)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(losses._bodies) == 1
    assert Losses().hidden(model, ids).shape == want.shape  # off: the eager body


@pytest.mark.slow
def test_a_compiled_run_trains_the_eager_model(tmp_path, data_dir):
    """lll on the tiny GPT-2, eager and compiled: the same losses and weights to float tolerance."""
    finals = []
    for mode in ("off", "default"):
        cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=data_dir, model_dir_root=str(tmp_path / mode),
                          model_name="tiny-gpt2", seq_train_type="lll", n_train_epochs=1, max_train_examples=16,
                          train_batch_size=8, learning_rate=1e-3, quiet=True, torch_compile=mode)
        summary = train_sequence(cfg)
        finals.append((summary["tasks"]["rnnlg.rest"]["final_loss"],
                       load_model_dir(os.path.join(summary["run_dir"], "rnnlg.rest"))))
    (loss_a, a), (loss_b, b) = finals
    assert loss_b == pytest.approx(loss_a, rel=1e-4)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    moved = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
    assert moved < 1e-4, moved
