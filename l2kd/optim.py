"""The optimizer of the original LAMOL/L2KD runs, and the parameter groups it is given.

The original trains with pytorch-transformers 1.2.0's ``AdamW``, whose update differs from
``torch.optim.AdamW`` in two places. Per parameter, with ``t`` the step count:

    m = b1*m + (1-b1)*g;   v = b2*v + (1-b2)*g*g
    p = p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)   # bias correction folded into the step
    p = p - lr * wd * p                                             # decoupled decay, *after* the Adam step

torch puts the bias correction inside the denominator, ``m / (sqrt(v / (1 - b2^t)) + eps)``,
and decays the weights *before* the Adam step. With the original's ``--adam_epsilon 1e-4``
the two rules differ a lot in the first steps of every task (``sqrt(1 - b2^t)`` is ~0.03 at
``t = 1``, so torch's effective epsilon is ~30x smaller), and the optimizer is rebuilt for each
task. :class:`OriginalAdamW` is that rule, vectorised with ``torch._foreach_*`` over all the
tensors of a group on GPUs; :func:`make_optimizer` uses it unless ``TrainConfig.torch_adamw``
asks for torch's fused AdamW.

On CPU, foreach kernels are a loop over tensors, and each of the eight passes streams every
tensor through memory. There the same operations run instead on cache-sized slices of each
tensor (one reused buffer for the denominator), so a slice is read from memory about once:
elementwise results do not depend on the slicing, and the step is ~2.5x faster on 124M
parameters (``benchmarks/bench_adamw.py``).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from l2kd.config import TrainConfig

CPU_SLICE = 1 << 20  # elements per slice on CPU (4 MB per fp32 tensor slice)


class OriginalAdamW(torch.optim.Optimizer):
    """pytorch-transformers 1.2.0's AdamW update, computed with foreach kernels.

    Per-parameter state is ``step`` (a Python int, as there), ``exp_avg`` and ``exp_avg_sq``,
    so ``state_dict()`` / ``load_state_dict()`` are the stock :class:`torch.optim.Optimizer`
    ones. Each elementwise operation is the one the original applies per tensor, in the same
    order, so on CPU the result is bit-identical to the per-tensor loop.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr} (must be >= 0)")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas} (each must be in [0, 1))")
        if eps < 0.0:
            raise ValueError(f"invalid epsilon {eps} (must be >= 0)")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay} (must be >= 0)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))
        self._slice_buffers: Optional[torch.Tensor] = None  # CPU scratch, see _scratch

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None,
             keep: Optional[torch.Tensor] = None, grads_finite: bool = False) -> Optional[torch.Tensor]:
        """One update of every parameter that has a gradient (the others keep their state).

        ``keep``: a 0-dim float tensor on the parameters' device, 1.0 to update and 0.0 to
        leave parameters and moments as they are (a non-finite step skipped without reading
        the flag on the host). With 1.0 the result is bit-identical to ``keep=None``: the
        moments are scaled by the same factor as a tensor, and the denominator and the decay
        source are divided by 1.0. A skipped step's gradients may be NaN or inf: they are read
        as 0 (on CPU slice by slice while the slice is in cache; elsewhere zeroed in place),
        unless ``grads_finite`` says the caller already zeroed them. On CPU a kept step's
        non-finite gradient entries would read as 0 too: the loop keeps a step only when the
        loss and the gradient norm are finite.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach kernels need one device and dtype per call, and the step size depends on
            # the step count, which differs only for parameters that sometimes had no gradient.
            buckets: Dict[Tuple[torch.device, torch.dtype, int], List[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("OriginalAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets.setdefault((p.device, p.dtype, state["step"]), []).append(p)
            for (device, _, t), params in buckets.items():
                if device.type == "cpu":
                    self._update_sliced(group, t, params, keep, grads_finite)
                else:
                    self._update(group, t, params, keep, grads_finite)
        return loss

    def _scratch(self, n: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Two reused slice buffers (the denominator's and the masked gradient's): a fresh 4 MB
        buffer every step would be fresh pages, faulted in on every step (about 1 ms each)."""
        have = self._slice_buffers
        if have is None or have.dtype != dtype or have.shape[1] < n:
            have = self._slice_buffers = torch.empty(2, n, dtype=dtype)
        return have[0, :n], have[1, :n]

    @staticmethod
    def _factors(group: dict, keep: Optional[torch.Tensor]):
        """The moments' decay factors: ``beta`` as numbers, or as tensors that are 1 when ``keep`` is 0."""
        beta1, beta2 = group["betas"]
        if keep is None:
            return beta1, beta2
        one = torch.ones_like(keep)
        return torch.where(keep > 0, keep * beta1, one), torch.where(keep > 0, keep * beta2, one)

    @staticmethod
    def _step_size(group: dict, t: int) -> float:
        beta1, beta2 = group["betas"]
        if not group["correct_bias"]:
            return group["lr"]
        # In double precision on the host, as the original.
        return group["lr"] * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)

    def _update_sliced(self, group: dict, t: int, params: List[torch.Tensor],
                       keep: Optional[torch.Tensor] = None, grads_finite: bool = False) -> None:
        """The per-tensor update, slice by slice (CPU; see the module docstring)."""
        beta1, beta2 = group["betas"]
        f1, f2 = self._factors(group, keep)
        skip_div = None if keep is None else torch.reciprocal(keep)
        kept = None if keep is None or grads_finite else keep
        eps, decay = group["eps"], group["lr"] * group["weight_decay"]
        step_size = self._step_size(group, t)
        buf, gbuf = self._scratch(min(CPU_SLICE, max(p.numel() for p in params)), params[0].dtype)
        for p in params:
            st = self.state[p]
            flat = [x.view(-1) if x.is_contiguous() else None for x in (p, p.grad, st["exp_avg"], st["exp_avg_sq"])]
            if any(x is None for x in flat):  # a non-contiguous tensor: update it whole
                flat, n, width = [p, p.grad, st["exp_avg"], st["exp_avg_sq"]], 1, 1
            else:
                n, width = p.numel(), CPU_SLICE
            for lo in range(0, n, width):
                if width == 1:
                    x, g, m, v = flat
                    d = torch.empty_like(x)
                else:
                    x, g, m, v = (f[lo: lo + width] for f in flat)
                    d = buf[: x.numel()]
                if kept is not None:  # g * keep without NaN: a skipped step reads 0, a kept one g bit for bit
                    g = torch.mul(g, kept, out=gbuf[: g.numel()] if width > 1 else torch.empty_like(g))
                    g.nan_to_num_(0.0, 0.0, 0.0)  # 3x faster than torch.where on CPU
                m.mul_(f1).add_(g, alpha=1.0 - beta1)
                v.mul_(f2).addcmul_(g, g, value=1.0 - beta2)
                torch.sqrt(v, out=d)
                d.add_(eps)
                if keep is not None:  # a skipped step divides by inf: no change
                    d.div_(keep)
                x.addcdiv_(m, d, value=-step_size)
                if group["weight_decay"] > 0.0:
                    if keep is None:
                        x.add_(x, alpha=-decay)
                    else:  # x / (1 / keep): x, or 0 when skipped
                        x.add_(torch.div(x, skip_div, out=d), alpha=-decay)

    def _update(self, group: dict, t: int, params: List[torch.Tensor], keep: Optional[torch.Tensor] = None,
                grads_finite: bool = False) -> None:
        beta1, beta2 = group["betas"]
        f1, f2 = self._factors(group, keep)
        grads = [p.grad for p in params]
        if keep is not None and not grads_finite:  # one launch per tensor: the loop zeroes a flat buffer instead
            skipped = keep <= 0
            for g in grads:
                g.masked_fill_(skipped, 0.0)
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(m, f1)
        torch._foreach_add_(m, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(v, f2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        if keep is not None:  # a skipped step divides by inf: no change
            torch._foreach_div_(denom, keep)
        torch._foreach_addcdiv_(params, m, denom, value=-self._step_size(group, t))
        if group["weight_decay"] > 0.0:
            # p + alpha * p (not p * (1 - lr*wd)): the same rounding as the original's add_.
            src = params
            if keep is not None:  # p / (1 / keep) into the denominator's buffers: p, or 0 when skipped
                torch._foreach_copy_(denom, params)
                torch._foreach_div_(denom, torch.reciprocal(keep))
                src = denom
            torch._foreach_add_(params, src, alpha=-group["lr"] * group["weight_decay"])


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> List[dict]:
    """The original's two groups: weight decay except on names containing ``bias`` or
    ``LayerNorm``. GPT-2 names its LayerNorms ``ln_1``/``ln_2``/``ln_f``, so the original
    *does* decay their weights; ``no_decay_layernorm`` excludes them (the textbook groups)."""
    no_decay = ["bias"] + (["ln_", "LayerNorm"] if cfg.no_decay_layernorm else ["LayerNorm"])
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The per-task optimizer: :class:`OriginalAdamW` (the original's update) by default;
    torch's AdamW (fused where the parameters allow) with ``cfg.torch_adamw``."""
    groups = parameter_groups(model, cfg)
    if cfg.torch_adamw:
        fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda")
                    for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon, fused=fused)
    return OriginalAdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon)
