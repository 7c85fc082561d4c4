"""GEM's gradient projection: ``gem_project(grad, memory_grads, margin, eps)``.

What the original does (GEM's ``project2cone2``, called by LAMOL/L2KD's GEM step whenever a
dot product of the current gradient with a past task's gradient is negative)::

    M = memories as a float64 [t, P] array, g = gradient as float64 [P]
    P_mat = M M^T;  P_mat = 0.5 (P_mat + P_mat^T) + eps I
    q = -(M g);  C = I;  h = margin * 1
    v = quadprog.solve_qp(P_mat, q, C, h)[0]
    x = M^T v + g          (written back into the gradient)

``quadprog.solve_qp(G, a, C, b)`` minimises ``1/2 x^T G x - a^T x`` subject to
``C^T x >= b``. With ``a = q = -(M g)`` and ``C = I`` that is exactly::

    v* = argmin_v  1/2 v^T (M M^T + eps I) v + (M g)^T v    subject to   v >= margin

(the dual of GEM's projection, with the original's margin imposed on the dual variables, not
on the constraint ``M x >= margin``), and the result is ``x = g + M^T v*``. This op computes
the same ``x``; with fp64 inputs it agrees with quadprog to ~1e-12 relative (measured on random
and nearly parallel memories, t <= 8; the tests ask for 1e-6).

How: one pass over ``M`` and ``g`` forms the ``(t+1) x (t+1)`` Gram matrix of ``[M; g]`` in fp64
(``M M^T`` and ``M g`` together); the small QP is solved exactly by Lawson-Hanson's active-set
method on ``u = v - margin >= 0`` (finite termination; projected Gauss-Seidel would crawl on
nearly parallel memories); a second pass writes ``g + M^T v*`` (fp64 arithmetic, rounded to
``grad``'s dtype).

Semantics:

- ``grad`` ``[P]`` and ``memory_grads`` ``[t, P]``: same dtype (float32, float16, bfloat16 or
  float64) and device; ``0 <= t <= 64``. Accumulation is always fp64; the output has
  ``grad``'s dtype.
- If every ``(M g)_i >= 0`` (computed in fp64; the original checks the fp32 ``torch.mm``, so
  a dot within round-off of 0 may decide differently) nothing is projected and the result is
  a *copy* of ``grad``. Without ``out`` the result is always a new contiguous tensor and the
  inputs are never modified.
- ``out=``: a contiguous ``[P]`` tensor of ``grad``'s dtype and device to write into and
  return. ``out=grad`` is the in-place projection the original does (it overwrote the
  gradient): nothing is written when no constraint is violated, and no ``[P]`` temporary is
  allocated at all (allocating a fresh ``[P]`` output costs a page fault per 4 KiB on first
  touch, which dominates on some machines; see the benchmark). ``out`` must not partially
  overlap ``grad`` nor overlap ``memory_grads``.
- A non-finite ``memory_grads`` raises ``RuntimeError``. A non-finite ``grad`` (e.g. an fp16
  overflow step) is returned unchanged (copied): the projection is undefined, and the
  optimizer / grad scaler decides what to do with such a step.
- ``eps`` must be ``>= 0``; ``eps = 0`` works when ``M M^T`` is non-singular on the active set
  and otherwise raises (quadprog raises too: "matrix G is not positive definite").
- CUDA: the small solve runs in one device thread; the host synchronises once, on a status
  word, to raise errors and to skip the update pass when nothing is violated.
- No autograd: this edits gradients.
"""
from __future__ import annotations

from typing import Optional

import torch

from l2kd.ops._extension import has_compiled

__all__ = ["gem_project", "gem_project_ref", "gem_dual_solve_ref", "MAX_MEMORIES"]

