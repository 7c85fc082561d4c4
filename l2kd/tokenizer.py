"""GPT-2 byte-level BPE with LAMOL's special tokens.

Ids as the original: ``<|endoftext|>`` = 50256 (eos), then ``__ans__`` 50257, ``__pad__``
50258, ``__unk__`` 50259 (``__sep__`` 50260 with ``--use_sep``), then the generation
tokens (``__gen__`` or one ``__<task>__`` per task with ``--add_task_tokens``) in task
order (K:settings.py:133-147, K:utils.py:33).

Text is encoded and decoded as pytorch-transformers 1.2.0's GPT2Tokenizer, which the original
uses (:class:`OriginalGPT2Tokenizer`); current transformers tokenizes the same text
differently (no space in front of the text, no stripping around added tokens).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from transformers import GPT2Tokenizer, PreTrainedTokenizer

from l2kd.bases import ensure_packaged_base, is_packaged_base

log = logging.getLogger("l2kd")
RESOURCE_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources", "gpt2-bpe")
EOS = "<|endoftext|>"
ANS, PAD, UNK, SEP, GEN = "__ans__", "__pad__", "__unk__", "__sep__", "__gen__"


def gen_token_for(task: str, add_task_tokens: bool) -> str:
    """The generation token that starts a task's LM examples and pseudo-samples."""
    return f"__{task}__" if add_task_tokens else GEN


def bundled_gpt2_tokenizer(bpe_dir: str = RESOURCE_BPE, names: Tuple[str, str] = ("encoder.json", "vocab.bpe")
                           ) -> PreTrainedTokenizer:
    """The real GPT-2 tokenizer built offline from its vocabulary and merges files
    (``names`` inside ``bpe_dir``; a saved folder names them ``vocab.json``, ``merges.txt``)."""
    enc, merges = os.path.join(bpe_dir, names[0]), os.path.join(bpe_dir, names[1])
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


