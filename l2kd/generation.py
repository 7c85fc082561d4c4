"""Batched, KV-cached decoding for pseudo-samples and answers.

Prompts of different lengths are left-padded with an attention mask and matching position
ids; each step runs the LM head on the last position only and samples with
:func:`l2kd.ops.top_k_sample` (LAMOL's top-k, then nucleus, filtered distribution; k=1 is
greedy). Finished rows (eos, or their length limit) leave the batch, so a few long samples
do not keep the whole batch busy.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from l2kd.config import SamplingConfig
from l2kd.ops import top_k_sample, top_k_sample_ref
from l2kd.runtime import bar_options

_PROGRESS: dict = {}  # the bar of the enclosing progress() block: {"desc", "quiet"}


@contextmanager
def progress(desc: str, quiet: bool) -> Iterator[None]:
    """Show a progress bar (sequences done) over every :func:`generate` call in the block:
    pseudo-sample generation and Seq-KD decoding take minutes and would otherwise be silent.
    A block (not an argument) so that callers such as the answer decoder need no new parameter."""
    before = dict(_PROGRESS)
    _PROGRESS.update(desc=desc, quiet=quiet)
    try:
        yield
    finally:
        _PROGRESS.clear()
        _PROGRESS.update(before)


def _cache_kwarg(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument (``cache`` in newer transformers, ``past_key_values`` before)."""
    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sample(logits: torch.Tensor, cfg: SamplingConfig, generator: Optional[torch.Generator]) -> torch.Tensor:
    v = logits.shape[-1]
    k = v if cfg.top_k <= 0 else min(cfg.top_k, v)  # the CLI's "0 = no top-k", clamped as the original
    fn = top_k_sample if cfg.use_kernels else top_k_sample_ref
    return fn(logits, k, top_p=cfg.top_p, temperature=cfg.temperature, generator=generator)


@torch.no_grad()
def generate(model: PreTrainedModel, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
             eos_id: int, pad_id: int, cfg: SamplingConfig, generator: Optional[torch.Generator] = None,
             batch_size: int = 64) -> List[List[int]]:
    """Continue each prompt until eos (not included) or ``max_new_tokens[i]`` new tokens.

    Returns the new tokens of each prompt, in input order.
    """
    device = next(model.parameters()).device
    out: List[List[int]] = [[] for _ in prompts]
    # Group prompts of similar length to limit padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bar = tqdm(total=len(prompts), desc=_PROGRESS.get("desc"),
               **bar_options(_PROGRESS.get("quiet", True) or "desc" not in _PROGRESS))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        _generate_batch(model, [prompts[i] for i in idx], [max_new_tokens[i] for i in idx], eos_id, pad_id,
                        cfg, generator, device, [out[i] for i in idx])
        bar.update(len(idx))
    bar.close()
    return out


def _generate_batch(model, prompts, limits, eos_id, pad_id, cfg, generator, device, sinks) -> None:
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    head = model.get_output_embeddings()
    cache_arg = _cache_kwarg(model)
    alive = torch.arange(b, device=device)  # rows of the original batch still generating
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, h = getattr(out, cache_arg), out.last_hidden_state[:, -1]
    last_pos = pos[:, -1]
    step = 0
    while alive.numel():
        logits = head(h).float()
        nxt = _sample(logits, cfg, generator)
        step += 1
        nxt_cpu = nxt.tolist()
        done = []
        for r, (row, tok) in enumerate(zip(alive.tolist(), nxt_cpu)):
            if tok == eos_id:
                done.append(r)
                continue
            sinks[row].append(tok)
            if step >= limits[row]:
                done.append(r)
        gone = set(done)
        keep = [r for r in range(alive.numel()) if r not in gone]
        if not keep:
            break
        if done:
            sel = torch.tensor(keep, device=device)
            alive, nxt, mask, last_pos = alive[sel], nxt[sel], mask[sel], last_pos[sel]
            past.batch_select_indices(sel)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_pos = last_pos + 1
        out = model.base_model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                               use_cache=True, **{cache_arg: past})
        past, h = getattr(out, cache_arg), out.last_hidden_state[:, -1]