MAX_MEMORIES = 64  # largest t the op accepts (the compiled kernels' fixed bound)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_inputs(grad: torch.Tensor, memory_grads: torch.Tensor, margin: float, eps: float) -> None:
    if not isinstance(grad, torch.Tensor) or not isinstance(memory_grads, torch.Tensor):
        raise TypeError("gem_project: grad and memory_grads must be tensors")
    if grad.dim() != 1:
        raise RuntimeError(f"gem_project: grad must be a flat 1-D tensor [P], got shape {tuple(grad.shape)}")
    if memory_grads.dim() != 2:
        raise RuntimeError(f"gem_project: memory_grads must be 2-D [t, P], got shape {tuple(memory_grads.shape)}")
    if memory_grads.shape[1] != grad.shape[0]:
        raise RuntimeError(
            f"gem_project: memory_grads.size(1) ({memory_grads.shape[1]}) must equal grad.size(0) ({grad.shape[0]})"
        )
    if memory_grads.shape[0] > MAX_MEMORIES:
        raise RuntimeError(
            f"gem_project: at most {MAX_MEMORIES} memories are supported, got memory_grads.size(0) = "
            f"{memory_grads.shape[0]}"
        )
    if grad.device != memory_grads.device:
        raise RuntimeError(
            f"gem_project: grad ({grad.device}) and memory_grads ({memory_grads.device}) must be on the same device"
        )
    if grad.dtype != memory_grads.dtype:
        raise RuntimeError(
            f"gem_project: grad ({grad.dtype}) and memory_grads ({memory_grads.dtype}) must have the same dtype"
        )
    if grad.dtype not in _DTYPES:
        raise RuntimeError(f"gem_project: grad must be float32, float16, bfloat16 or float64, got {grad.dtype}")
    if not (float(margin) == float(margin) and abs(float(margin)) != float("inf")):
        raise RuntimeError(f"gem_project: margin must be finite, got {margin}")
    if not (float(eps) >= 0.0 and float(eps) != float("inf")):
        raise RuntimeError(f"gem_project: eps must be finite and >= 0, got {eps}")


def gem_dual_solve_ref(A: torch.Tensor, c: torch.Tensor, margin: float) -> torch.Tensor:
    """Exact solve of ``min_v 1/2 v^T A v + c^T v`` s.t. ``v >= margin`` (A symmetric positive definite).

    Lawson-Hanson active set on ``u = v - margin >= 0`` in fp64 on the CPU; returns ``v`` (fp64,
    CPU). Raises ``RuntimeError`` when a free-set submatrix is singular.
    """
    A = A.detach().to("cpu", torch.float64)
    c = c.detach().to("cpu", torch.float64)
    t = c.numel()
    b = c + margin * A.sum(dim=1)
    u = torch.zeros(t, dtype=torch.float64)
    free = torch.zeros(t, dtype=torch.bool)
    rejected = torch.zeros(t, dtype=torch.bool)
    scale = max(float(b.abs().max()), float(A.diagonal().abs().max())) if t else 0.0

    def solve_free() -> torch.Tensor:
        z = torch.zeros(t, dtype=torch.float64)
        idx = free.nonzero().flatten()
        if idx.numel():
            sub = A[idx][:, idx]
            try:
                chol = torch.linalg.cholesky(sub)
            except RuntimeError as exc:  # not positive definite
                raise RuntimeError(
                    "gem_project: the dual QP matrix G G^T + eps*I is not positive definite; use eps > 0"
                ) from exc
            z[idx] = torch.cholesky_solve(-b[idx].unsqueeze(1), chol).squeeze(1)
        return z

    for _ in range(3 * t + 30):
        grad_u = A @ u + b
        gscale = max(scale, float(grad_u.abs().max())) if t else 0.0
        w = torch.where(free | rejected, torch.full_like(grad_u, float("-inf")), -grad_u)
        j = int(torch.argmax(w)) if t else 0
        if t == 0 or not float(w[j]) > 1e-13 * gscale:
            return u + margin
        free[j] = True
        first = True
        for _inner in range(3 * t + 30):
            z = solve_free()
            if first and not float(z[j]) > 0.0:
                free[j] = False
                rejected[j] = True
                break
            first = False
            bad = free & ~(z > 0)
            if not bool(bad.any()):
                u = z
                rejected[:] = False
                break
            ratios = torch.where(bad, u / (u - z).clamp_min(1e-300), torch.full_like(u, float("inf")))
            k = int(torch.argmin(ratios))
            alpha = float(ratios[k])
            u = torch.where(free, u + alpha * (z - u), u)
            drop = free & ~(u > 0)
            drop[k] = True
            u[drop] = 0.0
            free &= ~drop
            rejected[:] = False
        else:
            raise RuntimeError("gem_project: the active-set solve did not terminate; try a larger eps")
    raise RuntimeError("gem_project: the active-set solve did not terminate; try a larger eps")


def _check_out(grad: torch.Tensor, memory_grads: torch.Tensor, out: torch.Tensor) -> None:
    if out.dim() != 1 or out.shape[0] != grad.shape[0]:
        raise RuntimeError(f"gem_project: out must have shape [{grad.shape[0]}], got {tuple(out.shape)}")
    if not out.is_contiguous():
        raise RuntimeError("gem_project: out must be contiguous")
    if out.dtype != grad.dtype:
        raise RuntimeError(f"gem_project: out ({out.dtype}) must have grad's dtype ({grad.dtype})")
    if out.device != grad.device:
        raise RuntimeError(f"gem_project: out ({out.device}) must be on grad's device ({grad.device})")

    def span(x: torch.Tensor):
        return x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()

    o0, o1 = span(out)
    for other, name in ((grad, "grad"), (memory_grads, "memory_grads")):
        a0, a1 = span(other)
        same = other is grad and out.data_ptr() == grad.data_ptr() and grad.is_contiguous()
        if not same and out.numel() and other.numel() and o0 < a1 and a0 < o1:
            raise RuntimeError(f"gem_project: out must be grad itself or not overlap {name}")


