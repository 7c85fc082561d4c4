"""Small random Hugging Face causal LMs of other families (Llama, Qwen2), saved in a folder with
a tokenizer of their own, for tests of ``--model_name DIR`` beyond GPT-2.

The tokenizers are built here, offline and in a second: a byte-level BPE (the kind SmolLM2,
Qwen2 and Llama 3 use) learnt from the bundled RNNLG data, and, for the non-byte-level path,
a whitespace word-level vocabulary. The byte-level one adds a BOS token in front of every
encoded text, as Llama tokenizers do, so a test can see that l2kd's encoding leaves it out.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, List

import torch

from l2kd.data import bundled_data_dir

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def corpus(tasks=("rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"), limit: int = 400) -> List[str]:
    """Contexts, questions and answers of the bundled training data."""
    out: List[str] = []
    for task in tasks:
        with open(os.path.join(bundled_data_dir(), f"{task}_to_squad-train-v2.0.json"), encoding="utf-8") as f:
            data = json.load(f)["data"]
        n = 0
        for d in data:
            for p in d["paragraphs"]:
                out.append(p["context"])
                for qa in p["qas"]:
                    out.append(qa["question"])
                    out += [a["text"] for a in qa["answers"]]
                    n += 1
            if n >= limit:
                break
    return out


def _texts() -> Iterator[str]:
    yield from corpus()


def byte_level_tokenizer(vocab_size: int = 800):
    """A byte-level BPE tokenizer (GPT-2's byte alphabet) with ``<s>`` put in front of every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, BOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_texts(), trainer)
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tk.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, unk_token=UNK)


def word_level_tokenizer():
    """A whitespace word-level tokenizer (not byte-level; decodes words joined by spaces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tk.train_from_iterator(_texts(), trainers.WordLevelTrainer(special_tokens=[EOS, BOS, UNK], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, unk_token=UNK)


def save_tiny_model(folder: str, family: str, tokenizer=None, dtype: torch.dtype = torch.float32,
                    tied: bool = True, positions: int = 256, pad_vocab: int = 0, hidden: int = 32) -> str:
    """Save a 2-layer random ``family`` ("llama" or "qwen2") model with ``tokenizer`` (default
    :func:`byte_level_tokenizer`) into ``folder``, weights in ``dtype``; returns the folder.
    ``pad_vocab`` extra embedding rows beyond the tokenizer, as Qwen2 checkpoints have."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer if tokenizer is not None else byte_level_tokenizer()
    common = dict(vocab_size=len(tok) + pad_vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                  tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(family)
    model.to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
