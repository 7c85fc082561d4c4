"""A small phase recorder for end-to-end benchmarks: wall time, item counts, peak RSS per phase.

The library stays free of timing code: :meth:`PhaseRecorder.wrap` replaces a module attribute
(``l2kd.loop.task.step``, ``l2kd.evaluate.predict``, ...) with a timed wrapper for the length of
a ``with`` block and puts the original back afterwards. Phases nest: a phase entered while another
runs is recorded under ``outer/inner`` (a teacher's training steps are ``teacher_train/train_step``,
not student steps), and each phase reports its *self* time (its inclusive time minus that of the
phases inside it), so the self times of all phases plus ``other`` add up to the run's wall time.

Peak RSS: Linux's resident-set high-water mark (``VmHWM``) is reset when a phase starts
(``/proc/self/clear_refs``) and read when it ends; the mark seen before a reset is credited to
every enclosing phase first, so nesting loses nothing. Where the mark cannot be reset the figure
is the process's peak so far (an upper bound).

:class:`StepSplit` splits the training step itself (batch, forward, backward, optimizer, and the
step logging), with CUDA events on a GPU and the wall clock on CPU.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple


def proc_field(path: str, key: str) -> Optional[int]:
    """The first number after ``key`` in a ``/proc`` file of this process (None where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _read_hwm_kb() -> Optional[int]:
    return proc_field("/proc/self/status", "VmHWM:")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseStats:
    """Totals of one phase path."""

    calls: int = 0
    seconds: float = 0.0  # inclusive
    child_seconds: float = 0.0  # spent in phases nested inside this one
    items: int = 0  # examples (or sequences) the calls handled
    peak_rss_kb: int = 0

    @property
    def self_seconds(self) -> float:
        return self.seconds - self.child_seconds

    def as_dict(self) -> Dict[str, float]:
        return {"calls": self.calls, "seconds": self.self_seconds, "inclusive_seconds": self.seconds,
                "items": self.items, "items_per_s": self.items / self.self_seconds if self.self_seconds > 0 else None,
                "peak_rss_mb": self.peak_rss_kb / 1024}


@dataclass
class _Open:
    path: str
    t0: float
    child: float = 0.0
    peak_kb: int = 0


@dataclass
class PhaseRecorder:
    """Records nested phases; ``clock`` and ``rss`` are injectable for tests."""

    clock: Callable[[], float] = time.perf_counter
    rss: Tuple[Callable[[], Optional[int]], Callable[[], bool]] = (_read_hwm_kb, _reset_hwm)
    stats: Dict[str, PhaseStats] = field(default_factory=dict)
    _stack: List[_Open] = field(default_factory=list)

    def _credit_peak(self) -> None:
        kb = self.rss[0]()
        if kb is not None:
            for o in self._stack:
                o.peak_kb = max(o.peak_kb, kb)

    @contextlib.contextmanager
    def phase(self, name: str, items: int = 0) -> Iterator[Dict[str, int]]:
        """Time the block as phase ``name``; the yielded dict's ``items`` may be set inside it."""
        self._credit_peak()  # the enclosing phases keep their peak across the reset below
        self.rss[1]()
        path = f"{self._stack[-1].path}/{name}" if self._stack else name
        box = {"items": items}
        self._stack.append(_Open(path, self.clock()))
        try:
            yield box
        finally:
            self._credit_peak()
            o = self._stack.pop()
            dt = self.clock() - o.t0
            st = self.stats.setdefault(path, PhaseStats())
            st.calls += 1
            st.seconds += dt
            st.child_seconds += o.child
            st.items += int(box["items"])
            st.peak_rss_kb = max(st.peak_rss_kb, o.peak_kb)
            if self._stack:
                self._stack[-1].child += dt
                self._stack[-1].peak_kb = max(self._stack[-1].peak_kb, o.peak_kb)

    def wrap(self, owner: Any, attr: str, name: str,
             items: Optional[Callable[[tuple, dict, Any], int]] = None) -> contextlib.AbstractContextManager:
        """Within the returned context, ``owner.attr`` runs as phase ``name``; ``items(args,
        kwargs, result)`` counts what one call handled."""
        original = getattr(owner, attr)
        rec = self

        def timed(*args, **kwargs):
            with rec.phase(name) as box:
                result = original(*args, **kwargs)
                if items is not None:
                    box["items"] = items(args, kwargs, result)
            return result

        @contextlib.contextmanager
        def patched() -> Iterator[None]:
            setattr(owner, attr, timed)
            try:
                yield
            finally:
                setattr(owner, attr, original)

        return patched()

    def report(self, total_seconds: Optional[float] = None) -> Dict[str, Dict[str, float]]:
        """Per phase path: self seconds, items/s, peak RSS; ``other`` = the rest of ``total_seconds``."""
        out = {k: v.as_dict() for k, v in sorted(self.stats.items())}
        if total_seconds is not None:
            top = sum(v.seconds for k, v in self.stats.items() if "/" not in k)
            out["other"] = {"calls": 1, "seconds": max(0.0, total_seconds - top), "inclusive_seconds": None,
                            "items": 0, "items_per_s": None, "peak_rss_mb": None}
        return out

    def largest(self, total_seconds: Optional[float] = None) -> Tuple[str, float]:
        """The phase path with the most self time."""
        rep = self.report(total_seconds)
        name = max(rep, key=lambda k: rep[k]["seconds"])
        return name, rep[name]["seconds"]


# --- the split of a training step -------------------------------------------------------------

SECTIONS = ("batch", "forward", "backward", "optimizer")


class StepSplit:
    """Splits each training step at four marks: the step starts, the strategy's loss starts
    (``batch``: the batch collated and copied before it), the loss returns (``forward``),
    backward returns (``backward``: the non-finite check and ``zero_grad`` before it included),
    the step returns (``optimizer``: clipping, the optimizer, the schedule, the values read
    back). ``logging`` is the time of the loop's step-logging calls, outside the steps.

    Host time is ``clock`` at each mark. On a GPU each mark also records a CUDA event, read
    only by :meth:`report` (one synchronisation at the end), so the split costs the step no
    synchronisation: device time of a section is the time between its events on the stream.
    A step that does not reach every mark (a skipped non-finite step) is left out.
    """

    def __init__(self, cuda: bool = False, clock: Callable[[], float] = time.perf_counter,
                 event: Optional[Callable[[], Any]] = None) -> None:
        self.cuda = cuda
        self.clock = clock
        self._event = event
        self.steps: List[Dict[str, Tuple[float, Any]]] = []
        self.logging: List[Tuple[float, float, Any, Any]] = []
        self._open: Optional[Dict[str, Tuple[float, Any]]] = None
        self._depth = 0  # nested loss calls (a wrapper strategy calling its base): only the outermost marks

    def _stamp(self) -> Tuple[float, Any]:
        ev = None
        if self.cuda:
            ev = self._event() if self._event else _cuda_event()
            ev.record()
        return self.clock(), ev

    def mark(self, name: str, last: bool = False) -> None:
        """Record mark ``name`` in the open step (ignored outside a step, and inside the loss); the
        first one counts, or with ``last`` the latest (a step may run backward more than once)."""
        if self._open is not None and self._depth == 0 and (last or name not in self._open):
            self._open[name] = self._stamp()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self._open = {"start": self._stamp()}
        try:
            yield
        finally:
            self._open["end"] = self._stamp()
            if all(k in self._open for k in ("forward_start", "forward_end", "backward_end")):
                self.steps.append(self._open)
            self._open = None

    @contextlib.contextmanager
    def loss(self) -> Iterator[None]:
        self.mark("forward_start")
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self.mark("forward_end")

    @contextlib.contextmanager
    def log_call(self) -> Iterator[None]:
        t0, e0 = self._stamp()
        try:
            yield
        finally:
            t1, e1 = self._stamp()
            self.logging.append((t0, t1, e0, e1))

    def report(self) -> Dict[str, Dict[str, float]]:
        """Per section: total and mean milliseconds per step, host and (on a GPU) device."""
        bounds = {"batch": ("start", "forward_start"), "forward": ("forward_start", "forward_end"),
                  "backward": ("forward_end", "backward_end"), "optimizer": ("backward_end", "end")}
        if self.cuda:
            _cuda_sync()
        n = len(self.steps)
        out: Dict[str, Dict[str, float]] = {}
        for name, (a, b) in bounds.items():
            host = sum(s[b][0] - s[a][0] for s in self.steps) * 1e3
            row = {"steps": n, "host_ms": host, "host_ms_per_step": host / n if n else None}
            if self.cuda:
                dev = sum(s[a][1].elapsed_time(s[b][1]) for s in self.steps)
                row.update(device_ms=dev, device_ms_per_step=dev / n if n else None)
            out[name] = row
        host = sum(t1 - t0 for t0, t1, _, _ in self.logging) * 1e3
        row = {"steps": len(self.logging), "host_ms": host,
               "host_ms_per_step": host / len(self.logging) if self.logging else None}
        if self.cuda:
            dev = sum(e0.elapsed_time(e1) for _, _, e0, e1 in self.logging)
            row.update(device_ms=dev, device_ms_per_step=dev / len(self.logging) if self.logging else None)
        out["logging"] = row
        return out


def _cuda_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


@contextlib.contextmanager
def patched(owner: Any, attr: str, make: Callable[[Callable], Callable]) -> Iterator[bool]:
    """Replace ``owner.attr`` by ``make(original)`` for the block; yields False (and patches
    nothing) when ``owner`` has no such attribute, so a benchmark survives a renamed function."""
    if not hasattr(owner, attr):
        yield False
        return
    original = getattr(owner, attr)
    setattr(owner, attr, make(original))
    try:
        yield True
    finally:
        setattr(owner, attr, original)


def around(enter: Callable[[], contextlib.AbstractContextManager]) -> Callable[[Callable], Callable]:
    """``make`` for :func:`patched`: run the original inside ``enter()``."""
    def make(original: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            with enter():
                return original(*args, **kwargs)
        return wrapped
    return make


def after(fn: Callable[[], None]) -> Callable[[Callable], Callable]:
    """``make`` for :func:`patched`: call ``fn()`` once the original returns."""
    def make(original: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            fn()
            return out
        return wrapped
    return make
