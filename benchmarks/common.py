"""Shared helpers for the benchmarks: timing, peak memory, environment record, JSON output.

Every benchmark compares the fused op against the eager reference in the same process,
prints one fixed-width table and writes ``benchmarks/results/<op>-<device>-<date>.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Set to write result files elsewhere (scripts/gpu_check.sh collects a run's files this way).
RESULTS_ENV = "L2KD_BENCH_RESULTS"

# Set to fix the bandwidth of every floor (GB/s, reads and writes alike) instead of measuring it.
BANDWIDTH_ENV = "L2KD_BENCH_BANDWIDTH_GBPS"


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth the floors are computed at: what this process reached, at its thread count,
    on a buffer far larger than the caches (or the figure fixed by ``L2KD_BENCH_BANDWIDTH_GBPS``)."""

    read_gbps: float
    write_gbps: float
    source: str  # "measured (...)" or the environment variable

    def floor_ms(self, read_bytes: float, write_bytes: float = 0.0) -> float:
        """Time the given traffic takes at this bandwidth: reads and writes back to back."""
        return (read_bytes / self.read_gbps + write_bytes / self.write_gbps) / 1e9 * 1e3

    def record(self) -> Dict[str, object]:
        """The fields a result file's config records."""
        return {"read_gbps": self.read_gbps, "write_gbps": self.write_gbps, "bandwidth_source": self.source}

    def describe(self) -> str:
        return f"read {self.read_gbps:.1f} GB/s, write {self.write_gbps:.1f} GB/s ({self.source})"


def measure_bandwidth(device: torch.device, nbytes: int = 512 * 2**20, reps: int = 9) -> Bandwidth:
    """The best read and write bandwidth this process reaches on ``device`` with its current thread
    count. Read: the faster of ``sum`` over the buffer (one stream per thread) and ``dot`` of its two
    halves (two streams per thread, as most ops read: more streams in flight reach more of the
    memory system). Write: ``fill_`` of the reused, already faulted-in buffer.

    A floor must be a bound the op cannot beat, so the best repeat is kept, not the median; the
    machine's bandwidth still drifts with its neighbours, so an op can land slightly below a floor
    measured a minute earlier.
    """
    fixed = os.environ.get(BANDWIDTH_ENV)
    if fixed:
        return Bandwidth(float(fixed), float(fixed), BANDWIDTH_ENV)
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    a, b = buf.chunk(2)
    probes = (("read", lambda: buf.sum()), ("read", lambda: torch.dot(a, b)), ("write", lambda: buf.fill_(1.0)))
    best: Dict[str, float] = {}
    for name, fn in probes:
        fastest_s = time_fn(fn, device, warmup=1, reps=reps)["min_ms"] / 1e3
        best[name] = max(best.get(name, 0.0), nbytes / fastest_s / 1e9)
    del a, b, buf
    return Bandwidth(best["read"], best["write"],
                     f"measured: {nbytes >> 20} MB sum or dot / fill_, best of {reps}, {torch.get_num_threads()} threads")


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times_ms: List[float]) -> Dict[str, float]:
    ts = sorted(times_ms)
    q = lambda f: ts[min(len(ts) - 1, int(round(f * (len(ts) - 1))))]  # noqa: E731
    return {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8), "min_ms": ts[0]}


def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                     reps: int = 7) -> Dict[str, Dict[str, float]]:
    """Median, p20, p80 and fastest wall time in milliseconds of each ``fns`` entry after ``warmup``
    rounds, their repeats interleaved (a, b, c, a, b, c, ...), so that a change in the machine's
    state (a neighbour taking memory bandwidth, the clock) falls on all of them alike and their
    ratio stays meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _summary(ts) for name, ts in times.items()}


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 2, reps: int = 7) -> Dict[str, float]:
    """Median, p20, p80 and fastest wall time in milliseconds of ``fn()`` after ``warmup`` calls."""
    return time_interleaved({"fn": fn}, device, warmup, reps)["fn"]


def peak_extra_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated during ``fn()`` beyond what was live before, in MB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak of the CPU allocator's
    profile (torch's CPU allocations are visible to ``torch.profiler`` memory stats only
    coarsely, so this uses the profiler's self CPU memory of the call).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Walk allocation events in order and track the running total to get the peak.
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)),
        key=lambda e: e.time_range.start,
    )
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage  # positive for alloc, negative for free (self events)
        peak = max(peak, live)
    return peak / 2**20


def environment(device: torch.device) -> Dict[str, object]:
    """Device, versions, commit: recorded with every result file."""
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], stderr=subprocess.DEVNULL, text=True).strip()
    except Exception:
        commit = "unknown"
    try:  # measured on uncommitted changes to tracked files: the commit alone does not say what ran
        dirty = bool(subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                             stderr=subprocess.DEVNULL, text=True).strip())
    except Exception:
        dirty = None
    info: Dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": commit,
        "uncommitted_changes": dirty,
        "python": platform.python_version(),
    }
    try:
        from l2kd.ops import backend

        info["l2kd_backend"] = backend()
    except Exception:
        info["l2kd_backend"] = "unavailable"
    return info


def print_table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> None:
    """Print ``rows`` as one fixed-width table with the given column order."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            if v != 0 and abs(v) < 0.001:  # relative errors, sub-microsecond times
                return f"{v:.1e}"
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_results(op: str, device: torch.device, records: List[Dict[str, object]], config: Dict[str, object],
                  out_dir: Optional[str] = None) -> str:
    """Write one JSON file per run (into ``out_dir``, else $L2KD_BENCH_RESULTS, else benchmarks/results)
    and return its path."""
    out_dir = out_dir or os.environ.get(RESULTS_ENV) or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(out_dir, f"{op}-{device.type}-{stamp}.json")
    payload = {"op": op, "environment": environment(device), "config": config, "records": records}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path
