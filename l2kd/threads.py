"""CPU thread policy: how many intra-op threads, and OpenMP threads that sleep instead of spin.

Imports nothing but the standard library: :func:`prefer_passive_wait` must run before torch
(and so libgomp, which reads ``OMP_WAIT_POLICY`` once when it is loaded) is imported; l2kd's
package ``__init__`` calls it. Why: libgomp's default waiting spins ~300k iterations at every
barrier; on a shared machine a spinning thread burns the time slice that the thread it waits
for needs, so a contended run slowed down far more than its CPU share explains.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Optional, Sequence


@dataclass(frozen=True)
class ThreadPolicy:
    """The decision and why (logged / recorded by benchmarks)."""

    threads: int
    reason: str


def cgroup_cpu_limit(text: Optional[str] = None) -> Optional[float]:
    """CPUs granted by a cgroup v2 quota (``/sys/fs/cgroup/cpu.max``: ``"<quota> <period>"`` or
    ``"max <period>"``), None when unlimited or unreadable. A container started with
    ``--cpus 2`` on a 64-CPU host has all 64 in its affinity mask but 2 CPUs of time."""
    if text is None:
        try:
            with open("/sys/fs/cgroup/cpu.max") as f:
                text = f.read()
        except OSError:
            return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(affinity: Optional[Sequence[int]] = None, quota: Optional[float] = None) -> int:
    """CPUs this process may run on: its affinity mask (e.g. a cpuset), capped by a cgroup CPU
    quota (rounded up), at least 1."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not Linux
            affinity = range(os.cpu_count() or 1)
    n = max(1, len(affinity))
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return n


def thread_policy(env: Mapping[str, str], affinity: Optional[Sequence[int]] = None,
                  quota: Optional[float] = None, load: Optional[float] = None) -> ThreadPolicy:
    """Intra-op threads: ``OMP_NUM_THREADS`` when the user set it, else the CPUs available
    (:func:`available_cpus`), not the host's CPU count.

    The load average is recorded in ``reason`` but does not lower the count: measured on the
    2-core machine with passive waiting (benchmarks/e2e.py's contention row), 2 threads under
    load 9 took 2.2-2.7 s per demo lll step against 3.5-3.9 s with 1 thread (the scheduler
    shares the CPUs per runnable thread, and sleeping waiters cost nothing); the loss under
    contention came from spinning waiters, which :func:`prefer_passive_wait` removes.
    """
    user = env.get("OMP_NUM_THREADS", "").strip()
    if user:
        try:
            return ThreadPolicy(max(1, int(user.split(",")[0])), "OMP_NUM_THREADS")
        except ValueError:
            pass  # malformed: torch ignores it too
    n = available_cpus(affinity, quota)
    why = f"{n} CPUs available" + (f" (cgroup quota {quota:g})" if quota is not None else "")
    if load is not None:
        why += f", load average {load:.1f}"
    return ThreadPolicy(n, why)


def prefer_passive_wait(env: MutableMapping[str, str] = os.environ,
                        modules: Mapping[str, object] = sys.modules) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a waiting policy (``OMP_WAIT_POLICY``
    or ``GOMP_SPINCOUNT``) or torch is already imported (libgomp has read its settings then).
    Returns whether it set it."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env or "torch" in modules:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
