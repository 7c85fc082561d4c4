"""Top-k (then nucleus) sampling of one token per row: ``l2kd.ops.top_k_sample``.

Semantics are LAMOL's ``top_k_logits`` + ``torch.multinomial`` with Hugging Face's nucleus
filter (``top_k_top_p_filtering``), in fp32 whatever the logits' dtype:

1. ``y = logits.float() / temperature``;
2. top-k: keep every entry with ``y >= y_(k)``, the k-th largest value of the row. Ties at
   the k-th value are all kept (LAMOL masks ``logits < topk(...)[..., -1:]``), so a row may
   keep more than k entries. ``k = 1`` is greedy; if several entries tie for the maximum
   they are all kept and one of them is drawn uniformly (the same rule, stated once);
3. nucleus, only when ``0 < top_p < 1``: order the kept entries by value descending, ties by
   index ascending (a stable sort), take the cumulative softmax probability and drop every
   entry whose cumulative probability *before* it exceeds ``top_p`` (HF's shift-right of the
   removal mask: the first entry always stays). ``top_p`` 0 or 1 means no nucleus filter;
4. draw one id from the softmax of the surviving entries.

``-inf`` logits are allowed and never drawn. A row whose logits are all ``-inf``, contain
NaN, or contain ``+inf`` (or overflow to ``+inf`` after dividing by the temperature) is an
error (ValueError from the reference, RuntimeError from the CPU kernel). The CUDA kernel
does not synchronise to report it: it returns ``-1`` for such a row.

Randomness: the fused op draws by inverse CDF over the kept entries with one uniform per row.
On CPU (and whenever the generator is not on the logits' CUDA device, or under torch.compile)
that uniform is ``u = torch.rand(B, generator=g)`` drawn here from ``generator`` (on the
generator's device, then moved to the logits' device; with no generator, torch's default
generator of the logits' device). On CUDA the kernel draws it itself (``top_k_sample_seeded``):
Philox4x32-10 of (seed, offset, row) with (seed, offset) reserved from the CUDA generator, so a
sampling step is one kernel launch with the output as its only allocation and no host sync.
Either way a seeded generator repeats exactly.
The reference draws with ``torch.multinomial(..., generator=g)``: the two paths sample the same
distribution, not the same ids.

The compiled kernel finds the k-th value without sorting (a heap of k on CPU, a radix select
on CUDA), keeps no ``[B, V]`` temporary, and applies the nucleus filter as a cut in value order
found by bisection (no sort). See ``csrc/top_k_sample/``.
"""
from __future__ import annotations

from typing import Optional

import torch

from l2kd.ops._extension import has_compiled

