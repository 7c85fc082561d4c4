"""LM heads + Word-KD loss, chunked over rows, never holding ``[N, V]`` logits.

``linear_kd_loss(h_student, w_student, h_teacher, w_teacher, T)`` equals

    kd_loss(h_student @ w_student.T, (h_teacher @ w_teacher.T).to(h_student.dtype), None, T)
    = T^2 * mean over the N rows of KL(softmax(t_r / T) || softmax(s_r / T))

(``batchmean`` over all N rows, teacher with a smaller vocabulary widened by its last column,
see :mod:`l2kd.ops.kd_loss`) and its gradients w.r.t. ``h_student`` and ``w_student``. The
teacher gets no gradient (its inputs are treated as detached).

Shapes and dtypes
    ``h_student [N, H]``, ``w_student [Vs, H]`` (the student's LM head / tied embedding),
    ``h_teacher [N, Ht]``, ``w_teacher [Vt, Ht]`` with ``1 <= Vt <= Vs``; ``Ht`` may differ
    from ``H``. float32 or bfloat16 (float16 works too); the student pair shares one dtype, the
    teacher pair shares one dtype; teacher logits are cast to the student's dtype as the
    unfused path does. Autocast is off inside: the GEMMs run in the inputs' dtypes. The loss is an fp32 scalar; ``N == 0`` gives 0 (zero gradients).

Algorithm (forward computes the loss *and* both gradients)
    For each block of ``chunk`` rows: student logits ``S = h_c @ W_s^T`` (one GEMM), teacher
    logits ``t = h_t,c @ W_t^T`` (one GEMM), then the KD loss of the block and
    ``G = dL_c/dS``; the block's loss and ``G`` are normalised by the block's row count, so both
    are rescaled by ``n_c / N``. Then ``grad_h[c] = G @ W_s`` and ``grad_W_s += G^T @ h_c``
    (two GEMMs, fp32 accumulator for ``grad_W_s``). Only one block of logits and one block of
    ``G`` are alive at a time: peak extra memory ``~ chunk * (2 Vs + Vt)`` elements plus the
    ``[Vs, H]`` fp32 gradient accumulator, independent of N. Backward multiplies the saved
    gradients by the upstream gradient (on CPU, hands them on as they are when it is 1).

    Per-block KD math: with the compiled extension, the fused ``torch.ops.l2kd.kd_loss`` kernel
    (loss and ``G`` in one pass over the block). Without it (or with ``use_kernels=False``),
    the *same chunked algorithm* runs with plain-PyTorch per-block math: :func:`kd_loss_ref`
    on the block and ``torch.autograd.grad`` for ``G``. That fallback is not a fused kernel
    (it makes the reference's temporaries, per block); it still never holds ``[N, V]`` logits.

    :func:`linear_kd_loss_ref` is the unfused oracle: full logits, then :func:`kd_loss_ref`.
"""
from __future__ import annotations

import math

import torch

from l2kd.ops._extension import has_compiled
from l2kd.ops.kd_loss import kd_loss_ref

