"""Model construction: any decoder-only causal LM saved in a local folder (GPT-2, openai-gpt,
the Llama family: Llama, SmolLM2, Qwen2; also GPT-2 folders saved by pytorch-transformers 1.x,
the original's library), a base named in :data:`l2kd.bases.BASES` (converted once into the
user's cache), or the offline tiny GPT-2. Weights are fp32 (master weights; autocast does any
low precision)."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from l2kd.bases import ensure_packaged_base, is_packaged_base

# The demo/test model (docs/design-notes.md, "Scale of the demo"): 2 layers, 2 heads, 128 dims, real vocabulary.
TINY_GPT2 = dict(n_layer=2, n_head=2, n_embd=128, n_positions=512)


def tiny_gpt2_config(vocab_size: int = 50257) -> GPT2Config:
    """Config of the offline ``tiny-gpt2`` model."""
    return GPT2Config(vocab_size=vocab_size, bos_token_id=50256, eos_token_id=50256, **TINY_GPT2)


def load_base_model(model_name: str, seed: int) -> PreTrainedModel:
    """``tiny-gpt2``: random init (seeded); a directory: the model saved there (current
    transformers, or pytorch-transformers 1.x's ``save_pretrained``); else pretrained weights
    from the Hugging Face cache (no download)."""
    if model_name == "tiny-gpt2":
        torch.manual_seed(seed)
        return GPT2LMHeadModel(tiny_gpt2_config())
    if is_packaged_base(model_name):
        return load_model_dir(ensure_packaged_base(model_name))
    if os.path.isdir(model_name):
        return load_model_dir(model_name)
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_name, local_files_only=True)
    except Exception as exc:
        raise FileNotFoundError(
            f"--model_name {model_name}: not a directory and not loadable from the local Hugging Face cache "
            f"(l2kd never downloads; fetch it once with transformers or pass a model directory): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# Files a model folder can hold its weights in (current transformers, then pytorch-transformers 1.x).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# GPT2Config fields of pytorch-transformers 1.x's config.json that define the architecture.
LEGACY_GPT2_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon",
                      "initializer_range", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def legacy_gpt2_config(raw: dict) -> Optional[GPT2Config]:
    """The :class:`GPT2Config` of a ``config.json`` written by pytorch-transformers 1.x (no
    ``model_type``), or None when the keys are not GPT-2's (openai-gpt 1.x configs have ``afn``)."""
    if "model_type" in raw or "afn" in raw or not all(k in raw for k in ("n_embd", "n_layer", "n_head")):
        return None
    fields = {k: raw[k] for k in LEGACY_GPT2_FIELDS if k in raw}
    if "n_positions" not in fields and "n_ctx" in raw:
        fields["n_positions"] = raw["n_ctx"]
    return GPT2Config(bos_token_id=50256, eos_token_id=50256, **fields)


def load_model_dir(path: str) -> PreTrainedModel:
    """The causal LM saved in directory ``path``; errors name the real problem (no config,
    unreadable config, unknown model kind, no weights, weights that do not fit)."""
    from transformers import AutoModelForCausalLM

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"--model_name {path}: the directory has no config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model_name {path}: config.json cannot be read as JSON ({exc})") from exc
    weights = [w for w in WEIGHT_FILES if os.path.isfile(os.path.join(path, w))]
    if not weights:
        raise FileNotFoundError(f"--model_name {path}: no weights file in the directory (expected one of "
                                f"{', '.join(WEIGHT_FILES)})")
    config = None
    if "model_type" not in raw:  # pytorch-transformers 1.x wrote no model_type
        config = legacy_gpt2_config(raw)
        if config is None:
            raise ValueError(
                f"--model_name {path}: config.json has no \"model_type\" and is not a GPT-2 configuration "
                "(no n_embd/n_layer/n_head, or openai-gpt's afn); add \"model_type\" (e.g. \"openai-gpt\") to it")
    try:
        cls = GPT2LMHeadModel if config is not None else AutoModelForCausalLM
        model, info = cls.from_pretrained(path, config=config, local_files_only=True, output_loading_info=True)
    except Exception as exc:
        raise ValueError(f"--model_name {path}: loading {weights[0]} with its config.json failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    # transformers fills weights missing from the file with random values and only logs it.
    tied = getattr(model.config, "tie_word_embeddings", True)
    missing = [k for k in info.get("missing_keys", ()) if not (tied and k.endswith("lm_head.weight"))]
    if missing:
        raise ValueError(f"--model_name {path}: {weights[0]} lacks weights of the configured model "
                         f"({len(missing)} missing, e.g. {sorted(missing)[:3]}): a different architecture?")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        # transformers 5 keeps a file's fp16 / bf16 (the shipped pretrained base); l2kd trains fp32
        # master weights (autocast does the low precision), so a half-precision file is widened here
        model = model.float()
    return model


def context_length(model: PreTrainedModel) -> int:
    """Maximum sequence length of the model: GPT-2's ``n_positions``, else the config's
    ``max_position_embeddings`` (Llama, Qwen2, ...)."""
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings"))


def resize_for_tokenizer(model: PreTrainedModel, vocab_size: int) -> None:
    """Give the input embeddings and the output head (tied or not) ``vocab_size`` rows; new rows
    are initialised as the model's init. A model whose embedding has padding rows beyond its
    tokenizer (Qwen2) is cut to the tokenizer, so logits and token ids have the same range."""
    if model.get_input_embeddings().weight.shape[0] != vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)


def model_from_task_dir(tdir: str) -> PreTrainedModel:
    """An uninitialised model with the architecture saved in ``tdir/config.json`` (weights load next)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.path.join(tdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (was this task trained?)")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if "model_type" not in raw:  # a task folder of the original code (pytorch-transformers 1.x)
        config = legacy_gpt2_config(raw)
        if config is None:
            raise ValueError(f"{path}: no \"model_type\" and not a GPT-2 configuration (no n_embd/n_layer/n_head)")
        return GPT2LMHeadModel(config)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tdir))
