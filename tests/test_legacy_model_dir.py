"""``--model_name DIR`` with a folder saved by pytorch-transformers 1.2.0 (the original's library)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from l2kd.model import load_base_model
from l2kd.tokenizer import load_base_tokenizer

N_POS, N_EMBD, N_LAYER, N_HEAD, VOCAB = 64, 32, 2, 2, 50261

# GPT2Config.to_json_string() of pytorch-transformers 1.2.0 (sorted keys, no model_type).
LEGACY_CONFIG = {
    "attn_pdrop": 0.1, "embd_pdrop": 0.1, "finetuning_task": None, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "n_ctx": N_POS, "n_embd": N_EMBD, "n_head": N_HEAD, "n_layer": N_LAYER,
    "n_positions": N_POS, "num_labels": 1, "output_attentions": False, "output_hidden_states": False,
    "pruned_heads": {}, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True, "torchscript": False,
    "vocab_size": VOCAB,
}


def legacy_state_dict(seed: int = 0) -> dict:
    """A 1.2.0 GPT2LMHeadModel state dict: its key order, the ``attn.bias`` mask buffers, lm_head."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    d = N_EMBD
    sd = {"transformer.wte.weight": r(VOCAB, d), "transformer.wpe.weight": r(N_POS, d)}
    for i in range(N_LAYER):
        h = f"transformer.h.{i}."
        sd.update({
            h + "ln_1.weight": 1 + r(d), h + "ln_1.bias": r(d),
            h + "attn.bias": torch.tril(torch.ones(N_POS, N_POS)).view(1, 1, N_POS, N_POS),
            h + "attn.c_attn.weight": r(d, 3 * d), h + "attn.c_attn.bias": r(3 * d),
            h + "attn.c_proj.weight": r(d, d), h + "attn.c_proj.bias": r(d),
            h + "ln_2.weight": 1 + r(d), h + "ln_2.bias": r(d),
            h + "mlp.c_fc.weight": r(d, 4 * d), h + "mlp.c_fc.bias": r(4 * d),
            h + "mlp.c_proj.weight": r(4 * d, d), h + "mlp.c_proj.bias": r(d),
        })
    sd.update({"transformer.ln_f.weight": 1 + r(d), "transformer.ln_f.bias": r(d)})
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, saved under both names
    return sd


def write_legacy_dir(path, config=LEGACY_CONFIG, state=None) -> dict:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = legacy_state_dict() if state is None else state
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    return state


def test_legacy_gpt2_folder_loads_with_its_weights(tmp_path):
    d = tmp_path / "gpt2-old"
    state = write_legacy_dir(d)
    model = load_base_model(str(d), seed=0)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert (model.config.n_layer, model.config.n_embd, model.config.n_positions) == (N_LAYER, N_EMBD, N_POS)
    got = model.state_dict()
    for k, v in state.items():
        if not k.endswith("attn.bias"):
            assert torch.equal(got[k], v), k
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    x = torch.tensor([[1, 2, 3]])
    assert model(input_ids=x).logits.shape == (1, 3, VOCAB)


def test_legacy_tokenizer_folder_loads(tmp_path):
    """1.2.0's tokenizer.save_pretrained: vocab.json, merges.txt, added_tokens.json."""
    from l2kd.tokenizer import RESOURCE_BPE

    d = tmp_path / "gpt2-old"
    write_legacy_dir(d)
    with open(os.path.join(RESOURCE_BPE, "encoder.json")) as f:
        (d / "vocab.json").write_text(f.read())
    with open(os.path.join(RESOURCE_BPE, "vocab.bpe")) as f:
        (d / "merges.txt").write_text(f.read())
    (d / "added_tokens.json").write_text(json.dumps({"__ans__": 50257, "__pad__": 50258, "__unk__": 50259,
                                                     "__gen__": 50260}))
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                                           "unk_token": "<|endoftext|>"}))
    tok = load_base_tokenizer(str(d))
    assert len(tok) == 50261 and tok.convert_tokens_to_ids("__gen__") == 50260
    assert tok.encode("what is __ans__") == [644, 318, 50257]


def test_errors_name_the_real_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_base_model(str(empty), 0)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(LEGACY_CONFIG))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_base_model(str(no_weights), 0)

    gpt1 = tmp_path / "openai-gpt-old"
    write_legacy_dir(gpt1, config={**LEGACY_CONFIG, "afn": "gelu", "n_special": 0})
    with pytest.raises(ValueError, match="no \"model_type\" and is not a GPT-2"):
        load_base_model(str(gpt1), 0)

    wrong = tmp_path / "wrong-size"
    write_legacy_dir(wrong, config={**LEGACY_CONFIG, "n_embd": 64})
    with pytest.raises(ValueError, match="loading pytorch_model.bin with its config.json failed"):
        load_base_model(str(wrong), 0)

    partial = tmp_path / "partial"
    state = legacy_state_dict()
    del state["transformer.h.1.mlp.c_fc.weight"]
    write_legacy_dir(partial, state=state)
    with pytest.raises(ValueError, match="lacks weights"):
        load_base_model(str(partial), 0)

    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_base_model(str(bad_json), 0)


def test_current_transformers_folder_still_loads(tmp_path):
    src = load_base_model("tiny-gpt2", 3)
    src.save_pretrained(tmp_path / "new")
    dst = load_base_model(str(tmp_path / "new"), 0)
    assert torch.equal(dst.transformer.h[0].mlp.c_fc.weight, src.transformer.h[0].mlp.c_fc.weight)


def test_original_task_folder_loads_as_teacher(tmp_path):
    """A task folder the original trained (``config.json`` without model_type + ``model-finish``)
    is what ``--teacher_dir`` points at; it must load with its weights."""
    from l2kd.checkpoint import load_task_model
    from l2kd.model import model_from_task_dir

    d = tmp_path / "rnnlg.rest"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LEGACY_CONFIG, indent=2, sort_keys=True) + "\n")
    state = legacy_state_dict(seed=3)
    torch.save(state, d / "model-finish")
    model = model_from_task_dir(str(d))
    load_task_model(model, str(d))
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, state["transformer.h.1.mlp.c_fc.weight"])
    (d / "config.json").write_text(json.dumps({"afn": "gelu", "n_embd": 8}) + "\n")
    with pytest.raises(ValueError, match="not a GPT-2 configuration"):
        model_from_task_dir(str(d))
