"""``--n_gpus N``: the original trained data-parallel on N local GPUs from one command; l2kd
starts N ranks of itself under PyTorch's launcher (``torch.distributed.run``), each of which
sees ``WORLD_SIZE`` and joins the process group instead of launching again
(:mod:`l2kd.distributed` does the data parallelism).

Like the original, a machine with fewer free GPUs than asked trains on those it has (with a
warning), and one with none is an error; that error says how to run N gloo ranks on CPU.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import List, Optional, Sequence

import torch

log = logging.getLogger("l2kd")


class LaunchError(RuntimeError):
    """``--n_gpus`` asks for GPUs this machine does not have."""


def gpu_count() -> int:
    """Visible CUDA devices."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def under_launcher() -> bool:
    """True inside a rank started by torchrun (or by :func:`launch`)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_launcher(cmd: List[str]) -> int:
    """Run the launcher command and return its exit status (the worst rank's)."""
    return subprocess.run(cmd, check=False).returncode


def launcher_command(n_ranks: int, module: str, argv: Sequence[str]) -> List[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_ranks}",
            "-m", module, *argv]


def launch_if_needed(n_gpus: int, module: str, argv: Sequence[str], device: str = "auto") -> Optional[int]:
    """Start ``n_gpus`` ranks of ``module`` with ``argv`` and return their exit status, or None
    when this process should do the work itself (``--n_gpus 1``, already a rank, or one GPU)."""
    if n_gpus <= 1:
        return None
    if under_launcher():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != n_gpus:
            log.warning("--n_gpus %d: running on the %d rank(s) the launcher started", n_gpus, world)
        return None
    available = 0 if device == "cpu" else gpu_count()
    if available == 0:
        raise LaunchError(
            f"--n_gpus {n_gpus}: no CUDA device here{' (--device cpu)' if device == 'cpu' else ''}. For "
            f"{n_gpus} data-parallel CPU processes (gloo) run: torchrun --nproc_per_node {n_gpus} -m {module} "
            "<the same flags>, or drop --n_gpus to train in one process")
    n = min(n_gpus, available)
    if n < n_gpus:  # the original continues on the GPUs it finds
        log.warning("--n_gpus %d: only %d GPU(s) available; continuing with %d", n_gpus, available, n)
    if n == 1:
        return None
    cmd = launcher_command(n, module, argv)
    log.info("--n_gpus %d: starting %d ranks: %s", n_gpus, n, " ".join(cmd))
    return run_launcher(cmd)