def gem_project_ref(
    grad: torch.Tensor,
    memory_grads: torch.Tensor,
    margin: float = 0.5,
    eps: float = 1e-3,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain-PyTorch reference of :func:`gem_project` (fp64 Gram, exact active-set solve)."""
    _check_inputs(grad, memory_grads, margin, eps)
    if out is not None:
        _check_out(grad, memory_grads, out)
        return out.copy_(gem_project_ref(grad, memory_grads, margin, eps))
    out_unchanged = grad.contiguous().clone()
    t, P = memory_grads.shape
    if t == 0 or P == 0:
        return out_unchanged
    G = memory_grads.to(torch.float64)
    g = grad.to(torch.float64)
    if not bool(torch.isfinite(G).all()):
        raise RuntimeError("gem_project: memory_grads contains non-finite values (inf or nan)")
    c = G @ g
    if not bool(torch.isfinite(c).all()) or not bool(torch.isfinite(g).all()):
        return out_unchanged
    if not bool((c < 0).any()):
        return out_unchanged
    A = G @ G.T
    A = 0.5 * (A + A.T) + eps * torch.eye(t, dtype=torch.float64, device=A.device)
    v = gem_dual_solve_ref(A, c, float(margin)).to(G.device)
    return (g + G.T @ v).to(grad.dtype)


_KERNELS: dict = {}  # device type -> whether torch.ops.l2kd.gem_project has a kernel for it


def _probe_kernel(device_type: str) -> bool:
    if not has_compiled("gem_project"):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    try:
        return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("l2kd::gem_project", key)
    except Exception:  # pragma: no cover - private API moved
        return device_type == "cpu"


def _has_kernel(device: torch.device) -> bool:
    # Cached (and pre-filled at import) so torch.compile traces a dict lookup, not the probe.
    hit = _KERNELS.get(device.type)
    if hit is None:
        hit = _KERNELS[device.type] = _probe_kernel(device.type)
    return hit


def gem_project(
    grad: torch.Tensor,
    memory_grads: torch.Tensor,
    margin: float = 0.5,
    eps: float = 1e-3,
    *,
    use_kernels: bool = True,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Project ``grad`` [P] so it does not conflict with the past tasks' ``memory_grads`` [t, P].

    Returns ``grad + memory_grads^T v*`` with ``v* = argmin_{v >= margin} 1/2 v^T (M M^T + eps I) v
    + (M grad)^T v`` (GEM's dual QP exactly as the original's quadprog call; module docstring),
    or a copy of ``grad`` when every ``memory_grads @ grad >= 0``. Always a new tensor of
    ``grad``'s dtype; inputs are not modified. ``out=`` writes into ``out`` and returns it
    (``out=grad``: in-place projection, as the original). ``use_kernels=False`` forces the
    reference.
    """
    _check_inputs(grad, memory_grads, margin, eps)
    if out is not None:
        _check_out(grad, memory_grads, out)
    if use_kernels and _has_kernel(grad.device):
        if out is not None:
            return torch.ops.l2kd.gem_project.out(grad, memory_grads, float(margin), float(eps), out=out)
        return torch.ops.l2kd.gem_project.default(grad, memory_grads, float(margin), float(eps))
    return gem_project_ref(grad, memory_grads, margin, eps, out=out)


def _register() -> Optional[bool]:
    if not has_compiled("gem_project"):
        return None

    @torch.library.register_fake("l2kd::gem_project")
    def _gem_project_fake(grad, memory_grads, margin, eps):
        torch._check(grad.dim() == 1, lambda: "gem_project: grad must be a flat 1-D tensor [P]")
        torch._check(memory_grads.dim() == 2, lambda: "gem_project: memory_grads must be 2-D [t, P]")
        torch._check(memory_grads.shape[1] == grad.shape[0], lambda: "gem_project: size mismatch")
        torch._check(grad.dtype == memory_grads.dtype, lambda: "gem_project: dtype mismatch")
        return torch.empty_like(grad, memory_format=torch.contiguous_format)

    @torch.library.register_fake("l2kd::gem_project.out")
    def _gem_project_out_fake(grad, memory_grads, margin, eps, *, out):
        return out

    for device_type in ("cpu", "cuda"):
        _KERNELS[device_type] = _probe_kernel(device_type)
    return True


try:
    _register()
except Exception:  # pragma: no cover - registration must never break the import
    pass