__all__ = ["top_k_sample", "top_k_sample_ref"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(logits: torch.Tensor, k: int, top_p: float, temperature: float) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"top_k_sample: logits must be a tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"top_k_sample: logits must be 2-D [B, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in _DTYPES:
        raise TypeError(f"top_k_sample: logits must be float32, float16 or bfloat16, got {logits.dtype}")
    V = logits.shape[1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"top_k_sample: k must be an int, got {type(k).__name__}")
    if k < 1 or k > V:
        raise ValueError(f"top_k_sample: k must satisfy 1 <= k <= V (= {V}), got k = {k}")
    if not (temperature > 0.0) or temperature == float("inf"):
        raise ValueError(f"top_k_sample: temperature must be finite and > 0, got {temperature}")
    if not (0.0 <= top_p <= 1.0):
        raise ValueError(f"top_k_sample: top_p must be in [0, 1], got {top_p}")


def _uniforms(logits: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    B = logits.shape[0]
    if generator is None:
        return torch.rand(B, device=logits.device, dtype=torch.float32)
    u = torch.rand(B, generator=generator, device=generator.device, dtype=torch.float32)
    return u.to(logits.device)


def top_k_sample_ref(
    logits: torch.Tensor,
    k: int,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Pure-PyTorch reference (LAMOL's formulation): topk + masking + softmax + multinomial.

    Same arguments and semantics as :func:`top_k_sample`; materialises ``[B, V]`` temporaries.
    """
    _check(logits, k, top_p, temperature)
    y = torch.div(logits.float(), temperature)
    if torch.isnan(y).any():
        raise ValueError("top_k_sample: logits contain NaN")
    if torch.isposinf(y).any():
        raise ValueError("top_k_sample: logits / temperature is +inf (a +inf logit, or overflow from a small temperature)")
    if (y == float("-inf")).all(dim=-1).any():
        raise ValueError("top_k_sample: every logit of a row is -inf; nothing to sample")
    kth = torch.topk(y, k, dim=-1).values[:, -1:]
    y = y.masked_fill(y < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_y, order = torch.sort(y, dim=-1, descending=True, stable=True)
        cum = torch.softmax(sorted_y, dim=-1).cumsum(dim=-1)
        remove = cum > top_p
        remove[:, 1:] = remove[:, :-1].clone()
        remove[:, 0] = False
        y = y.scatter(-1, order, sorted_y.masked_fill(remove, float("-inf")))
    probs = torch.softmax(y, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs_g = probs.to(generator.device)
        return torch.multinomial(probs_g, 1, generator=generator).squeeze(1).to(logits.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def top_k_sample(
    logits: torch.Tensor,
    k: int,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
    *,
    use_kernels: bool = True,
) -> torch.Tensor:
    """Sample one token id per row from the top-k (then nucleus) renormalised distribution.

    Args:
        logits: ``[B, V]`` float32/float16/bfloat16 (any device the extension supports).
        k: keep entries ``>= `` the k-th largest value (ties kept); ``1 <= k <= V``
            (the CLI maps "no top-k" and clamps ``k > V``; the op rejects them).
        top_p: nucleus mass in ``[0, 1]``; 0 or 1 disables the nucleus filter.
        temperature: ``> 0``; logits are divided by it (in fp32) before filtering.
        generator: a ``torch.Generator`` (CPU or CUDA); None uses torch's default one.
        use_kernels: False forces the pure-PyTorch reference.

    Returns:
        ``[B]`` int64 token ids on the logits' device.
    """
    _check(logits, k, top_p, temperature)
    if use_kernels and logits.is_cuda and _draws_on_device(logits, generator):
        return torch.ops.l2kd.top_k_sample_seeded(logits, k, float(top_p), float(temperature), generator)
    if use_kernels and has_compiled("top_k_sample"):
        u = _uniforms(logits, generator)
        return torch.ops.l2kd.top_k_sample(logits, k, float(top_p), float(temperature), u)
    return top_k_sample_ref(logits, k, top_p, temperature, generator)


def _draws_on_device(logits: torch.Tensor, generator: Optional[torch.Generator]) -> bool:
    """Whether the seeded kernel can draw the uniforms itself: built, a CUDA generator of the
    logits' device (or none), and not being traced (torch.compile does not take generators)."""
    if not has_compiled("top_k_sample_seeded") or torch.compiler.is_compiling():
        return False
    if generator is None:
        return True
    dev = generator.device
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return dev.type == "cuda" and index == logits.device.index


def _register() -> None:
    if not has_compiled("top_k_sample"):
        return

    @torch.library.register_fake("l2kd::top_k_sample")
    def _(logits, k, top_p, temperature, uniforms):
        torch._check(logits.dim() == 2, lambda: "top_k_sample: logits must be 2-D [B, V]")
        return logits.new_empty((logits.shape[0],), dtype=torch.long)

    if has_compiled("top_k_sample_seeded"):

        @torch.library.register_fake("l2kd::top_k_sample_seeded")
        def _seeded(logits, k, top_p, temperature, generator=None):
            torch._check(logits.dim() == 2, lambda: "top_k_sample: logits must be 2-D [B, V]")
            return logits.new_empty((logits.shape[0],), dtype=torch.long)


try:
    _register()
except Exception as _exc:  # pragma: no cover - never fail the import on a registration problem
    import warnings

    warnings.warn(f"l2kd: could not register the fake of l2kd::top_k_sample: {_exc}", RuntimeWarning)
