"""Model construction: pretrained GPT-2 / openai-gpt from local files, or the offline tiny GPT-2."""
from __future__ import annotations

import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

# The demo/test model (docs/design-notes.md, "Scale of the demo"): 2 layers, 2 heads, 128 dims, real vocabulary.
TINY_GPT2 = dict(n_layer=2, n_head=2, n_embd=128, n_positions=512)


def tiny_gpt2_config(vocab_size: int = 50257) -> GPT2Config:
    """Config of the offline ``tiny-gpt2`` model."""
    return GPT2Config(vocab_size=vocab_size, bos_token_id=50256, eos_token_id=50256, **TINY_GPT2)


def load_base_model(model_name: str, seed: int) -> PreTrainedModel:
    """``tiny-gpt2``: random init (seeded); anything else: pretrained weights from a local directory
    or the Hugging Face cache (no download)."""
    if model_name == "tiny-gpt2":
        torch.manual_seed(seed)
        return GPT2LMHeadModel(tiny_gpt2_config())
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_name, local_files_only=True)
    except Exception as exc:
        where = "directory" if os.path.isdir(model_name) else "Hugging Face cache"
        raise FileNotFoundError(
            f"--model_name {model_name}: pretrained weights not found in the local {where} "
            "(l2kd never downloads; put the weights there or pass a model directory)"
        ) from exc


def context_length(model: PreTrainedModel) -> int:
    """Maximum sequence length (n_positions) of the model."""
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings"))


def resize_for_tokenizer(model: PreTrainedModel, vocab_size: int) -> None:
    """Grow the (tied) embeddings to ``vocab_size``; new rows are initialised as the model's init."""
    if model.get_input_embeddings().weight.shape[0] != vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)


def model_from_task_dir(tdir: str) -> PreTrainedModel:
    """An uninitialised model with the architecture saved in ``tdir/config.json`` (weights load next)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.path.join(tdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (was this task trained?)")
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tdir))
