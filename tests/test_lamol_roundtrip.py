"""LAMOL's format, once a model has learnt it, comes back out of generation and parses.

Train lll on 8 rnnlg.rest examples until the model has them by heart, then generate
pseudo-samples from the generation token alone, greedily, as the next task would (top-k 1):
every one must parse and read as an RNNLG example. This covers, for GPT-2 and for a
Llama-family model with its own tokenizer, the whole path a pseudo-sample takes: LM input and
target layout, special tokens, the cached batched decoding and the parser."""
from __future__ import annotations

import os

import pytest
import torch

from l2kd import TrainConfig
from l2kd.config import SamplingConfig
from l2kd.data.qa_format import pseudo_from_ids
from l2kd.generation import generate
from l2kd.loop import train_sequence
from l2kd.model import load_model_dir
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_learnt_format_generates_parsable_pseudo_samples(tmp_path, data_dir, family):
    from hf_models import save_tiny_model

    base = "tiny-gpt2" if family == "gpt2" else save_tiny_model(str(tmp_path / "base"), "llama", hidden=128)
    # 8 examples repeated 25 times: 25 steps an epoch, 8 epochs, 8 epoch writes
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=data_dir, model_dir_root=str(tmp_path / "runs"),
                      model_name=base, seq_train_type="lll", n_train_epochs=8, max_train_examples=8,
                      upsample_data=(25,), train_batch_size=8, learning_rate=3e-3, lm_lambda=1.0, quiet=True)
    summary = train_sequence(cfg)
    tdir = os.path.join(summary["run_dir"], "rnnlg.rest")
    tok = load_base_tokenizer(base)
    ids = add_special_tokens(tok, ["rnnlg.rest"], False, False)
    model = load_model_dir(tdir).eval()
    prompts = [[ids.gen["rnnlg.rest"]] for _ in range(4)]
    new = generate(model, prompts, [120] * 4, ids.eos, ids.pad, SamplingConfig(top_k=1),
                   torch.Generator().manual_seed(0))
    seqs = [p + n for p, n in zip(prompts, new)]
    parsed, dropped = pseudo_from_ids(seqs, ids, {ids.gen["rnnlg.rest"]: "rnnlg.rest"}, 200)
    assert dropped == 0, [tok.decode(s) for s in seqs]
    text = tok.decode(seqs[0])
    assert "what is the natural language form?" in text and "__ans__" in text, text