__all__ = ["linear_kd_loss", "linear_kd_loss_ref"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                  temperature: float) -> None:
    names = ("h_student", "w_student", "h_teacher", "w_teacher")
    for name, x in zip(names, (h_s, w_s, h_t, w_t)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"linear_kd_loss: {name} must be a tensor")
        if x.dim() != 2:
            raise ValueError(f"linear_kd_loss: {name} must be 2-D, got shape {tuple(x.shape)}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"linear_kd_loss: {name} must be float32, float16 or bfloat16, got {x.dtype}")
        if x.device != h_s.device:
            raise ValueError(f"linear_kd_loss: {name} must be on the device of h_student ({h_s.device}), "
                             f"got {x.device}")
    if w_s.dtype != h_s.dtype:
        raise TypeError(f"linear_kd_loss: w_student must have the dtype of h_student ({h_s.dtype}), got {w_s.dtype}")
    if w_t.dtype != h_t.dtype:
        raise TypeError(f"linear_kd_loss: w_teacher must have the dtype of h_teacher ({h_t.dtype}), got {w_t.dtype}")
    if h_s.shape[1] != w_s.shape[1]:
        raise ValueError(f"linear_kd_loss: h_student {tuple(h_s.shape)} and w_student {tuple(w_s.shape)} "
                         "must be [N, H] and [Vs, H]")
    if h_t.shape[1] != w_t.shape[1]:
        raise ValueError(f"linear_kd_loss: h_teacher {tuple(h_t.shape)} and w_teacher {tuple(w_t.shape)} "
                         "must be [N, Ht] and [Vt, Ht]")
    if h_t.shape[0] != h_s.shape[0]:
        raise ValueError(f"linear_kd_loss: h_teacher has {h_t.shape[0]} rows, h_student {h_s.shape[0]}")
    vs, vt = w_s.shape[0], w_t.shape[0]
    if vs < 1 or vt < 1:
        raise ValueError("linear_kd_loss: w_student and w_teacher need at least one row (vocabulary entry)")
    if vt > vs:
        raise ValueError(f"linear_kd_loss: the teacher vocabulary ({vt}) is larger than the student's ({vs}); "
                         "only a smaller teacher vocabulary is supported")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"linear_kd_loss: temperature must be a finite number > 0, got {temperature!r}")


