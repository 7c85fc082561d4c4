"""Peer implementations that the op benchmarks time next to l2kd, in the same process.

- ``torch.compile`` (inductor) of the very eager formula the benchmark uses as its reference,
  compiled and warmed up before timing. If compiling fails on a machine (no C++ compiler,
  an inductor bug), the benchmark records the reason in its JSON row instead of crashing.
  Compiling and warming up has a deadline (``--peer_timeout``, default 60 s): past it the
  compile is interrupted (SIGALRM in the main thread) and the row records "peer timed out".
- Liger-Kernel (``liger_kernel``) and cut-cross-entropy (``cut_cross_entropy``): Triton
  kernels, CUDA only, import-guarded. Each benchmark uses them only where they compute the
  same quantity as the l2kd op, and otherwise records why they are absent.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import threading
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

TORCH_COMPILE = "torch_compile"
LIGER = "liger"
CCE = "cce"
DEFAULT_PEER_TIMEOUT_S = 60.0


class PeerTimeout(Exception):
    """Raised inside a peer's compile / warm-up when its deadline passes."""


def add_peer_timeout_arg(ap: argparse.ArgumentParser) -> None:
    """The ``--peer_timeout`` option every benchmark with a compiled peer takes."""
    ap.add_argument("--peer_timeout", type=float, default=DEFAULT_PEER_TIMEOUT_S,
                    help="seconds a peer may spend compiling and warming up before it is recorded as timed out "
                         f"(default {DEFAULT_PEER_TIMEOUT_S:.0f}; 0: no limit)")


@contextlib.contextmanager
def deadline(seconds: Optional[float]) -> Iterator[Dict[str, bool]]:
    """Raise :class:`PeerTimeout` in the block after ``seconds`` (main thread; SIGALRM).

    The alarm repeats every 0.1 s until the block exits: a library that catches the first
    exception (dynamo falls back to eager when a compile raises) is interrupted again, so a
    swallowed deadline cannot turn into an unbounded warm-up. Yields a dict whose ``"fired"``
    says whether the deadline passed, so a caller can tell a
    timeout from another error even when a library wraps the exception. No limit when
    ``seconds`` is None or <= 0, or off the main thread (signals reach only the main thread).
    """
    state = {"fired": False}
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_alarm(signum, frame):
        state["fired"] = True
        raise PeerTimeout(f"deadline of {seconds:g} s passed")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def compiled(fn: Callable, warm: Callable[[Callable], object],
             timeout_s: Optional[float] = DEFAULT_PEER_TIMEOUT_S) -> Tuple[Optional[Callable], Optional[str]]:
    """``torch.compile(fn)`` (inductor), warmed up by ``warm(compiled_fn)``; (fn, None) or (None, reason).

    Compile and warm-up together get ``timeout_s`` seconds; past that the reason is
    "peer timed out after ... s" and the half-built compile state is dropped.
    """
    state: Dict[str, bool] = {}
    # Import the compiler before the clock starts: an alarm that lands inside a module import
    # leaves it half-registered, and the next import in the process then fails.
    importlib.import_module("torch._inductor.compile_fx")
    try:
        with deadline(timeout_s) as state:
            cfn = torch.compile(fn, backend="inductor", dynamic=False)
            warm(cfn)
            warm(cfn)  # the backward graph compiles on the first backward; time neither
        if state.get("fired"):  # a library caught the timeout and carried on: still a timeout
            raise PeerTimeout(f"deadline of {timeout_s:g} s passed")
        return cfn, None
    except Exception as exc:  # compile failures are machine facts to record, not benchmark bugs
        if state.get("fired") or isinstance(exc, PeerTimeout):
            torch._dynamo.reset()
            return None, f"peer timed out after {timeout_s:g} s (torch.compile + warm-up)"
        return None, f"torch.compile failed: {_reason(exc)}"


class CompilePeers:
    """``compiled`` with one deadline per compile; after the first timeout later compiles are
    skipped (recorded as such), so a benchmark's total time stays bounded."""

    def __init__(self, timeout_s: Optional[float] = DEFAULT_PEER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.timed_out = False

    def compile(self, fn: Callable, warm: Callable[[Callable], object]) -> Tuple[Optional[Callable], Optional[str]]:
        if self.timed_out:
            return None, f"peer timed out: skipped after an earlier compile passed its {self.timeout_s:g} s deadline"
        cfn, why = compiled(fn, warm, self.timeout_s)
        self.timed_out = bool(why and why.startswith("peer timed out"))
        return cfn, why


def import_peer(module: str, device: torch.device) -> Tuple[Optional[object], Optional[str]]:
    """(module, None) when ``module`` imports and ``device`` is CUDA, else (None, reason)."""
    if device.type != "cuda":
        return None, f"{module} runs on CUDA only (Triton kernels); device is {device.type}"
    try:
        return importlib.import_module(module), None
    except Exception as exc:
        return None, f"{module} not importable: {_reason(exc)}"


def liger_kl_div(device: torch.device) -> Tuple[Optional[Callable], Optional[str]]:
    """Liger's fused KL divergence as a KD loss: ``T^2 * liger_kl_div(log_softmax(s/T), softmax(t/T), batchmean)``.

    Liger fuses the KL terms and their gradient; the two softmaxes stay eager (its KL op takes
    log-probabilities and probabilities). (fn(s, t, mask, T) -> loss, None) or (None, reason).
    """
    mod, why = import_peer("liger_kernel.transformers.functional", device)
    if mod is None:
        return None, why
    kl = getattr(mod, "liger_kl_div", None)
    if kl is None:
        return None, "liger_kernel.transformers.functional has no liger_kl_div"

    def fn(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
        log_q = torch.log_softmax(s[mask].float() / T, dim=-1)
        p = torch.softmax(t[mask].float() / T, dim=-1)
        return kl(log_q, p, reduction="batchmean") * (T * T)

    return fn, None


def liger_fused_linear_kd(device: torch.device) -> Tuple[Optional[Callable], Optional[str]]:
    """Liger's fused linear JSD with beta = 0 (forward KL(p_teacher || q_student), no logits in memory).

    (fn(hs, ws, ht, wt, T) -> loss, None) or (None, reason). Liger's reduction and temperature
    scaling differ from the original's ``T^2 * batchmean``; the benchmark rescales with a
    factor fitted on one call and checks the gradient agrees before timing.
    """
    mod, why = import_peer("liger_kernel.transformers", device)
    if mod is None:
        return None, why
    cls = getattr(mod, "LigerFusedLinearJSD", None)
    if cls is None:
        return None, "liger_kernel.transformers has no LigerFusedLinearJSD"
    jsd = cls(jsd_beta=0.0, temperature=2.0)

    def fn(hs: torch.Tensor, ws: torch.Tensor, ht: torch.Tensor, wt: torch.Tensor, T: float) -> torch.Tensor:
        jsd.temperature = T
        return jsd(hs, ws, ht, wt)

    return fn, None


NOT_SAME = {
    "cce": "cut-cross-entropy computes cross-entropy against hard labels, not a KD loss against soft targets",
    "liger_sampling": "Liger-Kernel has no top-k / nucleus sampling kernel",
    "liger_gem": "Liger-Kernel and cut-cross-entropy have no GEM projection",
}


def peer_row(impl: str, reason: str, **fields: object) -> Dict[str, object]:
    """A JSON row for a peer that did not run: which, and why."""
    return {"impl": impl, "skipped": reason, **fields}
