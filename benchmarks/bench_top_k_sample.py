"""Benchmark l2kd.ops.top_k_sample: fused kernel vs LAMOL's formulation (the reference).

Reference = ``top_k_sample_ref``: torch.topk + masking (+ stable sort / cumsum for top_p)
+ softmax + multinomial. Fused = the compiled op (uniforms drawn with torch.rand included).
Grid: B in {1, 16, 64}, V = 50257, k = 20, top_p in {0, 0.9}, fp32 (+ an fp16 row).
Peers: the reference under ``torch.compile`` (inductor, warmed up; a failure is recorded in the
row as ``compile_error``). Liger-Kernel and cut-cross-entropy have no sampling kernel (recorded).
Floor = bytes that must be read (B * V * element size) at the read bandwidth this process reaches on a
buffer far larger than the caches (``benchmarks.common.measure_bandwidth``). Target = floor plus one
kernel launch (LAUNCH_MS, about 5 us on a current GPU): a sampling step is one launch at best, and
``x target`` = fused / target (the goal on CUDA: B = 64 within 5x of it).
A compile of the peer past ``--peer_timeout`` seconds is recorded as "peer timed out".

    python benchmarks/bench_top_k_sample.py [--quick | --toy] [--device cpu|cuda] [--threads N] [--peer_timeout S]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    measure_bandwidth,
    peak_extra_memory_mb,
    print_table,
    time_fn,
    write_results,
)
from benchmarks.peers import NOT_SAME, CompilePeers, add_peer_timeout_arg  # noqa: E402
from l2kd.ops import has_compiled  # noqa: E402
from l2kd.ops.top_k_sample import top_k_sample, top_k_sample_ref  # noqa: E402

LAUNCH_MS = 0.005  # one kernel launch on a current GPU (~5 us), the fixed cost of any sampling step


def _support(logits: torch.Tensor, k: int, top_p: float) -> torch.Tensor:
    """Boolean [B, V] of ids the filtered distribution can return (LAMOL/HF masking)."""
    y = logits.float()
    kth = torch.topk(y, k, dim=-1).values[:, -1:]
    y = y.masked_fill(y < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        s, order = torch.sort(y, dim=-1, descending=True, stable=True)
        before = torch.softmax(s, -1).cumsum(-1) - torch.softmax(s, -1)
        s = s.masked_fill(before > top_p + 1e-4, float("-inf"))
        y = y.scatter(-1, order, s)
    return y > float("-inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows and repetitions")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--toy", action="store_true", help="V = 1000, B in (1, 8): exercises the code path (dry runs)")
    add_peer_timeout_arg(ap)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not has_compiled("top_k_sample"):
        print("l2kd._C has no top_k_sample: the 'fused' column runs the reference")

    V, k = (1000, 20) if args.toy else (50257, 20)
    bandwidth = measure_bandwidth(device)
    batches = (1, 8) if args.toy else (1, 64) if args.quick else (1, 16, 64)
    grid = [(b, torch.float32, p) for b in batches for p in (0.0, 0.9)]
    grid += [(batches[-1], torch.float16, 0.0)]
    reps = 3 if args.toy else 5 if args.quick else 15
    peers = CompilePeers(args.peer_timeout)
    rows, records = [], []
    for B, dtype, top_p in grid:
        g = torch.Generator(device=device).manual_seed(0)
        x = (torch.randn(B, V, device=device, generator=g) * 2).to(dtype)
        fused = lambda: top_k_sample(x, k, top_p, 1.0, g)  # noqa: E731
        ref = lambda: top_k_sample_ref(x, k, top_p, 1.0, g)  # noqa: E731
        ok = _support(x, k, top_p)
        cref, compile_error = peers.compile(top_k_sample_ref, lambda f: f(x, k, top_p, 1.0, g))
        comp = (lambda: cref(x, k, top_p, 1.0, g)) if cref is not None else None  # noqa: E731
        for fn in (fused, ref):  # agreement before timing: ids in the filtered support
            ids = fn()
            assert ok[torch.arange(B, device=device), ids].all(), "sampled id outside the kept set"
        if comp is not None and not ok[torch.arange(B, device=device), comp()].all():
            comp, compile_error = None, "compiled reference sampled an id outside the kept set (not timed)"
        tf = time_fn(fused, device, warmup=2, reps=reps)
        tr = time_fn(ref, device, warmup=1, reps=max(3, reps // 2))
        tc = time_fn(comp, device, warmup=1, reps=max(3, reps // 2)) if comp is not None else None
        mf = peak_extra_memory_mb(fused, device)
        mr = peak_extra_memory_mb(ref, device)
        nbytes = B * V * x.element_size()
        floor_ms = bandwidth.floor_ms(nbytes)
        target_ms = floor_ms + LAUNCH_MS
        rec = {
            "B": B, "V": V, "k": k, "top_p": top_p, "dtype": str(dtype).replace("torch.", ""),
            "fused_ms": tf["median_ms"], "fused_p20_ms": tf["p20_ms"], "fused_p80_ms": tf["p80_ms"],
            "ref_ms": tr["median_ms"], "ref_p20_ms": tr["p20_ms"], "ref_p80_ms": tr["p80_ms"],
            "speedup": tr["median_ms"] / tf["median_ms"],
            "fused_mem_mb": mf, "ref_mem_mb": mr,
            "floor_ms": floor_ms, "fused_vs_floor": tf["median_ms"] / floor_ms if floor_ms == floor_ms else float("nan"),
            "target_ms": target_ms, "fused_vs_target": tf["median_ms"] / target_ms,
            "liger": NOT_SAME["liger_sampling"],
        }
        if tc is not None:
            rec.update({"compile_ms": tc["median_ms"], "compile_p20_ms": tc["p20_ms"], "compile_p80_ms": tc["p80_ms"],
                        "fused_vs_compile": tc["median_ms"] / tf["median_ms"]})
        else:
            rec["compile_error"] = compile_error
        records.append(rec)
        rows.append({
            "B": B, "dtype": rec["dtype"], "top_p": top_p,
            "fused ms (p20-p80)": f"{tf['median_ms']:.3f} ({tf['p20_ms']:.3f}-{tf['p80_ms']:.3f})",
            "ref ms (p20-p80)": f"{tr['median_ms']:.2f} ({tr['p20_ms']:.2f}-{tr['p80_ms']:.2f})",
            "compile ms": f"{tc['median_ms']:.2f}" if tc is not None else "n/a",
            "speedup": rec["speedup"], "floor ms": floor_ms, "x floor": rec["fused_vs_floor"],
            "target ms": target_ms, "x target": rec["fused_vs_target"],
            "fused MB": mf, "ref MB": mr,
        })
    cols = ["B", "dtype", "top_p", "fused ms (p20-p80)", "ref ms (p20-p80)", "compile ms", "speedup", "floor ms", "x floor",
            "target ms", "x target", "fused MB", "ref MB"]
    print(f"top_k_sample, V={V}, k={k}, device={device}, threads={torch.get_num_threads()}, "
          f"floor at {bandwidth.describe()}")
    print_table(rows, cols)
    for r in records:
        if "compile_error" in r:
            print(f"  B={r['B']} {r['dtype']} top_p={r['top_p']}: {r['compile_error']}")
    print(f"  not timed: {NOT_SAME['liger_sampling']}; cut-cross-entropy neither")
    print(f"  target = floor + one kernel launch ({LAUNCH_MS * 1000:.0f} us); goal on CUDA: B=64 fused <= 5x target")
    path = write_results(op="top_k_sample", device=device, records=records,
                         config={"V": V, "k": k, "reps": reps, "quick": args.quick, "toy": args.toy,
                                 "launch_ms": LAUNCH_MS, "peer_timeout_s": args.peer_timeout,
                                 **bandwidth.record(), "threads": torch.get_num_threads(), "compiled": has_compiled("top_k_sample")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