def linear_kd_loss_ref(h_student: torch.Tensor, w_student: torch.Tensor, h_teacher: torch.Tensor,
                       w_teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Unfused reference: full ``[N, V]`` logits, then :func:`kd_loss_ref` (autograd gradients)."""
    _check_inputs(h_student, w_student, h_teacher, w_teacher, temperature)
    s_logits = h_student @ w_student.t()
    with torch.no_grad():
        t_logits = (h_teacher @ w_teacher.t()).to(s_logits.dtype)
    return kd_loss_ref(s_logits, t_logits, None, temperature)


def _block_kd(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float, need_grad: bool,
              compiled: bool):
    """KD loss of one block (normalised by its row count) and ``d loss / d s_logits`` (or None)."""
    if compiled:
        loss, grad = torch.ops.l2kd.kd_loss(s_logits, t_logits, None, float(temperature), need_grad)
        return loss, (grad if need_grad else None)
    if not need_grad:
        return kd_loss_ref(s_logits, t_logits, None, temperature), None
    with torch.enable_grad():
        s = s_logits.detach().requires_grad_()
        loss = kd_loss_ref(s, t_logits, None, temperature)
        (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


class _ChunkedLinearKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, temperature: float, chunk: int, need_grad_h: bool, need_grad_w: bool,
                compiled: bool):
        n = h_s.shape[0]
        need_grad = need_grad_h or need_grad_w
        grad_h = torch.empty_like(h_s, memory_format=torch.contiguous_format) if need_grad_h else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_grad_w else None
        w_s_t, w_t_t = w_s.t(), w_t.t()
        loss = torch.zeros((), dtype=torch.float32, device=h_s.device)
        with torch.autocast(h_s.device.type, enabled=False):  # the GEMMs run in the inputs' dtypes
            _ChunkedLinearKD._blocks(h_s, w_s, h_t, w_s_t, w_t_t, temperature, chunk, need_grad, compiled,
                                     grad_h, grad_w, loss)
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.flags = (need_grad_h, need_grad_w, w_s.dtype)
        return loss

    @staticmethod
    def _blocks(h_s, w_s, h_t, w_s_t, w_t_t, temperature, chunk, need_grad, compiled, grad_h, grad_w, loss):
        n = h_s.shape[0]
        # The student and teacher logit blocks are allocated once and reused by every chunk: a
        # fresh [chunk, V] tensor per chunk is a fresh mmap whose page faults cost about as much
        # as its GEMM on CPU. Same GEMMs into the same layout: the same values.
        rows = min(chunk, n)
        s_buf = torch.empty((rows, w_s_t.shape[1]), dtype=h_s.dtype, device=h_s.device)
        t_buf = torch.empty((rows, w_t_t.shape[1]), dtype=h_t.dtype, device=h_t.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            scale = (e - s) / n  # the block's loss and G are means over its own e - s rows
            hc = h_s[s:e]
            s_logits = torch.mm(hc, w_s_t, out=s_buf[: e - s])
            t_logits = torch.mm(h_t[s:e], w_t_t, out=t_buf[: e - s]).to(s_logits.dtype)
            block_loss, g = _block_kd(s_logits, t_logits, temperature, need_grad, compiled)
            del s_logits, t_logits
            loss += block_loss * scale
            if g is None:
                continue
            if grad_h is not None:
                torch.mm(g, w_s, out=grad_h[s:e])
                grad_h[s:e].mul_(scale)
            if grad_w is not None:
                if g.dtype == torch.float32:
                    grad_w.addmm_(g.t(), hc, alpha=scale)
                else:  # low-precision GEMM (fp32 inside), accumulated across blocks in fp32
                    grad_w.add_(g.t() @ hc, alpha=scale)
            del g

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w, w_dtype = ctx.flags
        if (type(grad_out) is torch.Tensor and grad_out.device.type == "cpu" and not torch.compiler.is_compiling()
                and not grad_out.requires_grad and grad_out.item() == 1.0):
            # upstream 1 (a plain loss.backward()): hand the saved gradients on without another
            # [Vs, H] copy; autograd never writes into a gradient another reference holds.
            return (grad_h if need_h else None, grad_w.to(w_dtype) if need_w else None,
                    None, None, None, None, None, None, None)
        gh = grad_h * grad_out.to(grad_h.dtype) if need_h else None
        gw = (grad_w * grad_out).to(w_dtype) if need_w else None
        return gh, gw, None, None, None, None, None, None, None


def linear_kd_loss(h_student: torch.Tensor, w_student: torch.Tensor, h_teacher: torch.Tensor,
                   w_teacher: torch.Tensor, temperature: float = 2.0, chunk: int = 256, *,
                   use_kernels: bool = True) -> torch.Tensor:
    """Word-KD loss of two LM heads, ``kd_loss(h_s @ w_s.T, h_t @ w_t.T, None, T)``, chunked over rows.

    Args:
        h_student: ``[N, H]`` student hidden states (float32/bfloat16); receives a gradient.
        w_student: ``[Vs, H]`` student head weight, same dtype; receives a gradient.
        h_teacher: ``[N, Ht]`` teacher hidden states; no gradient.
        w_teacher: ``[Vt, Ht]``, ``Vt <= Vs`` teacher head weight; no gradient. Missing columns
            repeat the teacher's last probability (as :func:`l2kd.ops.kd_loss`).
        temperature: ``T > 0``; the loss is scaled by ``T**2``.
        chunk: rows per block (peak memory ~ ``chunk * (2 Vs + Vt)`` elements).
        use_kernels: ``False`` (or a missing extension) keeps the chunked algorithm but uses
            plain-PyTorch per-block math (:func:`kd_loss_ref` + autograd) instead of the fused
            ``l2kd::kd_loss`` kernel.

    Returns:
        float32 scalar: ``T^2 * sum_r KL(p_r || q_r) / N``; 0 when ``N == 0``.
    """
    _check_inputs(h_student, w_student, h_teacher, w_teacher, temperature)
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"linear_kd_loss: chunk must be an int >= 1, got {chunk!r}")
    if h_student.shape[0] == 0:  # empty mean: 0, with a (zero) graph to both student inputs
        return (h_student.sum() + w_student.sum()).float() * 0.0
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and h_student.requires_grad
    need_w = grad_on and w_student.requires_grad
    compiled = use_kernels and has_compiled("kd_loss")
    return _ChunkedLinearKD.apply(h_student, w_student, h_teacher.detach(), w_teacher.detach(), float(temperature),
                                  chunk, need_h, need_w, compiled)
