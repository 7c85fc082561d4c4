"""Benchmark of l2kd.ops.gem_project against the original GEM step's approach.

Baseline ("original"): what LAMOL/L2KD's GEM step does: ``torch.mm`` of the current gradient
with the memories on the current device (fp32), and when a dot is negative, project2cone2:
copy the memories and gradient to CPU float64 numpy, ``M M^T``, ``quadprog.solve_qp`` (or,
without quadprog, the package's exact active-set solve on the same fp64 matrices; the table
says which), then ``M^T v + g`` in numpy and back to a float32 tensor.

Fused: ``gem_project`` (one fp64 Gram pass, exact small solve, one update pass), timed twice:
functional (allocates a fresh ``[P]`` output every call) and ``out=`` a preallocated buffer
(what ``out=grad``, the original's in-place write, costs; on machines where first-touch page
faults are slow the allocation alone can cost more than the passes).

All implementations of a case are timed with their repeats interleaved (``time_interleaved``), so
their ratios hold while the machine's memory bandwidth drifts. Nothing violated, the common step: the original returns ``grad`` itself, so l2kd is also timed
in place (``out=grad``: only the check runs, nothing is copied): ``inplace_ms``.

Peer: ``original_step`` under ``torch.compile`` (inductor; the numpy / quadprog part stays eager
behind a graph break), a failure recorded as ``compile_error``, as is a compile and warm-up past
``--peer_timeout`` seconds ("peer timed out"). Liger-Kernel and cut-cross-entropy have no GEM
projection.

Floor: the bytes that must move at the read / write bandwidth this process reaches
(``common.measure_bandwidth``): violated, read ``(2t+2) P * 4`` (G and g twice) and write ``P * 4``
(out once); not violated, read ``(t+1) P * 4`` (G and g once; the fused op's copy of g is extra,
the original returns the gradient untouched).

Run from the repo root: ``python benchmarks/bench_gem_project.py [--quick | --toy] [--P 20000000 --t 4]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import measure_bandwidth, peak_extra_memory_mb, print_table, sync, time_interleaved, write_results  # noqa: E402
from peers import NOT_SAME, CompilePeers, add_peer_timeout_arg  # noqa: E402

from l2kd.ops import backend  # noqa: E402
from l2kd.ops.gem_project import gem_dual_solve_ref, gem_project  # noqa: E402

try:
    import quadprog  # type: ignore

    SOLVER = "quadprog"
except ImportError:  # pragma: no cover - depends on the environment
    quadprog = None
    SOLVER = "numpy-active-set"


def original_step(grad: torch.Tensor, mem: torch.Tensor, margin: float = 0.5, eps: float = 1e-3) -> torch.Tensor:
    """The original GEM step's projection (returns the projected gradient, or grad itself)."""
    dotp = torch.mm(grad.unsqueeze(0), mem.t())
    if (dotp < 0).sum() == 0:
        return grad
    memories_np = mem.cpu().double().numpy()
    gradient_np = grad.cpu().contiguous().view(-1).double().numpy()
    t = memories_np.shape[0]
    P = np.dot(memories_np, memories_np.transpose())
    P = 0.5 * (P + P.transpose()) + np.eye(t) * eps
    q = np.dot(memories_np, gradient_np) * -1
    if quadprog is not None:
        v = quadprog.solve_qp(P, q, np.eye(t), np.zeros(t) + margin)[0]
    else:
        v = gem_dual_solve_ref(torch.from_numpy(P), torch.from_numpy(-q), margin).numpy()
    x = np.dot(v, memories_np) + gradient_np
    return torch.from_numpy(x).to(grad.dtype).to(grad.device)


def make_case(t: int, P: int, violated: bool, device: torch.device):
    gen = torch.Generator().manual_seed(t * 7 + P)
    mem = torch.randn(t, P, generator=gen)
    if violated:
        grad = torch.randn(P, generator=gen) - 0.5 * mem.sum(0)
    else:
        mem = mem.abs_()
        grad = torch.rand(P, generator=gen)
    return grad.to(device), mem.to(device)


