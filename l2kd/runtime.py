"""Process-level runtime: device choice, seeding, the precision policy and logging.

Nothing here knows about tasks, strategies or files of a run; every layer above may use it.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

log = logging.getLogger("l2kd")
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def begin_cuda_init(argv: Sequence[str]) -> Optional[threading.Thread]:
    """Start creating the CUDA context in a background thread when the command will use a GPU
    (``--device`` absent, ``auto`` or ``cuda...``, and a GPU present), so that the driver's
    seconds of set-up overlap the imports that follow instead of coming after them. Not for
    several GPUs (``--n_gpus`` above 1, or a torchrun rank): the context would land on GPU 0
    before the rank picks its device. Errors are left to the first real use of the device,
    which reports them. Returns the thread, or None."""
    args = list(argv)
    value = lambda flag, default: args[args.index(flag) + 1] if flag in args[:-1] else default  # noqa: E731
    device, n_gpus = value("--device", "auto"), value("--n_gpus", "1")
    if not (device == "auto" or device.startswith("cuda")) or n_gpus != "1" or "LOCAL_RANK" in os.environ:
        return None
    if not torch.cuda.is_available():
        return None

    def init() -> None:
        try:
            torch.cuda.init()
        except Exception:  # reported where the run first uses the device
            pass

    t = threading.Thread(target=init, name="l2kd-cuda-init", daemon=True)
    t.start()
    return t


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the training step computes: ``fp32``, ``bf16`` autocast, or ``fp16`` autocast with
    loss scaling; ``reason`` says why (logged, recorded by benchmarks)."""

    mode: str  # "fp32" | "bf16" | "fp16"
    device_type: str
    reason: str

    def autocast(self) -> Callable[[], object]:
        """A factory of the autocast context of one forward (``nullcontext`` in fp32)."""
        if self.mode == "fp32":
            return nullcontext
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return lambda: torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> Optional[torch.amp.GradScaler]:
        """A grad scaler for fp16 (its range needs loss scaling), None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.mode == "fp16" else None


def precision_policy(device: torch.device, fp32: bool, bf16_cpu: bool,
                     capability: Optional[Tuple[int, int]] = None) -> PrecisionPolicy:
    """The precision of the training step on ``device``.

    CUDA, chosen by compute capability (``capability``; None: asked from the device):
    8.0 and newer (Ampere, Hopper, ...) bf16 autocast, with fp32's range and no loss scaling;
    7.x (Volta, Turing: the V100 and RTX 2080 Ti) fp16 autocast with a grad scaler, since bf16
    there is emulated and slower than fp32; older cards fp32 (no tensor cores: mixed precision
    would not pay). ``fp32`` (``--fp32``) wins everywhere. CPU: fp32 unless ``bf16_cpu``.
    """
    if fp32:
        return PrecisionPolicy("fp32", device.type, "--fp32")
    if device.type == "cuda":
        major, minor = capability if capability is not None else torch.cuda.get_device_capability(device)
        sm = f"compute capability {major}.{minor}"
        if major >= 8:
            return PrecisionPolicy("bf16", "cuda", f"{sm}: bf16 tensor cores")
        if major == 7:
            return PrecisionPolicy("fp16", "cuda", f"{sm}: fp16 tensor cores, no native bf16; loss scaling")
        return PrecisionPolicy("fp32", "cuda", f"{sm}: no tensor cores, mixed precision would not pay")
    if device.type == "cpu" and bf16_cpu:
        return PrecisionPolicy("bf16", "cpu", "--bf16_cpu")
    return PrecisionPolicy("fp32", device.type, "default on this device")


def precision_context(device: torch.device, fp32: bool, bf16_cpu: bool
                      ) -> Tuple[Callable[[], object], Optional[torch.amp.GradScaler]]:
    """(autocast context factory, GradScaler or None) of :func:`precision_policy`."""
    policy = precision_policy(device, fp32, bf16_cpu)
    log.debug("precision: %s (%s)", policy.mode, policy.reason)
    return policy.autocast(), policy.scaler()


def is_secondary_rank() -> bool:
    """A torchrun process other than rank 0 (read from the environment torchrun sets)."""
    return int(os.environ.get("RANK", "0")) != 0


def bar_options(quiet: bool) -> dict:
    """tqdm keyword arguments of every progress bar: none with ``--quiet`` or on ranks other
    than 0; redrawn at most every 30 s when stderr is a file (a log), every second on a terminal."""
    return {"disable": quiet or is_secondary_rank(), "mininterval": 1.0 if sys.stderr.isatty() else 30.0,
            "leave": False, "dynamic_ncols": True}


def setup_console_logging(quiet: bool = False) -> None:
    """INFO (WARNING with ``quiet``) lines of the ``l2kd`` logger to stderr, installed once.
    The training and test commands pass ``quiet`` only for ranks other than 0; ``--quiet``
    hides progress bars, not log lines."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING if quiet else logging.INFO)
            return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_FORMAT)
    h.setLevel(logging.WARNING if quiet else logging.INFO)
    log.addHandler(h)


@contextmanager
def log_to(path: Optional[str], quiet: bool = False) -> Iterator[None]:
    """Also append the ``l2kd`` logger's lines to ``path`` while the block runs.

    Nested blocks add their file beside the outer ones (a teacher trained inside a student's
    run logs to both folders), and each block removes only its own handler on exit.
    """
    setup_console_logging(quiet)
    if not path:
        yield
        return
    path = os.path.abspath(path)
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in log.handlers):
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fh = logging.FileHandler(path)
    fh.setFormatter(_FORMAT)
    log.addHandler(fh)
    try:
        yield
    finally:
        log.removeHandler(fh)
        fh.close()


def apply_thread_policy() -> int:
    """Set torch's intra-op thread count by :func:`l2kd.threads.thread_policy` (the CPUs this
    process may use: affinity mask and cgroup quota; ``OMP_NUM_THREADS`` wins) and return it."""
    from l2kd.threads import cgroup_cpu_limit, thread_policy

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    policy = thread_policy(os.environ, quota=cgroup_cpu_limit(), load=load)
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    log.debug("intra-op threads: %d (%s)", policy.threads, policy.reason)
    return policy.threads
