"""Batched, KV-cached decoding for pseudo-samples and answers, with stopping decided on the device.

Prompts of different lengths are left-padded with an attention mask and matching position
ids; each step runs the LM head on the last position only and samples with
:func:`l2kd.ops.top_k_sample` (LAMOL's top-k, then nucleus, filtered distribution; k=1 is
greedy).

No token is read back to the host while decoding: the sampled ids stay on the device (one
``[B]`` tensor per step, stacked whenever the batch changes), and which rows are finished (eos,
their length limit, or a row that cannot be sampled) is a device bool. The host reads that flag
once every ``read_every`` tokens and then drops the finished rows from the batch, so a few long
samples do not keep the whole batch busy; between reads a finished row decodes filler that is
never returned. The ids are read once, at the end of a batch. On a GPU each read waits for every
queued kernel, so reading every token kept the GPU idle while Python prepared the next launch:
there a read comes every 16 tokens. On the CPU a read costs nothing and a finished row's filler
steps do, so there it is every token (``READ_EVERY``). The padding mask goes to the model in its
4-D form for the same reason (:class:`_DecodeMask`).

Rows that cannot be sampled (logits with NaN or ``+inf``, a largest value that overflows once
divided by the temperature, or all ``-inf``): the CUDA sampler returns ``-1`` for them without a
sync, which ends the row and makes the next read raise :class:`SamplingFailure`, naming the task
and what to try; the CPU kernel and the reference sampler raise at once, and that becomes the
same :class:`SamplingFailure`. (The reference sampler checks its input on the host every token:
three reads, see :mod:`l2kd.ops.top_k_sample`.)

Randomness: a row that has finished but not yet left the batch still draws its uniform, so the
generator advances by the batch size of the last read, not by the number of unfinished rows;
a seeded run repeats exactly, and each unfinished row's draw has the same distribution as
before.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from l2kd.config import SamplingConfig
from l2kd.ops import top_k_sample, top_k_sample_ref
from l2kd.runtime import bar_options

if TYPE_CHECKING:  # transformers' modeling module takes seconds to import; only types use it here
    from transformers import PreTrainedModel

_PROGRESS: dict = {}  # the bar of the enclosing progress() block: {"desc", "quiet"}
READ_EVERY = {"cpu": 1}  # tokens decoded between two reads of the finished flags, by device type
READ_EVERY_DEFAULT = 16


class SamplingFailure(FloatingPointError):
    """The model's next-token scores of a row are NaN or infinite: nothing can be sampled."""


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


def _cache_kwarg(model: "PreTrainedModel") -> str:
    """Name of the KV-cache argument (``cache`` in newer transformers, ``past_key_values`` before)."""
    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sample(logits: torch.Tensor, cfg: SamplingConfig, generator: Optional[torch.Generator]) -> torch.Tensor:
    v = logits.shape[-1]
    k = v if cfg.top_k <= 0 else min(cfg.top_k, v)  # the CLI's "0 = no top-k", clamped as the original
    fn = top_k_sample if cfg.use_kernels else top_k_sample_ref
    return fn(logits, k, top_p=cfg.top_p, temperature=cfg.temperature, generator=generator)


