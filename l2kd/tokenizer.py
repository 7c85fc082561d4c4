"""GPT-2 byte-level BPE with LAMOL's special tokens.

Ids as the original: ``<|endoftext|>`` = 50256 (eos), then ``__ans__`` 50257, ``__pad__``
50258, ``__unk__`` 50259 (``__sep__`` 50260 with ``--use_sep``), then the generation
tokens (``__gen__`` or one ``__<task>__`` per task with ``--add_task_tokens``) in task
order (K:settings.py:133-147, K:utils.py:33).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from transformers import GPT2Tokenizer, PreTrainedTokenizer

log = logging.getLogger("l2kd")
RESOURCE_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources", "gpt2-bpe")
EOS = "<|endoftext|>"
ANS, PAD, UNK, SEP, GEN = "__ans__", "__pad__", "__unk__", "__sep__", "__gen__"


def gen_token_for(task: str, add_task_tokens: bool) -> str:
    """The generation token that starts a task's LM examples and pseudo-samples."""
    return f"__{task}__" if add_task_tokens else GEN


def bundled_gpt2_tokenizer(bpe_dir: str = RESOURCE_BPE) -> PreTrainedTokenizer:
    """The real GPT-2 tokenizer built offline from ``encoder.json`` + ``vocab.bpe``."""
    enc, merges = os.path.join(bpe_dir, "encoder.json"), os.path.join(bpe_dir, "vocab.bpe")
    for path in (enc, merges):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GPT-2 BPE file missing: {path}")
    params = inspect.signature(GPT2Tokenizer.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x
        return GPT2Tokenizer(vocab_file=enc, merges_file=merges)
    with open(enc, encoding="utf-8") as f:  # transformers 5.x takes the objects
        vocab = json.load(f)
    with open(merges, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n")[1:] if ln.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(ln.split()) for ln in lines])


GPT2_VOCAB_SIZE = 50257  # tokens of the bundled BPE (encoder.json)
# Files any Hugging Face tokenizer is loaded from; a model folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "vocab.txt",
                   "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def bundled_for_bare_model_dir(model_name: str) -> Optional[PreTrainedTokenizer]:
    """For a model folder without tokenizer files (``model.save_pretrained(dir)`` writes none):
    the bundled GPT-2 BPE when ``config.json`` says the vocabulary is GPT-2's, else an error
    naming the folder (transformers would load a 1-token tokenizer that encodes every text to
    nothing). None when ``model_name`` is not such a folder."""
    if not os.path.isdir(model_name) or any(os.path.isfile(os.path.join(model_name, f)) for f in TOKENIZER_FILES):
        return None
    config = os.path.join(model_name, "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            vocab = json.load(f).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        vocab = None
    if vocab != GPT2_VOCAB_SIZE:
        raise FileNotFoundError(
            f"--model_name {model_name}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...) "
            f"and its vocabulary ({vocab} tokens in {config}) is not GPT-2's ({GPT2_VOCAB_SIZE}), so l2kd's bundled "
            "GPT-2 BPE cannot stand in: save the model's tokenizer into the folder (tokenizer.save_pretrained)")
    log.info("--model_name %s has no tokenizer files: using the GPT-2 BPE bundled with l2kd (%s), which matches its "
             "%d-token vocabulary", model_name, RESOURCE_BPE, vocab)
    return bundled_gpt2_tokenizer()


@dataclass
class SpecialIds:
    """Ids of LAMOL's special tokens in one tokenizer."""

    eos: int
    ans: int
    pad: int
    unk: int
    sep: int  # -1 when --use_sep is off
    gen: Dict[str, int]  # task -> generation token id


def load_base_tokenizer(model_name: str) -> PreTrainedTokenizer:
    """GPT-2 BPE for gpt2/gpt2-medium/tiny-gpt2 (bundled, offline); a local dir's own tokenizer
    (or the bundled BPE, see :func:`bundled_for_bare_model_dir`); openai-gpt from the local
    Hugging Face cache."""
    if model_name in ("gpt2", "gpt2-medium", "tiny-gpt2"):
        return bundled_gpt2_tokenizer()
    bare = bundled_for_bare_model_dir(model_name)
    if bare is not None:
        return bare
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_name, local_files_only=True)
    except Exception as exc:  # pragma: no cover - depends on the user's cache
        raise FileNotFoundError(
            f"--model_name {model_name}: no tokenizer found locally (a model directory or the Hugging Face cache)"
        ) from exc


def add_special_tokens(tok: PreTrainedTokenizer, tasks: Sequence[str], add_task_tokens: bool,
                       use_sep: bool) -> SpecialIds:
    """Add LAMOL's tokens (idempotent) and the generation tokens of ``tasks``; return their ids."""
    wanted: List[str] = [ANS, PAD, UNK] + ([SEP] if use_sep else [])
    wanted += [gen_token_for(t, add_task_tokens) for t in tasks]
    vocab = tok.get_vocab()
    new = [w for w in dict.fromkeys(wanted) if w not in vocab]
    if new:
        tok.add_tokens(new)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    ids = lambda w: tok.convert_tokens_to_ids(w)  # noqa: E731
    return SpecialIds(
        eos=ids(tok.eos_token), ans=ids(ANS), pad=ids(PAD), unk=ids(UNK), sep=ids(SEP) if use_sep else -1,
        gen={t: ids(gen_token_for(t, add_task_tokens)) for t in tasks},
    )