def peak_mb(fn, device) -> float:
    """Torch allocator peak (profiler) plus numpy's peak (tracemalloc), MB."""
    tracemalloc.start()
    try:
        torch_peak = peak_extra_memory_mb(fn, device)
        np_peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return torch_peak + np_peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="P = 1M only, fewer repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--P", type=int, action="append", default=None, help="flat size(s) instead of the grid's")
    ap.add_argument("--t", type=int, action="append", default=None, help="memory count(s) instead of the grid's")
    ap.add_argument("--toy", action="store_true", help="P = 10000, t in (1, 4): exercises the code path (dry runs)")
    add_peer_timeout_arg(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    sizes = args.P or ([10_000] if args.toy else [1_000_000] if args.quick else [1_000_000, 20_000_000])
    ts = args.t or ([1, 4] if args.quick or args.toy else [1, 4, 8])
    reps = 2 if args.toy else 3 if args.quick else 7
    peers = CompilePeers(args.peer_timeout)
    bandwidth = measure_bandwidth(device)
    print(f"gem_project benchmark: device={device} backend={backend()} baseline solver={SOLVER} "
          f"threads={torch.get_num_threads()} bandwidth: {bandwidth.describe()}")
    records = []
    for P in sizes:
        for t in ts:
            for violated in (True, False):
                grad, mem = make_case(t, P, violated, device)
                ref = original_step(grad, mem)
                out = gem_project(grad, mem)
                err = float((out.double() - ref.double()).abs().max() / ref.double().abs().max())
                assert err < 1e-5, f"fused and original disagree: rel err {err:.2e} (P={P}, t={t})"
                buf = torch.empty_like(grad).zero_()
                fns = {"orig": lambda: original_step(grad, mem), "fused": lambda: gem_project(grad, mem),
                       "out": lambda: gem_project(grad, mem, out=buf)}
                if not violated:  # in place leaves grad unchanged only when nothing is violated
                    fns["inplace"] = lambda: gem_project(grad, mem, out=grad)
                cstep, compile_error = peers.compile(original_step, lambda f: f(grad, mem))
                if cstep is not None:
                    cerr = float((cstep(grad, mem).double() - ref.double()).abs().max() / ref.double().abs().max())
                    if cerr < 1e-5:
                        fns["compile"] = lambda: cstep(grad, mem)
                    else:
                        compile_error = f"compiled original disagrees: rel err {cerr:.2e}"
                timed = time_interleaved(fns, device, warmup=1, reps=reps)
                if not violated:
                    assert torch.equal(grad, ref)
                base, fused, fused_out = timed["orig"], timed["fused"], timed["out"]
                inplace, comp = timed.get("inplace"), timed.get("compile")
                floor_ms = (bandwidth.floor_ms((2 * t + 2) * P * 4, P * 4) if violated
                            else bandwidth.floor_ms((t + 1) * P * 4))
                rec = {
                    "P": P,
                    "t": t,
                    "case": "violated" if violated else "ok",
                    "orig_ms": base["median_ms"],
                    "fused_ms": fused["median_ms"],
                    "fused_p20": fused["p20_ms"],
                    "fused_p80": fused["p80_ms"],
                    "orig_p20": base["p20_ms"],
                    "orig_p80": base["p80_ms"],
                    "speedup": base["median_ms"] / fused["median_ms"],
                    "out_ms": fused_out["median_ms"],
                    "out_p20": fused_out["p20_ms"],
                    "out_p80": fused_out["p80_ms"],
                    "speedup_out": base["median_ms"] / fused_out["median_ms"],
                    "floor_ms": floor_ms,
                    "fused/floor": fused["median_ms"] / floor_ms,
                    "out/floor": fused_out["median_ms"] / floor_ms,
                    "orig_MB": peak_mb(lambda: original_step(grad, mem), device),
                    "fused_MB": peak_mb(lambda: gem_project(grad, mem), device),
                    "rel_err": err,
                    "liger": NOT_SAME["liger_gem"],
                }
                if inplace is not None:
                    rec.update({"inplace_ms": inplace["median_ms"], "inplace_p20": inplace["p20_ms"],
                                "inplace_p80": inplace["p80_ms"], "speedup_inplace": base["median_ms"] / inplace["median_ms"]})
                if comp is not None:
                    rec.update({"compile_ms": comp["median_ms"], "compile_p20": comp["p20_ms"], "compile_p80": comp["p80_ms"]})
                else:
                    rec["compile_error"] = compile_error
                records.append(rec)
                sync(device)
                del grad, mem, ref, out, buf
    print_table(records, ["P", "t", "case", "orig_ms", "orig_p20", "orig_p80", "fused_ms", "fused_p20", "fused_p80",
                          "speedup", "out_ms", "out_p20", "out_p80", "speedup_out", "inplace_ms", "compile_ms",
                          "floor_ms", "fused/floor", "out/floor", "orig_MB", "fused_MB"])
    for r in records:
        if "compile_error" in r:
            print(f"  P={r['P']} t={r['t']} {r['case']}: {r['compile_error']}")
    print("speedup = orig/fused (functional, allocates its output); speedup_out = orig/fused with out= a "
          "preallocated buffer; inplace = out=grad (nothing violated: the check alone, as the original); floor = bytes / bandwidth (module docstring). Timings are wall clock: on a "
          "shared, loaded machine they include time the process waited for a core.")
    path = write_results("gem_project", device, records,
                         {"quick": args.quick, "toy": args.toy, "peer_timeout_s": args.peer_timeout, "sizes": sizes, "ts": ts, "baseline_solver": SOLVER, "margin": 0.5, "eps": 1e-3,
                          "dtype": "float32", **bandwidth.record()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
