"""LM head + class-weighted cross-entropy, chunked over rows, never holding ``[N, V]`` logits.

``linear_cross_entropy(h, weight, target, class_weight)`` equals
``F.cross_entropy(h @ weight.T, target, weight=class_weight)`` (the weighted mean LAMOL uses:
``sum_i w[y_i] * nll_i / sum_i w[y_i]``) and its gradients w.r.t. ``h`` and ``weight``.

The forward pass computes the loss *and* both gradients chunk by chunk: for each block of
rows it forms the logits (one GEMM), turns them in place into ``w[y]/den * (softmax - onehot)``
and accumulates ``grad_h = G @ W`` and ``grad_W += G^T @ h`` (two GEMMs). Only one
``[chunk, V]`` block is alive at a time; backward scales the saved gradients by the upstream
gradient. All in ATen calls (the GEMMs dominate; the per-element work is three in-place
passes over a block instead of the eager path's log-softmax, NLL, their backward and the
full-size temporaries).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def linear_cross_entropy_ref(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                             class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eager reference: full logits, then ``F.cross_entropy`` (fp32)."""
    logits = (h @ weight.t()).float()
    cw = class_weight[: logits.shape[-1]] if class_weight is not None else None
    return F.cross_entropy(logits, target, weight=cw)


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, target, class_weight, chunk: int, need_grad_h: bool, need_grad_w: bool):
        with torch.autocast(h.device.type, enabled=False):  # the GEMMs run in the inputs' dtypes
            grad_h, grad_w, loss = _ChunkedLinearCE._blocks(h, weight, target, class_weight, chunk,
                                                            need_grad_h, need_grad_w)
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.flags = (need_grad_h, need_grad_w, h.dtype, weight.dtype)
        return loss

    @staticmethod
    def _blocks(h, weight, target, class_weight, chunk, need_grad_h, need_grad_w):
        n, v = h.shape[0], weight.shape[0]
        # bf16 inputs: the three GEMMs run in bf16 (fp32 accumulation inside), the softmax in
        # fp32. fp16 inputs take the fp32 path: a block's weight gradient, a sum over its rows,
        # can pass fp16's 65504 where GPT-2's hidden states have large dimensions.
        low = h.dtype == weight.dtype == torch.bfloat16
        wy = class_weight[target].float() if class_weight is not None else torch.ones(n, device=h.device)
        den = wy.sum()
        scale = wy / den  # per-row factor of the weighted mean
        hg, wg = (h, weight) if low else (h.float(), weight.float())
        grad_h = torch.empty_like(hg) if need_grad_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_grad_w else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        # One [chunk, V] block reused by every chunk: a fresh one per chunk is a fresh mmap whose
        # pages fault in at ~1.7 GB/s on CPU (as slow as the GEMM that fills it at demo scale).
        # Same GEMM, same layout: the same values as a fresh tensor.
        block = torch.empty((min(chunk, n), v), dtype=torch.float32, device=h.device)
        low_block = torch.empty(block.shape, dtype=hg.dtype, device=h.device) if low else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            hc, yc, sc = hg[s:e], target[s:e], scale[s:e]
            if low:
                logits = block[: e - s].copy_(torch.mm(hc, wg.t(), out=low_block[: e - s]))
            else:
                logits = torch.mm(hc, wg.t(), out=block[: e - s])  # [c, V]
            rows = torch.arange(e - s, device=h.device)
            picked = logits[rows, yc]
            m = logits.amax(dim=1, keepdim=True)
            logits.sub_(m).exp_()
            z = logits.sum(dim=1, keepdim=True)
            lse = m.squeeze(1) + z.squeeze(1).log()
            loss += (sc * (lse - picked)).sum()
            if grad_h is None and grad_w is None:
                continue
            logits.mul_(sc[:, None] / z)  # scale * softmax
            logits[rows, yc] -= sc  # - scale * onehot
            g = low_block[: e - s].copy_(logits) if low else logits
            if grad_h is not None:
                torch.mm(g, wg, out=grad_h[s:e])
            if grad_w is not None:
                if low:  # low-precision GEMM (fp32 inside), summed across blocks in fp32
                    grad_w.add_(g.t() @ hc)
                else:
                    grad_w.addmm_(g.t(), hc)
        return grad_h, grad_w, loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w, h_dtype, w_dtype = ctx.flags
        gh = (grad_h * grad_out).to(h_dtype) if need_h else None
        gw = (grad_w * grad_out).to(w_dtype) if need_w else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         class_weight: Optional[torch.Tensor] = None, chunk: int = 256) -> torch.Tensor:
    """Weighted-mean cross-entropy of ``h @ weight.T`` against ``target``, chunked over rows.

    h: ``[N, H]``; weight: ``[V, H]`` (the LM head / tied embedding); target: ``[N]`` int64 in
    ``[0, V)`` (no ignored rows: select them before); class_weight: ``[>=V]`` or None.
    Returns an fp32 scalar (0 when N == 0). Gradients flow to ``h`` and ``weight``.
    bf16 ``h`` and ``weight``: the GEMMs in bf16, the softmax, the loss and the ``weight``
    gradient's sum over blocks in fp32 (what mixed precision pays for: these are a step's
    largest GEMMs). Any other dtypes: fp32 GEMMs.
    """
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: h {tuple(h.shape)} and weight {tuple(weight.shape)} "
                         "must be [N, H] and [V, H]")
    if target.shape != (h.shape[0],):
        raise ValueError(f"linear_cross_entropy: target {tuple(target.shape)} must be [N] = [{h.shape[0]}]")
    if h.shape[0] == 0:
        return (h.sum() + weight.sum()) * 0.0
    return _ChunkedLinearCE.apply(h, weight, target, class_weight, int(chunk),
                                  h.requires_grad, weight.requires_grad)
