"""Benchmark of l2kd.ops.kd_loss (fused) against the eager formulation, forward + backward.

Eager reference: the natural ``F.kl_div(F.log_softmax(s[m]/T), F.softmax(t[m]/T), "batchmean") * T^2``
with autograd backward (what the original L2KD runs). Fused: ``l2kd.ops.kd_loss`` (one kernel
computes the loss and the student gradient; backward hands the saved gradient on).

Peers (same process, same inputs): the eager formula under ``torch.compile`` (inductor; a compile
failure or a compile past ``--peer_timeout`` is recorded in the row), and on CUDA Liger-Kernel's
fused KL divergence (benchmarks/peers.py); cut-cross-entropy has no KD loss (recorded as skipped).

Agreement: before timing, every implementation (eager included) is compared with the loss and
gradient of ``kd_loss_ref`` computed in float64 on the same inputs. The loss sums n = rows x V
terms, so its tolerance grows with the reduction length: max(8 eps(dtype), eps(fp32) sqrt(n));
the gradient's (per element, relative to its largest entry) is max(4 eps(dtype), 16 eps(fp32)
sqrt(V)). Each row records ``loss_rel_err``, ``grad_rel_err`` and ``agrees``; an implementation
that disagrees is still timed and reported, never a reason to abort.

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
import math
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
from benchmarks.peers import (  # noqa: E402
    CCE,
    DEFAULT_PEER_TIMEOUT_S,
    LIGER,
    NOT_SAME,
    TORCH_COMPILE,
    CompilePeers,
    add_peer_timeout_arg,
    liger_kl_div,
    peer_row,
)
from l2kd.ops import backend, has_compiled, kd_loss, kd_loss_ref  # noqa: E402

V_GPT2 = 50257
TEMPERATURE = 2.0
COLUMNS = ["N", "V", "dtype", "mask", "impl", "median_ms", "p20_ms", "p80_ms", "peak_mb", "speedup", "fused_vs_this",
           "floor_ms", "compute_floor_ms", "x_floor", "x_bound", "loss_rel_err", "agrees"]


def eager_kd_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    """The natural eager formulation (the original L2KD's): log_softmax / softmax / kl_div."""
    log_q = F.log_softmax(s[mask] / T, dim=-1)
    p = F.softmax(t[mask] / T, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * (T * T)


def agreement_tolerances(dtype: torch.dtype, n_terms: int, V: int) -> Dict[str, float]:
    """Relative tolerances against the fp64 reference: the loss (a sum of ``n_terms`` terms,
    accumulated in at best fp32) and the gradient (per element, against its largest entry)."""
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    return {"loss": max(8 * eps, eps32 * math.sqrt(max(n_terms, 1))),
            "grad": max(4 * eps, 16 * eps32 * math.sqrt(V))}


def agreement(loss: torch.Tensor, grad: torch.Tensor, ref_loss: torch.Tensor, ref_grad: torch.Tensor,
              tol: Dict[str, float]) -> Dict[str, object]:
    """How far one implementation's loss and gradient are from the fp64 reference, and whether
    both are within ``tol`` (a non-finite result never agrees)."""
    ref_l = float(ref_loss)
    loss_err = abs(float(loss) - ref_l) / max(abs(ref_l), 1e-30)
    scale = float(ref_grad.abs().max()) or 1.0
    grad_err = float((grad.double() - ref_grad).abs().max()) / scale
    ok = math.isfinite(loss_err) and math.isfinite(grad_err) and loss_err <= tol["loss"] and grad_err <= tol["grad"]
    return {"loss_rel_err": loss_err, "grad_rel_err": grad_err, "agrees": bool(ok),
            "loss_tol": tol["loss"], "grad_tol": tol["grad"]}


def reference_fp64(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, T: float):
    """``kd_loss_ref``'s formula in float64 on the same (rounded) inputs: (loss, student gradient).
    (``kd_loss_ref`` itself computes in float32, the precision under test.)"""
    s64 = s.detach().double().requires_grad_()
    log_q = torch.log_softmax(s64[mask] / T, dim=-1)
    log_p = torch.log_softmax(t.detach().double()[mask] / T, dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device))
    loss = terms.sum() * (T * T / max(int(mask.sum()), 1))
    loss.backward()
    return loss.detach(), s64.grad


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
               reps: int, warmup: int, bandwidth: Bandwidth, with_memory: bool = True,
               peers: Optional[CompilePeers] = None) -> List[Dict[str, object]]:
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
    cfn, why = (peers or CompilePeers()).compile(eager_kd_loss, lambda f: run(f)())
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
    # agreement before timing: every implementation against kd_loss_ref's formula in fp64
    ref_loss, ref_grad = reference_fp64(s, t, mask, TEMPERATURE)
    tol = agreement_tolerances(dtype, int(mask.sum()) * V, V)
    checks: Dict[str, Dict[str, object]] = {}
    for name, fn in impls.items():
        try:
            loss = fn().detach()
            checks[name] = agreement(loss, s.grad, ref_loss, ref_grad, tol)
        except Exception as exc:  # a peer that cannot run these inputs is recorded, not fatal
            if name in ("eager", "fused"):
                raise
            skipped.append(peer_row(name, f"failed on these inputs: {type(exc).__name__}: {exc}"[:300], **case))
        s.grad = None
    for name in [n for n in impls if n not in checks]:
        del impls[name]
    del ref_grad

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
        rows.append({**case, "impl": name, **tm, **checks[name], "peak_mb": peak, "floor_ms": floor_ms,
                     "x_floor": tm["median_ms"] / floor_ms, "bytes": bytes_moved,
                     "compute_floor_ms": compute_ms, "x_bound": tm["median_ms"] / max(floor_ms, compute_ms)})
    eager_ms = next((r["median_ms"] for r in rows if r["impl"] == "eager"), float("nan"))
    fused_ms = next((r["median_ms"] for r in rows if r["impl"] == "fused"), float("nan"))
    for r in rows:
        r["speedup"] = eager_ms / r["median_ms"]
        r["fused_vs_this"] = r["median_ms"] / fused_ms  # > 1: l2kd is faster than this implementation
    s.grad = None
    return rows + skipped


