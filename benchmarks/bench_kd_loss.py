"""Benchmark of l2kd.ops.kd_loss (fused) against the eager formulation, forward + backward.

Eager reference: the natural ``F.kl_div(F.log_softmax(s[m]/T), F.softmax(t[m]/T), "batchmean") * T^2``
with autograd backward (what the original L2KD runs). Fused: ``l2kd.ops.kd_loss`` (one kernel
computes the loss and the student gradient; backward hands the saved gradient on).

Grid: N rows in {512, 2048}, V = 50257 (GPT-2), fp32 (bf16 as an extra row on CPU), mask all-true
and 50% random. Reports median / p20 / p80 ms, peak extra memory, the eager/fused ratio, and the
memory-bandwidth floor: bytes that must move (selected rows of s and t read once, the [N, V]
gradient written once) / bandwidth (benchmarks.common.CPU_BANDWIDTH_GBPS on CPU).

    python benchmarks/bench_kd_loss.py [--quick] [--device cpu|cuda] [--no-json]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    CPU_BANDWIDTH_GBPS,
    peak_extra_memory_mb,
    print_table,
    time_fn,
    write_results,
)
from l2kd.ops import backend, kd_loss, kd_loss_ref  # noqa: E402

V_GPT2 = 50257
TEMPERATURE = 2.0
COLUMNS = ["N", "V", "dtype", "mask", "impl", "median_ms", "p20_ms", "p80_ms", "peak_mb", "speedup", "floor_ms",
           "x_floor"]


def eager_kd_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    """The natural eager formulation (the original L2KD's): log_softmax / softmax / kl_div."""
    log_q = F.log_softmax(s[mask] / T, dim=-1)
    p = F.softmax(t[mask] / T, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * (T * T)


def _bandwidth_gbps(device: torch.device) -> float:
    # CUDA: no measured figure here; use a nominal HBM figure only to give a rough floor.
    return CPU_BANDWIDTH_GBPS if device.type == "cpu" else float(os.environ.get("L2KD_BENCH_GPU_GBPS", "900"))


def bench_case(N: int, V: int, dtype: torch.dtype, mask_frac: float, device: torch.device,
               reps: int, warmup: int, with_memory: bool = True) -> List[Dict[str, object]]:
    g = torch.Generator().manual_seed(N + V)
    s = (torch.randn(N, V, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
    t = (torch.randn(N, V, generator=g) * 3).to(device=device, dtype=dtype)
    mask = (torch.rand(N, generator=g) < mask_frac).to(device) if mask_frac < 1 else torch.ones(N, dtype=torch.bool,
                                                                                               device=device)

    def run(fn):
        def step():
            s.grad = None
            loss = fn(s, t, mask, TEMPERATURE)
            loss.backward()
            return loss
        return step

    impls = {
        "eager": run(eager_kd_loss),
        "fused": run(lambda a, b, m, T: kd_loss(a, b, m, T)),
    }
    # agree before timing
    l_e = impls["eager"]().detach().float()
    g_e = s.grad.float().clone()
    l_f = impls["fused"]().detach().float()
    g_f = s.grad.float()
    l_r = kd_loss_ref(s.detach(), t, mask, TEMPERATURE)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert torch.allclose(l_f, l_e, rtol=tol) and torch.allclose(l_f, l_r.float(), rtol=tol), (l_f, l_e, l_r)
    scale = g_e.abs().max()
    assert ((g_f - g_e).abs().max() / scale).item() < (1e-3 if dtype == torch.float32 else 3e-2)
    del g_e, g_f

    n_sel = int(mask.sum())
    esize = torch.tensor([], dtype=dtype).element_size()
    bytes_moved = 2 * n_sel * V * esize + N * V * esize  # read s, t (selected rows) + write grad
    floor_ms = bytes_moved / (_bandwidth_gbps(device) * 1e9) * 1e3
    rows = []
    for name, fn in impls.items():
        tm = time_fn(fn, device, warmup=warmup, reps=reps)
        peak = peak_extra_memory_mb(fn, device) if with_memory else float("nan")
        rows.append({"N": N, "V": V, "dtype": str(dtype).replace("torch.", ""), "mask": f"{mask_frac:.0%}",
                     "impl": name, **tm, "peak_mb": peak, "floor_ms": floor_ms,
                     "x_floor": tm["median_ms"] / floor_ms, "bytes": bytes_moved})
    eager_ms = rows[0]["median_ms"]
    for r in rows:
        r["speedup"] = eager_ms / r["median_ms"]
    s.grad = None
    return rows


def run_micro(device: torch.device, quick: bool = False, with_memory: bool = True) -> List[Dict[str, object]]:
    """The kd_loss micro table (also used by benchmarks/kd_throughput.py)."""
    if quick:
        grid = [(512, torch.float32, 1.0), (512, torch.float32, 0.5)]
        reps, warmup = 3, 1
    else:
        grid = [(512, torch.float32, 1.0), (512, torch.float32, 0.5), (2048, torch.float32, 1.0),
                (2048, torch.float32, 0.5)]
        grid.append((2048, torch.bfloat16 if device.type == "cpu" else torch.float16, 1.0))
        reps, warmup = 7, 2
    records: List[Dict[str, object]] = []
    for N, dtype, frac in grid:
        records += bench_case(N, V_GPT2, dtype, frac, device, reps, warmup, with_memory)
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=512 only, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/results/*.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"kd_loss fwd+bwd, T={TEMPERATURE}, backend={backend()}, device={device}, threads={torch.get_num_threads()}, "
          f"bandwidth floor at {_bandwidth_gbps(device):.0f} GB/s")
    records = run_micro(device, args.quick, not args.no_memory)
    print_table(records, COLUMNS)
    if not args.no_json:
        path = write_results("kd_loss", device, records,
                             {"temperature": TEMPERATURE, "quick": args.quick, "bandwidth_gbps": _bandwidth_gbps(device),
                              "pass": "fwd+bwd"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