def unsampleable_rows(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B]`` bool on the device: rows the sampler rejects (any NaN, any ``+inf``, all ``-inf``,
    or a largest value that overflows once divided by ``temperature``). The row maximum is NaN,
    ``+inf`` or ``-inf`` in exactly these cases, so one reduction finds them without a sync."""
    return ~torch.isfinite(logits.float().amax(dim=-1) / temperature)


def failure_message(task: Optional[str], n_bad: int, n_rows: int, step: int) -> str:
    """What a :class:`SamplingFailure` says: where, how many rows, and what to try."""
    where = f"[{task}] " if task else ""
    return (f"{where}decoding stopped: the model's next-token scores are NaN or infinite for {n_bad} of {n_rows} "
            f"sequence(s) by new token {step}, so nothing can be sampled. Under mixed precision (the default on a "
            f"GPU) this is usually an fp16 overflow: rerun with --fp32. In fp32 the model has diverged: lower "
            f"--learning_rate or check the data.")


@torch.no_grad()
def generate(model: "PreTrainedModel", prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
             eos_id: int, pad_id: int, cfg: SamplingConfig, generator: Optional[torch.Generator] = None,
             batch_size: int = 64, *, task: Optional[str] = None, read_every: Optional[int] = None
             ) -> List[List[int]]:
    """Continue each prompt until eos (not included) or ``max_new_tokens[i]`` new tokens.

    Returns the new tokens of each prompt, in input order. ``task`` names the work in a
    :class:`SamplingFailure`; ``read_every`` is how many tokens are decoded between two reads
    of the finished flags (the only host synchronisations besides one at the end of a batch;
    None: ``READ_EVERY`` of the model's device type).
    """
    device = next(model.parameters()).device
    if read_every is None:
        read_every = READ_EVERY.get(device.type, READ_EVERY_DEFAULT)
    if read_every < 1:
        raise ValueError(f"generate: read_every must be >= 1, got {read_every}")
    out: List[List[int]] = [[] for _ in prompts]
    # Group prompts of similar length to limit padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bar = tqdm(total=len(prompts), desc=_PROGRESS.get("desc"),
               **bar_options(_PROGRESS.get("quiet", True) or "desc" not in _PROGRESS))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        got = _generate_batch(model, [prompts[i] for i in idx], [int(max_new_tokens[i]) for i in idx], eos_id,
                              pad_id, cfg, generator, device, task, read_every)
        for i, toks in zip(idx, got):
            out[i] = toks
        bar.update(len(idx))
    bar.close()
    return out


def _prefill_inputs(prompts, pad_id: int, device: torch.device):
    """Left-padded ids and mask, built on the host and copied once."""
    b, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    if device.type == "cuda":
        ids, mask = ids.pin_memory(), mask.pin_memory()
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


class _DecodeMask:
    """The keys each decoding step may attend to, for all steps at once.

    Given a 2-D padding mask, transformers checks on the host whether any key is padding before
    every forward (one read per token); a 4-D mask is used as given. For SDPA attention it is a
    bool ``[B, 1, 1, keys]`` view of one preallocated buffer (True = attend), for eager
    attention the additive float form; any other attention implementation gets the 2-D mask.
    """

    def __init__(self, model, prompt_mask: torch.Tensor, max_new: int) -> None:
        self.width = prompt_mask.shape[1]
        ones = prompt_mask.new_ones((prompt_mask.shape[0], max_new))
        self.flat = torch.cat([prompt_mask, ones], dim=1)  # [B, width + max_new], 1 = attend
        impl = getattr(model.config, "_attn_implementation", None)
        self.buf: Optional[torch.Tensor] = None
        if impl == "sdpa":
            self.buf = self.flat.bool()[:, None, None, :]
        elif impl == "eager":
            dtype = next(model.parameters()).dtype
            zero = torch.zeros((), dtype=dtype, device=prompt_mask.device)
            self.buf = zero.masked_fill(self.flat == 0, torch.finfo(dtype).min)[:, None, None, :]

    def select(self, sel: torch.Tensor) -> None:
        """Keep the rows ``sel`` (the batch was compacted)."""
        self.flat = self.flat[sel]
        if self.buf is not None:
            self.buf = self.buf[sel]

    def upto(self, step: int) -> torch.Tensor:
        """The mask of the forward that feeds new token ``step`` (its keys: prompt + ``step`` tokens)."""
        n = self.width + step
        return self.flat[:, :n] if self.buf is None else self.buf[..., :n]


def _checked_sample(logits: torch.Tensor, cfg: SamplingConfig, generator, task: Optional[str], step: int
                    ) -> torch.Tensor:
    """Sample one id per row; ``-1`` for a row the sampler cannot sample (the CUDA kernel's answer,
    found without a sync). The CPU kernel and the reference raise instead: when the logits explain
    it, that is the same :class:`SamplingFailure` the ``-1`` leads to."""
    try:
        return _sample(logits, cfg, generator)
    except (ValueError, RuntimeError) as exc:
        bad = unsampleable_rows(logits, cfg.temperature)
        if bool(bad.any()):
            raise SamplingFailure(failure_message(task, int(bad.sum()), logits.shape[0], step)) from exc
        raise


def _generate_batch(model, prompts, limits: List[int], eos_id: int, pad_id: int, cfg: SamplingConfig,
                    generator, device: torch.device, task: Optional[str], read_every: int) -> List[List[int]]:
    b = len(prompts)
    max_new = max(limits)
    if max_new <= 0:
        return [[] for _ in prompts]
    ids, mask = _prefill_inputs(prompts, pad_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    head = model.get_output_embeddings()
    cache_arg = _cache_kwarg(model)
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, h = getattr(out, cache_arg), out.last_hidden_state[:, -1]
    last_pos = pos[:, -1]
    keys = _DecodeMask(model, mask, max_new)

    # Per batch position, on the device: ``kept`` = new tokens the row returns (its limit until
    # eos ends it, -1 once it could not be sampled), ``done`` = nothing more to record.
    rows = list(range(b))  # original row of each batch position (changes at reads only)
    horizon = max_new  # the largest limit among the rows still in the batch
    limit = torch.tensor(limits, dtype=torch.long, device=device)
    kept = limit.clone()
    done = torch.zeros(b, dtype=torch.bool, device=device)
    new: List[torch.Tensor] = []  # this segment's sampled ids, one [n] tensor per step
    segments = []  # (rows, [steps, n] ids, kept) of each batch composition
    step = 0
    while True:
        step += 1
        nxt = _checked_sample(head(h).float(), cfg, generator, task, step)
        new.append(nxt)
        bad = nxt < 0
        stop = ((nxt == eos_id) | bad) & ~done
        kept = torch.where(stop, torch.where(bad, -1, step - 1), kept)
        done = done | stop | (limit <= step)
        if step >= horizon:  # every row is at its limit: known without a read
            break
        if step % read_every == 0:
            flags = torch.where(done, kept.clamp(max=0), 1).tolist()  # the one read: 1 running, 0 done, -1 failed
            if min(flags) < 0:
                break
            keep = [i for i, f in enumerate(flags) if f > 0]
            if not keep:
                break
            if len(keep) < len(flags):
                segments.append((rows, torch.stack(new), kept))
                new = []
                sel = torch.tensor(keep, device=device)
                done, limit, kept, nxt, last_pos = done[sel], limit[sel], kept[sel], nxt[sel], last_pos[sel]
                keys.select(sel)
                past.batch_select_indices(sel)
                rows = [rows[i] for i in keep]
                horizon = max(limits[r] for r in rows)
        last_pos = last_pos + 1
        # a finished row decodes filler until the next read drops it; -1 is no embedding row
        out = model.base_model(input_ids=nxt.clamp(min=0)[:, None], attention_mask=keys.upto(step),
                               position_ids=last_pos[:, None], use_cache=True, **{cache_arg: past})
        past, h = getattr(out, cache_arg), out.last_hidden_state[:, -1]
    segments.append((rows, torch.stack(new), kept))
    return _collect(segments, b, task, step)


def _collect(segments, b: int, task: Optional[str], step: int) -> List[List[int]]:
    """Each original row's tokens from the segments (one read for all of them)."""
    flat = torch.cat([t for _, ids, kept in segments for t in (kept, ids.flatten())]).tolist()
    out: List[List[int]] = [[] for _ in range(b)]
    n_kept = [0] * b
    at = 0
    for rows, ids, _ in segments:  # a row's last segment holds its final count
        n_steps, n = ids.shape
        for i, r in enumerate(rows):
            n_kept[r] = flat[at + i]
        block = flat[at + n: at + n + n_steps * n]
        for i, r in enumerate(rows):
            out[r].extend(block[i::n])
        at += n + n_steps * n
    failed = sum(k < 0 for k in n_kept)
    if failed:
        raise SamplingFailure(failure_message(task, failed, b, step))
    return [o[:k] for o, k in zip(out, n_kept)]
