"""Word-level knowledge-distillation loss (L2KD's Word-KD), fused.

``kd_loss(student_logits, teacher_logits, mask=None, temperature=2.0)`` returns

    T^2 * sum_{selected rows r} KL(p_r || q_r) / n_rows,
    p_r = softmax(teacher_logits[r] / T),  q_r = softmax(student_logits[r] / T),

which is exactly the original L2KD loss
``KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T**2`` on the rows that
``mask`` selects.

Shapes and dtypes
    student_logits ``[..., Vs]``, teacher_logits ``[..., Vt]`` with the same leading dims,
    ``1 <= Vt <= Vs``; both float32, float16 or bfloat16 and of the *same* dtype, on the same
    device. ``mask``: bool ``[...]`` (the leading dims) or ``None`` (every row counts).
    Inputs may be non-contiguous (they are made contiguous).

Smaller teacher vocabulary (``Vt < Vs``, task tokens added after the teacher was trained)
    As the original, the teacher's *probabilities* are widened by repeating their last column
    ``p[Vt-1]`` for the ``k = Vs - Vt`` missing columns, so a widened row sums to
    ``P = 1 + k * p[Vt-1]``; the loss is ``sum_j p_j (log p_j - log q_j)`` over the widened row
    and ``dL/ds = T * (q * P - p) / n_rows``.

Result and gradient
    The loss is a float32 scalar whatever the input dtype; all arithmetic accumulates in fp32.
    The gradient flows to the student only: the teacher is treated as a constant (a teacher
    that requires grad gets none, as if it were detached).

Edge cases (documented differences from the original)
    * No selected row (all-false mask, or zero rows): loss 0 and gradient 0 (the original's
      ``batchmean`` divides by 0 and gives NaN).
    * A column with teacher probability 0 (a ``-inf`` teacher logit) contributes 0, also where
      the student logit is ``-inf`` (``KLDivLoss`` gives NaN there: 0 * -inf).
    * A ``-inf`` student logit where the teacher probability is > 0: the true KL is +inf and the
      loss is ``+inf`` (never NaN); the gradient stays finite (``-T * p / n`` in that column).
    * Huge finite logits (e.g. +-1e4) are fine (max-shifted exps). ``+inf`` or NaN logits, or a
      teacher row that is entirely ``-inf``, have no defined distribution: the result is NaN,
      as with ``torch.softmax``.

Implementation
    With the compiled extension (``torch.ops.l2kd.kd_loss``), one kernel computes the loss and
    ``dL/ds`` (for an upstream gradient of 1) together; backward multiplies the saved gradient
    by ``grad_output`` (and, on CPU, returns it as is when ``grad_output == 1``). The gradient
    is only written when the student requires grad and grad mode is on. ``use_kernels=False``
    (or a missing extension) runs :func:`kd_loss_ref`, plain PyTorch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from l2kd.ops._extension import has_compiled

__all__ = ["kd_loss", "kd_loss_ref"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor],
                  temperature: float) -> None:
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("kd_loss: student_logits and teacher_logits must be tensors")
    if student_logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"kd_loss: student_logits must be float32, float16 or bfloat16, got {student_logits.dtype}")
    if teacher_logits.dtype != student_logits.dtype:
        raise TypeError(f"kd_loss: teacher_logits must have the same dtype as student_logits "
                        f"({student_logits.dtype}), got {teacher_logits.dtype}")
    if student_logits.dim() < 1 or teacher_logits.dim() != student_logits.dim():
        raise ValueError(f"kd_loss: teacher_logits {tuple(teacher_logits.shape)} and student_logits "
                         f"{tuple(student_logits.shape)} must both be [..., V] with the same number of dims")
    if teacher_logits.device != student_logits.device:
        raise ValueError(f"kd_loss: teacher_logits must be on the device of student_logits "
                         f"({student_logits.device}), got {teacher_logits.device}")
    if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"kd_loss: teacher_logits leading dims {tuple(teacher_logits.shape[:-1])} must match "
                         f"student_logits leading dims {tuple(student_logits.shape[:-1])}")
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vs < 1 or vt < 1:
        raise ValueError("kd_loss: student_logits and teacher_logits need at least one column")
    if vt > vs:
        raise ValueError(f"kd_loss: teacher_logits has more columns ({vt}) than student_logits ({vs}); "
                         "only a smaller teacher vocabulary is supported")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature must be a finite number > 0, got {temperature!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"kd_loss: mask must be a bool tensor, got "
                            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"kd_loss: mask must have shape {tuple(student_logits.shape[:-1])} "
                             f"(student_logits without the last dim), got {tuple(mask.shape)}")
        if mask.device != student_logits.device:
            raise ValueError(f"kd_loss: mask must be on the device of student_logits ({student_logits.device}), "
                             f"got {mask.device}")


def kd_loss_ref(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor] = None,
                temperature: float = 2.0) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`kd_loss` (same contract, float32 scalar result).

    ``log_softmax`` / ``softmax`` in float32 on the selected rows, teacher probabilities widened
    by their last column, ``sum p * (log p - log q)`` with 0 where ``p == 0``, divided by the
    number of rows and multiplied by ``T**2``. Autograd gives the student gradient.
    """
    _check_inputs(student_logits, teacher_logits, mask, temperature)
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    s = student_logits.reshape(-1, vs)
    t = teacher_logits.detach().reshape(-1, vt)
    if mask is not None:
        keep = mask.reshape(-1)
        s, t = s[keep], t[keep]
    log_q = torch.log_softmax(s.float() / temperature, dim=-1)
    log_p = torch.log_softmax(t.float() / temperature, dim=-1)
    if vt < vs:  # widen the teacher's probabilities by repeating its last column
        log_p = torch.cat([log_p, log_p[:, -1:].expand(-1, vs - vt)], dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device))
    n = max(s.shape[0], 1)  # no selected row: an empty sum, loss 0 (the original gives NaN)
    return terms.sum() * (temperature * temperature / n)


