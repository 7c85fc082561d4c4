"""A pretrained tiny GPT-2 built offline: plain language-model training on bundled English text.

With no pretrained GPT-2 available, ``tiny-gpt2`` starts from random weights, and a teacher
trained from random weights on a few hundred examples gives nearly uniform soft targets.
This module trains the same tiny architecture (real 50257-token GPT-2 vocabulary) as a plain
LM on sentences that are *not* the study's tasks (RNNLG laptop, E2E NLG, WOZ user and system
turns; ``l2kd/resources/pretrain/README.md``), and saves it as a ``save_pretrained`` folder
that ``--model_name DIR`` loads like GPT-2.

Everything a build depends on is its :class:`Recipe` plus the bytes of its two text files;
:func:`recipe_checksum` hashes both, and names the cache folder a build goes into
(:func:`ensure_base`). The training is resumable: the state (model, optimizer, step, torch
random state) is written atomically every ``checkpoint_every`` steps, and the batch of step
``s`` is a function of ``(seed, s)`` only, so a run killed at any point and restarted
continues exactly as the uninterrupted run would.

The loss is the training loop's: hidden states of the body, then the chunked LM-head
cross-entropy (:func:`l2kd.ops.linear_cross_entropy`), never ``[N, V]`` logits.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from l2kd.io_utils import (atomic_torch_save, atomic_write_json, atomic_write_text, file_sha256, read_json_object,
                           remove_stale_temps, user_cache_dir)
from l2kd.losses import hidden_states
from l2kd.ops.linear_cross_entropy import linear_cross_entropy
from l2kd.runtime import bar_options
from l2kd.tokenizer import EOS, GPT2_VOCAB_SIZE, OriginalGPT2Tokenizer, bundled_gpt2_tokenizer

log = logging.getLogger("l2kd")
PACKAGE = os.path.dirname(os.path.abspath(__file__))
RESOURCE_CORPUS = os.path.join(PACKAGE, "resources", "pretrain")
SHIPPED_BASE = os.path.join(PACKAGE, "resources", "pretrained", "tiny-gpt2-pretrained")
TRAIN_FILE, HELDOUT_FILE = "train.txt", "heldout.txt"
STATE_FILE = "pretrain_state.pt"  # resumable state of an unfinished build
RECORD_FILE = "l2kd_pretrain.json"  # recipe, checksum, measured figures of a finished build
HELDOUT_EVERY = 20  # one sentence in 20 (chosen by a hash of its text) is held out


# ----------------------------------------------------------------------------- corpus

def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _rnnlg_refs(path: str) -> List[str]:
    from l2kd.data.convert import read_rnnlg_json

    return [ref for _, *refs in read_rnnlg_json(path) for ref in refs]


def _e2e_refs(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [r[1] for r in rows[1:] if len(r) >= 2]


def _woz_turns(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        dialogues = json.load(f)
    out = []
    for d in dialogues:
        for turn in d["dialogue"]:
            out += [turn.get("system_transcript", ""), turn.get("transcript", "")]
    return out


# (what, reader, path under the raw data folder): the non-study sources, in a fixed order
CORPUS_SOURCES: Tuple[Tuple[str, Callable[[str], List[str]], str], ...] = (
    ("rnnlg laptop train", _rnnlg_refs, "rnnlg/laptop/train.json"),
    ("rnnlg laptop test", _rnnlg_refs, "rnnlg/laptop/test.json"),
    ("e2e dev", _e2e_refs, "e2e/devset.csv"),
    ("e2e test", _e2e_refs, "e2e/testset_w_refs.csv"),
    ("woz train", _woz_turns, "woz/woz_train_en.json"),
    ("woz validate", _woz_turns, "woz/woz_validate_en.json"),
    ("woz test", _woz_turns, "woz/woz_test_en.json"),
)


def is_heldout(sentence: str) -> bool:
    """Whether ``sentence`` belongs to the held-out split (a stable hash, not its position)."""
    return int(hashlib.sha256(sentence.encode("utf-8")).hexdigest()[:8], 16) % HELDOUT_EVERY == 0


def build_corpus(raw_dir: str, out_dir: str = RESOURCE_CORPUS) -> Dict[str, int]:
    """Write ``train.txt`` / ``heldout.txt`` (one sentence a line, whitespace-normalised,
    duplicates dropped so no sentence is in both splits) from the raw releases under
    ``raw_dir``; deterministic. Returns the sentence counts per source and split."""
    seen, train, held = set(), [], []
    counts: Dict[str, int] = {}
    for what, reader, rel in CORPUS_SOURCES:
        n = 0
        for s in map(_clean, reader(os.path.join(raw_dir, rel))):
            if not s or s in seen:
                continue
            seen.add(s)
            (held if is_heldout(s) else train).append(s)
            n += 1
        counts[what] = n
    atomic_write_text(os.path.join(out_dir, TRAIN_FILE), "\n".join(train) + "\n")
    atomic_write_text(os.path.join(out_dir, HELDOUT_FILE), "\n".join(held) + "\n")
    counts.update(train=len(train), heldout=len(held))
    return counts


def read_sentences(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [ln for ln in f.read().split("\n") if ln.strip()]


# ----------------------------------------------------------------------------- recipe

@dataclass(frozen=True)
class Recipe:
    """Everything that determines a built base model (with the bytes of its text files)."""

    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    n_positions: int = 512
    block_size: int = 128  # tokens per training sequence (sentences packed, eos between them)
    batch_size: int = 16  # sequences per step
    steps: int = 300  # 0.64 epoch of the 0.96M-token corpus (614k tokens); see docs/pretraining.md for the timing
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    max_train_sentences: int = 0  # 0 = all (a miniature recipe for tests uses a few)
    max_heldout_sentences: int = 0
    corpus_dir: str = RESOURCE_CORPUS  # where train.txt / heldout.txt are (not hashed: their bytes are)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Recipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"Recipe: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.block_size > self.n_positions:
            raise ValueError(f"Recipe: block_size {self.block_size} exceeds n_positions {self.n_positions}")

    def model_config(self) -> GPT2Config:
        return GPT2Config(vocab_size=GPT2_VOCAB_SIZE, bos_token_id=50256, eos_token_id=50256, n_layer=self.n_layer,
                          n_head=self.n_head, n_embd=self.n_embd, n_positions=self.n_positions)

    def learning_keys(self) -> Dict[str, object]:
        """The fields that change the weights (the corpus folder's path does not; its files do)."""
        d = dataclasses.asdict(self)
        d.pop("corpus_dir")
        return d


# Shipped with l2kd and used by the demo (docs/pretraining.md says how it was chosen).
DEFAULT_RECIPE = Recipe()
# Builds in seconds: for tests.
MINI_RECIPE = Recipe(n_layer=1, n_head=2, n_embd=16, n_positions=64, block_size=32, batch_size=4, steps=6,
                     warmup_steps=2, max_train_sentences=200, max_heldout_sentences=40)



def recipe_checksum(recipe: Recipe) -> str:
    """sha256 of the recipe's learning keys and of its two text files' contents."""
    files = {name: file_sha256(os.path.join(recipe.corpus_dir, name)) for name in (TRAIN_FILE, HELDOUT_FILE)}
    blob = json.dumps({"recipe": recipe.learning_keys(), "files": files, "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- data

def encode_stream(tok: OriginalGPT2Tokenizer, sentences: Sequence[str], eos_id: int) -> torch.Tensor:
    """All sentences as one token stream, ``<|endoftext|>`` after each (GPT-2's document separator)."""
    out: List[int] = []
    for s in sentences:
        out += tok.encode(s)
        out.append(eos_id)
    return torch.tensor(out, dtype=torch.long)


def blocks_of(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[n, block_size + 1]`` windows (input = ``[:-1]``, target = ``[1:]``), consecutive, the
    last partial one dropped (at least one window when the stream is long enough)."""
    n = (stream.numel() - 1) // block_size
    if n < 1:
        raise ValueError(f"corpus too small: {stream.numel()} tokens for blocks of {block_size}")
    idx = torch.arange(n)[:, None] * block_size + torch.arange(block_size + 1)[None, :]
    return stream[idx]


def batch_indices(n_blocks: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Block indices of step ``step`` (0-based): epochs of a seeded permutation, a pure function
    of ``(seed, step)`` so a resumed run draws the same batches."""
    per_epoch = max(1, n_blocks // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[pos * batch_size:(pos + 1) * batch_size]


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to a tenth of it at the last step."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    frac = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def lm_loss(model: GPT2LMHeadModel, blocks: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``blocks`` ``[B, L+1]`` through the chunked LM head."""
    h = hidden_states(model, blocks[:, :-1])
    return linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.get_output_embeddings().weight,
                                blocks[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_perplexity(model: GPT2LMHeadModel, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp of the token-mean cross-entropy over every held-out block."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for s in range(0, blocks.shape[0], batch_size):
        b = blocks[s:s + batch_size]
        tokens = b.shape[0] * (b.shape[1] - 1)
        total += float(lm_loss(model, b)) * tokens
        n += tokens
    model.train(was)
    return math.exp(total / n)


# ----------------------------------------------------------------------------- build

def _load_state(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged state file: start afresh rather than fail the build
        log.warning("pretraining: %s cannot be read (%s: %s): starting the build afresh", path,
                    type(exc).__name__, exc)
        return None


def _save_state(path: str, checksum: str, step: int, model, optimizer, history: List[dict],
                tokens: int, cpu_s: float, wall_s: float) -> None:
    atomic_torch_save(path, {"checksum": checksum, "step": step, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                             "history": history, "tokens": tokens, "cpu_s": cpu_s, "wall_s": wall_s})


def build_base(recipe: Recipe, out_dir: str, checkpoint_every: int = 50, eval_every: int = 0, quiet: bool = False,
               stop_after: Optional[int] = None) -> Dict[str, object]:
    """Train the base model of ``recipe`` into ``out_dir`` (resuming ``pretrain_state.pt`` of an
    interrupted build of the same recipe) and save it: ``config.json`` + fp32 ``model.safetensors``
    + ``l2kd_pretrain.json``. ``stop_after`` ends after that many steps without saving the model
    (tests). Returns the record written to ``l2kd_pretrain.json``."""
    checksum = recipe_checksum(recipe)
    os.makedirs(out_dir, exist_ok=True)
    # a build killed inside an atomic write leaves its half-written temp file behind
    if remove_stale_temps(out_dir):
        log.info("pretraining: removed temp files an interrupted build left in %s", out_dir)
    state_path = os.path.join(out_dir, STATE_FILE)
    tok = OriginalGPT2Tokenizer(bundled_gpt2_tokenizer())
    eos = tok.convert_tokens_to_ids(EOS)
    train_s = read_sentences(os.path.join(recipe.corpus_dir, TRAIN_FILE))
    held_s = read_sentences(os.path.join(recipe.corpus_dir, HELDOUT_FILE))
    if recipe.max_train_sentences:
        train_s = train_s[: recipe.max_train_sentences]
    if recipe.max_heldout_sentences:
        held_s = held_s[: recipe.max_heldout_sentences]
    train_b = blocks_of(encode_stream(tok, train_s, eos), recipe.block_size)
    held_b = blocks_of(encode_stream(tok, held_s, eos), recipe.block_size)
    log.info("pretraining: %d training blocks of %d tokens (%d sentences), %d held-out blocks; %d steps of %d "
             "(%.1f epochs)", train_b.shape[0], recipe.block_size, len(train_s), held_b.shape[0], recipe.steps,
             recipe.batch_size, recipe.steps * recipe.batch_size / train_b.shape[0])

    torch.manual_seed(recipe.seed)
    model = GPT2LMHeadModel(recipe.model_config())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.learning_rate)
    step, history, tokens, cpu_s, wall_s = 0, [], 0, 0.0, 0.0
    state = _load_state(state_path)
    if state is not None and state.get("checksum") != checksum:
        log.warning("pretraining: %s belongs to another recipe (checksum %s): starting afresh", state_path,
                    str(state.get("checksum"))[:12])
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, history, tokens = state["step"], state["history"], state["tokens"]
        cpu_s, wall_s = state["cpu_s"], state["wall_s"]
        log.info("pretraining: resuming %s at step %d of %d", state_path, step, recipe.steps)
    model.train()
    end = recipe.steps if stop_after is None else min(recipe.steps, step + stop_after)
    bar = tqdm(range(step, end), desc="pretraining", initial=step, total=recipe.steps, **bar_options(quiet))
    c0, w0 = time.process_time(), time.time()
    for step in bar:
        lr = lr_at(recipe, step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = train_b[batch_indices(train_b.shape[0], recipe.batch_size, recipe.seed, step)]
        loss = lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        tokens += batch.shape[0] * (batch.shape[1] - 1)
        done = step + 1
        now_cpu, now_wall = cpu_s + time.process_time() - c0, wall_s + time.time() - w0
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / max(now_wall, 1e-9):.0f}", refresh=False)
        if eval_every and done % eval_every == 0 and done < recipe.steps:
            ppl = heldout_perplexity(model, held_b)
            history.append({"step": done, "loss": loss.item(), "heldout_ppl": ppl})
            log.info("pretraining step %d: loss %.3f, held-out perplexity %.1f, %.0f tokens/s", done, loss.item(),
                     ppl, tokens / max(now_wall, 1e-9))
        if checkpoint_every and done % checkpoint_every == 0 and done < recipe.steps:
            _save_state(state_path, checksum, done, model, optimizer, history, tokens, now_cpu, now_wall)
    bar.close()
    cpu_s, wall_s = cpu_s + time.process_time() - c0, wall_s + time.time() - w0
    if end < recipe.steps:  # stopped early on request: leave a resumable state
        _save_state(state_path, checksum, end, model, optimizer, history, tokens, cpu_s, wall_s)
        return {"stopped_at": end}
    ppl = heldout_perplexity(model, held_b)
    record = {
        "recipe": recipe.learning_keys(), "checksum": checksum, "steps": recipe.steps, "train_tokens_seen": tokens,
        "train_blocks": int(train_b.shape[0]), "heldout_tokens": int(held_b.shape[0] * recipe.block_size),
        "heldout_ppl": ppl, "final_loss": loss.item(), "wall_s": wall_s, "cpu_s": cpu_s,
        "tokens_per_s": tokens / max(wall_s, 1e-9), "tokens_per_cpu_s": tokens / max(cpu_s, 1e-9),
        "threads": torch.get_num_threads(), "history": history,
    }
    log.info("pretraining done: held-out perplexity %.1f (%d held-out tokens), %.0f tokens/s (%.0f per CPU-second), "
             "%.0f s wall, %.0f s CPU", ppl, record["heldout_tokens"], record["tokens_per_s"],
             record["tokens_per_cpu_s"], wall_s, cpu_s)
    save_base(model, out_dir, record)
    if os.path.isfile(state_path):
        os.unlink(state_path)
    return record


def save_base(model: GPT2LMHeadModel, out_dir: str, record: Dict[str, object], half: bool = False) -> None:
    """A ``save_pretrained`` folder (``config.json``, ``model.safetensors``; fp16 weights with
    ``half``) and its record, the record last (its presence means the folder is complete)."""
    record = dict(record)
    if half:  # a copy: the caller's model stays fp32
        import copy

        model = copy.deepcopy(model).half()
    model.save_pretrained(out_dir, safe_serialization=True)
    record["weights_sha256"] = file_sha256(os.path.join(out_dir, "model.safetensors"))
    record["weights_dtype"] = "float16" if half else "float32"
    atomic_write_json(os.path.join(out_dir, RECORD_FILE), record)


# ----------------------------------------------------------------------------- finding a base

def cache_root() -> str:
    """``$XDG_CACHE_HOME/l2kd/pretrained`` (``~/.cache/l2kd/pretrained`` when unset)."""
    return user_cache_dir("pretrained")


def read_record(folder: str) -> Optional[Dict[str, object]]:
    """The ``l2kd_pretrain.json`` of a finished build, or None (no build, or unreadable)."""
    return read_json_object(os.path.join(folder, RECORD_FILE))


def verify_base(folder: str, checksum: str) -> Tuple[bool, str]:
    """Whether ``folder`` holds a finished build of the recipe ``checksum`` whose weights file
    is the one recorded; the reason when not."""
    record = read_record(folder)
    if record is None:
        return False, f"{folder}: no {RECORD_FILE}"
    if record.get("checksum") != checksum:
        return False, (f"{folder}: built from another recipe or corpus (checksum {str(record.get('checksum'))[:12]}, "
                       f"this one {checksum[:12]})")
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights) or file_sha256(weights) != record.get("weights_sha256"):
        return False, f"{folder}: model.safetensors is missing or is not the file the build recorded"
    return True, ""


def ensure_base(recipe: Recipe = DEFAULT_RECIPE, shipped: Optional[str] = SHIPPED_BASE,
                cache: Optional[str] = None, quiet: bool = False) -> str:
    """A folder holding ``recipe``'s base model, for ``--model_name``: the copy shipped with
    l2kd when it is this recipe's, else the user's cache folder ``<cache>/<checksum[:16]>``
    (built there the first time, reused after; an interrupted build resumes)."""
    checksum = recipe_checksum(recipe)
    if shipped:
        ok, why = verify_base(shipped, checksum)
        if ok:
            log.info("pretrained base: %s (shipped with l2kd, verified)", shipped)
            return shipped
        if os.path.isdir(shipped):
            log.warning("pretrained base shipped with l2kd not used: %s", why)
    folder = os.path.join(cache or cache_root(), checksum[:16])
    ok, why = verify_base(folder, checksum)
    if ok:
        log.info("pretrained base: %s (cached)", folder)
        return folder
    log.info("pretrained base: building into %s (%s)", folder, why)
    build_base(recipe, folder, quiet=quiet)
    return folder
