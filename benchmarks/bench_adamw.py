"""Benchmark of one optimizer step: l2kd's OriginalAdamW against torch's AdamW variants.

Parameters have the shapes of a GPT-2 (the 124M-parameter ``gpt2`` with LAMOL's 50260-token
vocabulary, and the tiny demo model), split into the original's two groups (decay 0.01 /
none). Rows:

* ``original-loop``: the pytorch-transformers 1.2.0 update as the original runs it, one
  Python iteration and ~8 kernels per tensor (same arithmetic as ``l2kd``);
* ``l2kd``: :class:`l2kd.optim.OriginalAdamW`, the same update: ``torch._foreach_*`` over a
  group on GPU, cache-sized slices of each tensor on CPU (bit-identical to the loop);
* ``torch-foreach`` / ``torch-fused``: ``torch.optim.AdamW`` (a different update rule, shown
  for the cost of the step only; ``--torch_adamw`` selects the fused one).

Each row steps its own copy of the parameters with fixed gradients; the table gives the
median step time and its ratio to ``l2kd`` and to ``torch-fused``.

Run from the repo root: ``python benchmarks/bench_adamw.py [--quick] [--device cuda]``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_table, time_fn, write_results  # noqa: E402

from l2kd.optim import OriginalAdamW  # noqa: E402

Shape = Tuple[int, ...]


def gpt2_shapes(n_layer: int, n_embd: int, n_positions: int, vocab: int = 50260) -> List[Tuple[str, Shape]]:
    """(name, shape) of every GPT2LMHeadModel parameter (the LM head is tied to ``wte``)."""
    d = n_embd
    out: List[Tuple[str, Shape]] = [("wte.weight", (vocab, d)), ("wpe.weight", (n_positions, d))]
    for i in range(n_layer):
        out += [(f"h.{i}.ln_1.weight", (d,)), (f"h.{i}.ln_1.bias", (d,)),
                (f"h.{i}.attn.c_attn.weight", (d, 3 * d)), (f"h.{i}.attn.c_attn.bias", (3 * d,)),
                (f"h.{i}.attn.c_proj.weight", (d, d)), (f"h.{i}.attn.c_proj.bias", (d,)),
                (f"h.{i}.ln_2.weight", (d,)), (f"h.{i}.ln_2.bias", (d,)),
                (f"h.{i}.mlp.c_fc.weight", (d, 4 * d)), (f"h.{i}.mlp.c_fc.bias", (4 * d,)),
                (f"h.{i}.mlp.c_proj.weight", (4 * d, d)), (f"h.{i}.mlp.c_proj.bias", (d,))]
    return out + [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


MODELS = {"gpt2-124M": dict(n_layer=12, n_embd=768, n_positions=1024),
          "tiny-gpt2": dict(n_layer=2, n_embd=128, n_positions=512)}


class LoopAdamW(torch.optim.Optimizer):
    """The original's per-tensor loop (pytorch-transformers 1.2.0 AdamW, current tensor API)."""

    def __init__(self, params, lr: float, eps: float) -> None:
        super().__init__(params, dict(lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                st["step"] += 1
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = st["exp_avg_sq"].sqrt().add_(group["eps"])
                size = group["lr"] * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                p.addcdiv_(st["exp_avg"], denom, value=-size)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def make_groups(shapes: List[Tuple[str, Shape]], device: torch.device) -> List[dict]:
    gen = torch.Generator().manual_seed(0)
    decay, no_decay = [], []
    for name, shape in shapes:
        p = (torch.randn(shape, generator=gen) * 0.02).to(device)
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device)
        (no_decay if "bias" in name else decay).append(p)
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


IMPLS: Dict[str, Callable[[List[dict]], torch.optim.Optimizer]] = {
    "original-loop": lambda g: LoopAdamW(g, lr=6.25e-5, eps=1e-4),
    "l2kd": lambda g: OriginalAdamW(g, lr=6.25e-5, eps=1e-4),
    "torch-foreach": lambda g: torch.optim.AdamW(g, lr=6.25e-5, eps=1e-4, foreach=True),
    "torch-fused": lambda g: torch.optim.AdamW(g, lr=6.25e-5, eps=1e-4, fused=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny-gpt2 only")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=0, help="timed steps per row (default 5, 20 with --quick)")
    args = ap.parse_args()
    device = torch.device(args.device)
    models = ["tiny-gpt2"] if args.quick else ["tiny-gpt2", "gpt2-124M"]
    print(f"AdamW step benchmark: device={device} threads={torch.get_num_threads()}")
    records = []
    for model in models:
        shapes = gpt2_shapes(**MODELS[model])
        n_params = sum(math.prod(s) for _, s in shapes)
        big = n_params > 10_000_000
        reps = args.reps or (5 if big else 20)
        rows = []
        for impl, build in IMPLS.items():
            groups = make_groups(shapes, device)
            opt = build(groups)
            t = time_fn(opt.step, device, warmup=2, reps=reps)
            rows.append({"model": model, "params": n_params, "tensors": len(shapes), "impl": impl,
                         "step_ms": t["median_ms"], "p20_ms": t["p20_ms"], "p80_ms": t["p80_ms"]})
            del opt, groups
        ours = next(r["step_ms"] for r in rows if r["impl"] == "l2kd")
        fused = next(r["step_ms"] for r in rows if r["impl"] == "torch-fused")
        for r in rows:
            r["vs_l2kd"] = r["step_ms"] / ours
            r["vs_fused"] = r["step_ms"] / fused
        records += rows
    print_table(records, ["model", "params", "tensors", "impl", "step_ms", "p20_ms", "p80_ms", "vs_l2kd", "vs_fused"])
    path = write_results("adamw", device, records, {"models": models, "lr": 6.25e-5, "eps": 1e-4})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