if has_compiled("kd_loss"):

    @torch.library.register_fake("l2kd::kd_loss")
    def _kd_loss_fake(student, teacher, mask, temperature, need_grad):
        loss = student.new_empty((), dtype=torch.float32)
        grad = torch.empty_like(student, memory_format=torch.contiguous_format) if need_grad else student.new_empty((0,))
        return loss, grad

    def _kd_loss_setup_context(ctx, inputs, output):
        _, grad = output
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # never build a zero [N, V] gradient for the grad output
        ctx.save_for_backward(grad)
        ctx.need_grad = inputs[4]

    def _kd_loss_backward(ctx, grad_loss, _grad_grad):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        if not ctx.need_grad:
            raise RuntimeError("kd_loss: backward through a call made with need_grad=False")
        if (type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu" and not torch.compiler.is_compiling()
                and not grad_loss.requires_grad and grad_loss.item() == 1.0):
            # Skip a full [N, V] multiply: the saved gradient is already d loss / d student.
            # Autograd never writes into an incoming gradient another reference holds, so
            # handing out the saved tensor is safe (also with retain_graph).
            return grad, None, None, None, None
        return grad * grad_loss.to(grad.dtype), None, None, None, None

    torch.library.register_autograd("l2kd::kd_loss", _kd_loss_backward, setup_context=_kd_loss_setup_context)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: Optional[torch.Tensor] = None,
            temperature: float = 2.0, *, use_kernels: bool = True) -> torch.Tensor:
    """Word-KD loss ``T^2 * mean over selected rows of KL(softmax(t/T) || softmax(s/T))``.

    Args:
        student_logits: ``[..., Vs]`` float32/float16/bfloat16; receives the gradient.
        teacher_logits: ``[..., Vt]``, ``Vt <= Vs``, same dtype, leading dims and device; no
            gradient (treated as detached). Missing columns repeat the teacher's last probability.
        mask: bool ``[...]`` selecting the rows that count, or ``None`` for all rows.
        temperature: ``T > 0``, softens both distributions; the loss is scaled by ``T**2``.
        use_kernels: ``False`` forces the pure-PyTorch :func:`kd_loss_ref`.

    Returns:
        float32 scalar; 0 (with zero gradient) when no row is selected. See the module
        docstring for the edge cases (+inf for a -inf student logit under teacher mass).
    """
    _check_inputs(student_logits, teacher_logits, mask, temperature)
    if not (use_kernels and has_compiled("kd_loss")):
        return kd_loss_ref(student_logits, teacher_logits, mask, temperature)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, _ = torch.ops.l2kd.kd_loss(student_logits, teacher_logits.detach(), mask, float(temperature), need_grad)
    return loss