def _byte_decoder() -> Dict[str, int]:
    """Character -> byte of GPT-2's byte-level alphabet: the printable Latin-1 bytes stand for
    themselves, every other byte for the code points 256, 257, ... in byte order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTE_OF = _byte_decoder()
# pytorch-transformers 1.2.0's decode clean-up (applied in this order, on by default).
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class _Wrapped:
    """A Hugging Face tokenizer (``base``) behind l2kd's ``encode``: every other attribute is the base's."""

    def __init__(self, base: PreTrainedTokenizer) -> None:
        self.base = base

    def __getattr__(self, name: str):
        base = self.__dict__.get("base")
        if base is None:  # during copy/unpickling, before __init__ state is restored
            raise AttributeError(name)
        return getattr(base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"


class OriginalGPT2Tokenizer(_Wrapped):
    """A GPT-2 byte-level BPE tokenizer that encodes and decodes text as pytorch-transformers
    1.2.0 did, wrapping a current transformers tokenizer (``base``).

    ``encode``: the text is cut at every added token, in the order they were added, then at
    the special tokens (``<|endoftext|>``); each remaining piece is stripped of surrounding
    whitespace and BPE-encoded with one space in front. So ``"what is"`` starts with `` what``
    (644, not 10919) and ``"a__ans__b"`` is `` a``, ``__ans__``, `` b``.

    ``decode``: the byte-level text of vocabulary ids, `` " " + token`` for each added token,
    then 1.2.0's clean-up of spaces before punctuation and in contractions (``" ,"`` -> ``","``,
    ``" do not"`` -> ``" don't"``), so a gold answer and a prediction decoded the same way match.

    Everything else (``add_tokens``, ``save_pretrained``, ``len``, token <-> id lookups) is the
    base tokenizer's, so saved folders load with plain transformers.

    One deliberate difference: 1.2.0 turns a whitespace-only text into its *first added token*
    (``__ans__`` in LAMOL), an artefact of how it splits around added tokens; here such a text
    encodes to no tokens, like the empty string.
    """

    def __init__(self, base: PreTrainedTokenizer) -> None:
        super().__init__(base)
        self._tables_key: Optional[int] = None

    def _tables(self) -> None:
        """(Re)build the split order and the added-token table after tokens were added."""
        key = len(self.base)
        if self.__dict__.get("_tables_key") == key:
            return
        n_vocab = self.base.vocab_size  # BPE vocabulary, without added tokens
        added = sorted((i, t) for t, i in self.base.get_added_vocab().items() if i >= n_vocab)
        names = [t for _, t in added]
        specials = [t for t in dict.fromkeys(self.base.all_special_tokens) if t not in names]
        self._split_order: List[str] = names + specials
        self._whole = set(self._split_order)
        self._added_by_id: Dict[int, str] = dict(added)
        self._tables_key = key

    def _pieces(self, text: str) -> List[str]:
        """1.2.0's split: added/special tokens as themselves, the text between them stripped."""
        self._tables()
        if not text:
            return []
        if not self._split_order:
            return [text]
        pieces = [text]
        for token in self._split_order:
            cut: List[str] = []
            for piece in pieces:
                if piece in self._whole:
                    cut.append(piece)
                    continue
                parts = piece.split(token)
                for i, part in enumerate(parts):
                    part = part.strip()
                    if part:
                        cut.append(part)
                    if i < len(parts) - 1:
                        cut.append(token)
            pieces = cut
        return pieces

    def _bpe(self, texts: List[str]) -> List[List[int]]:
        """Plain byte-level BPE ids of each text (which contain no added or special token)."""
        backend = getattr(self.base, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [self.base.convert_tokens_to_ids(self.base._tokenize(t)) for t in texts]  # python tokenizer

    def encode(self, text: str, add_special_tokens: bool = False, **kwargs) -> List[int]:
        """Ids of ``text`` as 1.2.0's ``GPT2Tokenizer.encode`` (GPT-2 adds no special tokens)."""
        pieces = self._pieces(text)
        plain = [i for i, p in enumerate(pieces) if p not in self._whole]
        bpe = dict(zip(plain, self._bpe([" " + pieces[i] for i in plain]))) if plain else {}
        out: List[int] = []
        for i, p in enumerate(pieces):
            if i in bpe:
                out.extend(bpe[i])
            else:
                out.append(self.base.convert_tokens_to_ids(p))
        return out

    def tokenize(self, text: str, **kwargs) -> List[str]:
        """Token strings of :meth:`encode`."""
        return self.base.convert_ids_to_tokens(self.encode(text))

    def __call__(self, text: Union[str, Sequence[str]], **kwargs) -> Dict[str, list]:
        """``{"input_ids", "attention_mask"}`` of one text or a list of texts (no padding)."""
        if isinstance(text, str):
            ids = self.encode(text)
            return {"input_ids": ids, "attention_mask": [1] * len(ids)}
        rows = [self.encode(t) for t in text]
        return {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}

    def _bytes_text(self, ids: List[int]) -> str:
        tokens = self.base.convert_ids_to_tokens(ids)
        data = bytes(_BYTE_OF[c] for t in tokens if t for c in t if c in _BYTE_OF)
        return data.decode("utf-8", errors="replace")

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = True,
               **kwargs) -> str:
        """Text of ``token_ids`` as 1.2.0's ``decode`` (see the class docstring)."""
        self._tables()
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        skip = set(self.base.all_special_ids) if skip_special_tokens else set()
        parts: List[str] = []
        run: List[int] = []
        for i in token_ids:
            i = int(i)
            if i in skip:
                continue
            if i in self._added_by_id:
                if run:
                    parts.append(self._bytes_text(run))
                    run = []
                parts.append(" " + self._added_by_id[i])
            else:
                run.append(i)
        if run:
            parts.append(self._bytes_text(run))
        text = "".join(parts)
        if clean_up_tokenization_spaces:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text

    def batch_decode(self, sequences, **kwargs) -> List[str]:
        return [self.decode(s, **kwargs) for s in sequences]


def is_gpt2_bpe(tok) -> bool:
    """True for GPT-2 byte-level BPE tokenizers (the ones 1.2.0's GPT2Tokenizer stands for)."""
    return type(tok).__name__ in ("GPT2Tokenizer", "GPT2TokenizerFast")


