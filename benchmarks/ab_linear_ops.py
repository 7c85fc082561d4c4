"""Before/after in one process: another checkout's linear_cross_entropy / linear_kd_loss against
this one's, fwd+bwd at the demo's head shape (N rows, H=128, V=50261), interleaved medians.

    python benchmarks/ab_linear_ops.py --before /work/main [--rows 580] [--reps 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import l2kd.ops  # noqa: E402,F401
ce_new = sys.modules["l2kd.ops.linear_cross_entropy"]
kd_new = sys.modules["l2kd.ops.linear_kd_loss"]


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True)
    p.add_argument("--rows", type=int, default=580)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    ce_old = _load(os.path.join(a.before, "l2kd/ops/linear_cross_entropy.py"), "ce_old")
    kd_old = _load(os.path.join(a.before, "l2kd/ops/linear_kd_loss.py"), "kd_old")
    torch.manual_seed(0)
    n, hd, v = a.rows, 128, 50261
    h = torch.randn(n, hd, requires_grad=True)
    w = (torch.randn(v, hd) * 0.05).requires_grad_()
    y = torch.randint(0, v, (n,))
    ht, wt = torch.randn(n, hd), torch.randn(v, hd) * 0.05
    fns = {"ce_before": lambda: ce_old.linear_cross_entropy(h, w, y, None), "ce_after": lambda: ce_new.linear_cross_entropy(h, w, y, None),
           "kd_before": lambda: kd_old.linear_kd_loss(h, w, ht, wt, 2.0), "kd_after": lambda: kd_new.linear_kd_loss(h, w, ht, wt, 2.0)}
    times = {k: [] for k in fns}
    grads = {}
    for _ in range(a.reps + 1):
        for k, f in fns.items():
            h.grad = w.grad = None
            t = time.perf_counter()
            loss = f()
            loss.backward()
            times[k].append(time.perf_counter() - t)
            grads[k] = (loss.detach(), h.grad.clone(), w.grad.clone())
    med = {k: sorted(t[1:])[len(t[1:]) // 2] * 1e3 for k, t in times.items()}
    for op in ("ce", "kd"):
        same = all(torch.equal(x, y) for x, y in zip(grads[f"{op}_before"], grads[f"{op}_after"]))
        print(f"{op}: before {med[op + '_before']:.1f} ms, after {med[op + '_after']:.1f} ms, "
              f"after/before {med[op + '_after'] / med[op + '_before']:.3f}, bit-identical {same}, "
              f"load {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
