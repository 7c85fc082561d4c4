"""Benchmark of l2kd.ops.kd_loss (fused) against the eager formulation, forward + backward.

Eager reference: the natural ``F.kl_div(F.log_softmax(s[m]/T), F.softmax(t[m]/T), "batchmean") * T^2``
with autograd backward (what the original L2KD runs). Fused: ``l2kd.ops.kd_loss`` (one kernel
computes the loss and the student gradient; backward hands the saved gradient on).

Peers (same process, same inputs, agreement checked before timing): the eager formula under
``torch.compile`` (inductor; a compile failure is recorded in the row), and on CUDA Liger-Kernel's
fused KL divergence (benchmarks/peers.py); cut-cross-entropy has no KD loss (recorded as skipped).

Each implementation is timed in its own block of repeats, not interleaved with the others: the
eager formula allocates and frees several GB per call, and after it the fused op's fresh [N, V]
gradient is faulted in anew on every call (N=2048, 50% mask: 309 ms interleaved against 93 ms in
a block of its own), which measures the allocator's state rather than the op. Grid: N rows in {512, 2048}, V = 50257 (GPT-2), fp32 (bf16 as an extra row on CPU), mask all-true
and 50% random. Reports median / p20 / p80 ms, peak extra memory, the eager/fused ratio, and two
floors: the memory-bandwidth floor, bytes that must move (selected rows of s and t read once, the
[N, V] gradient written once) at the read / write bandwidth this process reaches
(benchmarks.common.measure_bandwidth), and on
CPU the compute floor, the fused op's exp-bound statistics pass timed on cache-resident rows and
scaled (``compute_floor_ms``); ``x_bound`` = time / the larger of the two.

    python benchmarks/bench_kd_loss.py [--quick] [--device cpu|cuda] [--no-json] [--N 2048] [--reps 7]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Bandwidth,
    measure_bandwidth,
    peak_extra_memory_mb,
    print_table,
    time_fn,
    write_results,
)
from benchmarks.peers import CCE, LIGER, NOT_SAME, TORCH_COMPILE, compiled, liger_kl_div, peer_row  # noqa: E402
from l2kd.ops import backend, has_compiled, kd_loss, kd_loss_ref  # noqa: E402

V_GPT2 = 50257
TEMPERATURE = 2.0
COLUMNS = ["N", "V", "dtype", "mask", "impl", "median_ms", "p20_ms", "p80_ms", "peak_mb", "speedup", "fused_vs_this",
           "floor_ms", "compute_floor_ms", "x_floor", "x_bound"]


def eager_kd_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    """The natural eager formulation (the original L2KD's): log_softmax / softmax / kl_div."""
    log_q = F.log_softmax(s[mask] / T, dim=-1)
    p = F.softmax(t[mask] / T, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * (T * T)


def compute_floor_ms(s: torch.Tensor, t: torch.Tensor, n_sel: int, device: torch.device, rows: int = 16) -> float:
    """What the exp arithmetic alone costs: the fused op's statistics pass (two exps per element,
    the max sweeps, the sums) on ``rows`` rows that stay in cache, the fastest of 31 repeats, scaled
    to ``n_sel`` rows.
    A floor next to the byte floor: with both, the op cannot beat max(bytes / bandwidth, this)."""
    if device.type != "cpu" or n_sel == 0 or not has_compiled("kd_loss"):
        return float("nan")
    s_c, t_c = s[:rows].contiguous(), t[:rows].contiguous()
    op = torch.ops.l2kd.kd_loss
    # a floor: the fastest repeat, not the median (neighbours only slow it down)
    tm = time_fn(lambda: op(s_c, t_c, None, TEMPERATURE, False), device, warmup=3, reps=31)
    return tm["min_ms"] * n_sel / s_c.shape[0]


def bench_case(N: int, V: int, dtype: torch.dtype, mask_frac: float, device: torch.device,
               reps: int, warmup: int, bandwidth: Bandwidth, with_memory: bool = True) -> List[Dict[str, object]]:
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
    case = {"N": N, "V": V, "dtype": str(dtype).replace("torch.", ""), "mask": f"{mask_frac:.0%}"}
    skipped: List[Dict[str, object]] = []
    cfn, why = compiled(eager_kd_loss, lambda f: run(f)())
    if cfn is not None:
        impls[TORCH_COMPILE] = run(cfn)
    else:
        skipped.append(peer_row(TORCH_COMPILE, why, **case))
    lfn, why = liger_kl_div(device)
    if lfn is not None:
        impls[LIGER] = run(lfn)
    else:
        skipped.append(peer_row(LIGER, why, **case))
    skipped.append(peer_row(CCE, NOT_SAME["cce"], **case))
    # agree before timing: every implementation against the eager one and the reference
    l_e = impls["eager"]().detach().float()
    g_e = s.grad.float().clone()
    l_r = kd_loss_ref(s.detach(), t, mask, TEMPERATURE)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    scale = g_e.abs().max()
    for name, fn in list(impls.items())[1:]:
        l_f = fn().detach().float()
        g_f = s.grad.float()
        ok = torch.allclose(l_f, l_e, rtol=tol) and torch.allclose(l_f, l_r.float(), rtol=tol)
        ok = ok and ((g_f - g_e).abs().max() / scale).item() < (1e-3 if dtype == torch.float32 else 3e-2)
        if name == "fused":
            assert ok, (name, l_f, l_e, l_r)
        elif not ok:  # a peer that disagrees is reported, not timed
            skipped.append(peer_row(name, f"disagrees with eager: loss {l_f.item():.6g} vs {l_e.item():.6g}", **case))
            del impls[name]
        del g_f
    del g_e

    n_sel = int(mask.sum())
    esize = torch.tensor([], dtype=dtype).element_size()
    read_bytes, write_bytes = 2 * n_sel * V * esize, N * V * esize  # read s, t (selected rows); write grad
    bytes_moved = read_bytes + write_bytes
    floor_ms = bandwidth.floor_ms(read_bytes, write_bytes)
    compute_ms = compute_floor_ms(s.detach(), t, n_sel, device)
    rows = []
    for name, fn in impls.items():
        tm = time_fn(fn, device, warmup=warmup, reps=reps)
        peak = peak_extra_memory_mb(fn, device) if with_memory else float("nan")
        rows.append({**case, "impl": name, **tm, "peak_mb": peak, "floor_ms": floor_ms,
                     "x_floor": tm["median_ms"] / floor_ms, "bytes": bytes_moved,
                     "compute_floor_ms": compute_ms, "x_bound": tm["median_ms"] / max(floor_ms, compute_ms)})
    eager_ms = rows[0]["median_ms"]
    fused_ms = next(r["median_ms"] for r in rows if r["impl"] == "fused")
    for r in rows:
        r["speedup"] = eager_ms / r["median_ms"]
        r["fused_vs_this"] = r["median_ms"] / fused_ms  # > 1: l2kd is faster than this implementation
    s.grad = None
    return rows + skipped


def run_micro(device: torch.device, quick: bool = False, with_memory: bool = True, only_n: int = 0,
              reps_override: int = 0, bandwidth: Optional[Bandwidth] = None) -> List[Dict[str, object]]:
    """The kd_loss micro table (also used by benchmarks/kd_throughput.py); ``only_n`` keeps the
    grid's cases with that many rows, ``reps_override`` sets the repetitions, ``bandwidth`` the
    floors' bandwidth (measured here when not given)."""
    bandwidth = bandwidth or measure_bandwidth(device)
    if quick:
        grid = [(512, torch.float32, 1.0), (512, torch.float32, 0.5)]
        reps, warmup = 3, 1
    else:
        grid = [(512, torch.float32, 1.0), (512, torch.float32, 0.5), (2048, torch.float32, 1.0),
                (2048, torch.float32, 0.5)]
        grid.append((2048, torch.bfloat16 if device.type == "cpu" else torch.float16, 1.0))
        reps, warmup = 7, 2
    if only_n:
        grid = [c for c in grid if c[0] == only_n]
    reps = reps_override or reps
    records: List[Dict[str, object]] = []
    for N, dtype, frac in grid:
        records += bench_case(N, V_GPT2, dtype, frac, device, reps, warmup, bandwidth, with_memory)
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=512 only, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/results/*.json")
    ap.add_argument("--N", type=int, default=0, help="only the grid's cases with N rows")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per implementation")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    bandwidth = measure_bandwidth(device)
    print(f"kd_loss fwd+bwd, T={TEMPERATURE}, backend={backend()}, device={device}, threads={torch.get_num_threads()}, "
          f"bandwidth floor at {bandwidth.describe()}")
    records = run_micro(device, args.quick, not args.no_memory, args.N, args.reps, bandwidth)
    print_table([r for r in records if "skipped" not in r], COLUMNS)
    for r in records:
        if "skipped" in r:
            print(f"  N={r['N']} {r['dtype']} mask {r['mask']}: {r['impl']} not timed: {r['skipped']}")
    if not args.no_json:
        path = write_results("kd_loss", device, records,
                             {"temperature": TEMPERATURE, "quick": args.quick, **bandwidth.record(),
                              "pass": "fwd+bwd", "N": args.N or "grid", "reps": args.reps or "default"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