def is_byte_level_bpe(tok) -> bool:
    """True for byte-level BPE tokenizers over GPT-2's byte alphabet: GPT-2's own, and those of
    SmolLM2, Qwen2 and Llama 3 (their backend decodes with ``ByteLevel``). They are encoded and
    decoded as GPT-2 is (:class:`OriginalGPT2Tokenizer`), so every model sees LAMOL's texts
    split and spaced alike."""
    if is_gpt2_bpe(tok):
        return True
    backend = getattr(tok, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


class PlainTokenizer(_Wrapped):
    """Any other Hugging Face tokenizer (SentencePiece, WordPiece, openai-gpt's BPE) with
    ``encode`` adding no special tokens: a Llama tokenizer would otherwise put ``<s>`` in front
    of every piece (context, question, answer) that LAMOL's format encodes separately."""

    def encode(self, text: str, add_special_tokens: bool = False, **kwargs) -> List[int]:
        """Ids of ``text`` without the tokenizer's BOS/EOS."""
        return self.base.encode(text, add_special_tokens=add_special_tokens, **kwargs)

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        return self.base.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences, **kwargs) -> List[str]:
        return [self.decode(s, **kwargs) for s in sequences]


def wrap_tokenizer(tok: PreTrainedTokenizer):
    """The tokenizer as l2kd encodes with it: :class:`OriginalGPT2Tokenizer` for byte-level BPE
    (:func:`is_byte_level_bpe`), else :class:`PlainTokenizer`."""
    return OriginalGPT2Tokenizer(tok) if is_byte_level_bpe(tok) else PlainTokenizer(tok)


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
    (or the bundled BPE, see :func:`bundled_for_bare_model_dir`); a base named in
    :data:`l2kd.bases.BASES` from its converted folder; openai-gpt from the local Hugging Face
    cache. Byte-level BPE tokenizers come wrapped in :class:`OriginalGPT2Tokenizer` (the
    original's encoding), others in :class:`PlainTokenizer` (:func:`wrap_tokenizer`)."""
    if model_name in ("gpt2", "gpt2-medium", "tiny-gpt2"):
        return OriginalGPT2Tokenizer(bundled_gpt2_tokenizer())
    if is_packaged_base(model_name):
        model_name = ensure_packaged_base(model_name)
    bare = bundled_for_bare_model_dir(model_name)
    if bare is not None:
        return OriginalGPT2Tokenizer(bare)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_name, local_files_only=True)
    except Exception as exc:
        legacy = legacy_gpt2_tokenizer(model_name) if os.path.isdir(model_name) else None
        if legacy is not None:
            return OriginalGPT2Tokenizer(legacy)
        raise FileNotFoundError(
            f"--model_name {model_name}: no tokenizer found locally (a model directory or the Hugging Face cache): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    # openai-gpt keeps its own tokenizer (1.2.0's OpenAIGPTTokenizer is not reproduced).
    return wrap_tokenizer(tok)


def legacy_gpt2_tokenizer(path: str) -> Optional[PreTrainedTokenizer]:
    """A GPT-2 tokenizer folder written by pytorch-transformers 1.x (``vocab.json``, ``merges.txt``,
    ``added_tokens.json``), which current transformers does not load; None if it is not one."""
    if not all(os.path.isfile(os.path.join(path, n)) for n in ("vocab.json", "merges.txt")):
        return None
    tok = bundled_gpt2_tokenizer(path, ("vocab.json", "merges.txt"))
    added_path = os.path.join(path, "added_tokens.json")
    if os.path.isfile(added_path):
        with open(added_path, encoding="utf-8") as f:
            added = json.load(f)
        for token, idx in sorted(added.items(), key=lambda kv: kv[1]):
            if token not in tok.get_vocab():
                tok.add_tokens([token])
            if tok.convert_tokens_to_ids(token) != idx:
                raise ValueError(f"{added_path}: {token!r} has id {idx} there but "
                                 f"{tok.convert_tokens_to_ids(token)} once added (ids must follow the vocabulary)")
    return tok


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