def run_micro(device: torch.device, quick: bool = False, with_memory: bool = True, only_n: int = 0,
              reps_override: int = 0, bandwidth: Optional[Bandwidth] = None,
              peer_timeout: Optional[float] = DEFAULT_PEER_TIMEOUT_S, toy: bool = False) -> List[Dict[str, object]]:
    """The kd_loss micro table (also used by benchmarks/kd_throughput.py); ``only_n`` keeps the
    grid's cases with that many rows, ``reps_override`` sets the repetitions, ``bandwidth`` the
    floors' bandwidth (measured here when not given), ``peer_timeout`` each compile's deadline,
    ``toy`` a 64 x 1000 case only (the code path, not a measurement)."""
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
    V = 1000 if toy else V_GPT2
    if toy:
        grid, reps, warmup = [(64, torch.float32, 0.5)], 2, 1
    reps = reps_override or reps
    peers = CompilePeers(peer_timeout)
    records: List[Dict[str, object]] = []
    for N, dtype, frac in grid:
        records += bench_case(N, V, dtype, frac, device, reps, warmup, bandwidth, with_memory, peers)
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=512 only, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/results/*.json")
    ap.add_argument("--N", type=int, default=0, help="only the grid's cases with N rows")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per implementation")
    ap.add_argument("--toy", action="store_true", help="one 64 x 1000 case: exercises the code path (dry runs)")
    add_peer_timeout_arg(ap)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    bandwidth = measure_bandwidth(device)
    print(f"kd_loss fwd+bwd, T={TEMPERATURE}, backend={backend()}, device={device}, threads={torch.get_num_threads()}, "
          f"bandwidth floor at {bandwidth.describe()}")
    records = run_micro(device, args.quick, not args.no_memory, args.N, args.reps, bandwidth, args.peer_timeout,
                        args.toy)
    print_table([r for r in records if "skipped" not in r], COLUMNS)
    for r in records:
        if "skipped" in r:
            print(f"  N={r['N']} {r['dtype']} mask {r['mask']}: {r['impl']} not timed: {r['skipped']}")
        elif not r.get("agrees", True):
            print(f"  N={r['N']} {r['dtype']} mask {r['mask']}: {r['impl']} DISAGREES with the fp64 reference: "
                  f"loss rel err {r['loss_rel_err']:.2e} (tol {r['loss_tol']:.1e}), "
                  f"grad rel err {r['grad_rel_err']:.2e} (tol {r['grad_tol']:.1e})")
    if not args.no_json:
        path = write_results("kd_loss", device, records,
                             {"temperature": TEMPERATURE, "quick": args.quick, "toy": args.toy,
                              "peer_timeout_s": args.peer_timeout, **bandwidth.record(),
                              "pass": "fwd+bwd", "N": args.N or "grid", "reps": args.reps or "default"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
