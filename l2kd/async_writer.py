"""State files written off the training thread: a snapshot on the host now, the atomic write later.

:meth:`StateWriter.submit` copies every tensor of a state to host memory first (on a GPU into
pinned buffers with non-blocking copies queued on the current stream, so the next steps are not
held up; the worker waits for one event before it writes; on the CPU a copy, because training
updates the parameters in place), then one worker thread writes it with the atomic writer of
:mod:`l2kd.io_utils`. Tensors that share a storage (tied weights) still share it in the
snapshot, so the file holds the same bytes a synchronous ``torch.save`` writes.

One pending write per file: a newer state for a file whose write has not started replaces the
older one (the epoch models have distinct names, so every one is written). A failed write is
raised again in the caller at the next :meth:`submit` or :meth:`wait`, naming the file.
"""
from __future__ import annotations

import collections
import copy
import os
import threading
from dataclasses import dataclass
from typing import Any, Deque, Dict, Optional

import torch

from l2kd.io_utils import atomic_torch_save


class StateWriteError(OSError):
    """A background write failed; ``filename`` is the file, ``__cause__`` the original error."""


@dataclass
class _Job:
    path: str
    obj: Any
    ready: Optional[torch.cuda.Event]  # the snapshot's copies are done once this is reached
    label: object


def snapshot(obj: Any) -> Any:
    """``obj`` with every tensor copied to (pinned, on a GPU) host memory and every dict, list
    and tuple rebuilt; storages shared inside ``obj`` stay shared. Other values are kept as
    they are (numbers and strings). Copies from a GPU are queued, not finished: see
    :func:`snapshot_ready`."""
    return _copy(obj, {})


def _copy(obj: Any, memo: Dict[tuple, torch.UntypedStorage]) -> Any:
    if isinstance(obj, torch.Tensor):
        return _copy_tensor(obj, memo)
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _copy(v, memo)
        if hasattr(obj, "_metadata"):  # a module's state dict: its version record is saved too
            out._metadata = copy.deepcopy(obj._metadata)
        return out
    if isinstance(obj, list):
        return [_copy(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_copy(v, memo) for v in obj)
    return obj


def _copy_tensor(t: torch.Tensor, memo: Dict[tuple, torch.UntypedStorage]) -> torch.Tensor:
    t = t.detach()
    src = t.untyped_storage()
    key = (src.device.type, src.device.index, src.data_ptr(), src.nbytes())
    dst = memo.get(key)
    if dst is None:
        if src.device.type == "cpu":
            dst = torch.empty(src.nbytes(), dtype=torch.uint8).untyped_storage()
            dst.copy_(src)
        else:
            pin = src.device.type == "cuda"
            dst = torch.empty(src.nbytes(), dtype=torch.uint8, pin_memory=pin).untyped_storage()
            dst.copy_(src, non_blocking=pin)
        memo[key] = dst
    out = torch.empty(0, dtype=t.dtype)
    out.set_(dst, t.storage_offset(), t.size(), t.stride())
    return out


def snapshot_ready(obj: Any) -> Optional[torch.cuda.Event]:
    """An event recorded after the queued copies of a snapshot (None when nothing is on a GPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        ev = torch.cuda.Event()
        ev.record()
        return ev
    return None


def tensor_bytes(obj: Any) -> int:
    """The bytes of the distinct storages in ``obj`` (about a ``torch.save`` file's size)."""
    seen: Dict[tuple, int] = {}
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[(st.device.type, st.data_ptr())] = st.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return sum(seen.values())


def _named(exc: BaseException, path: str) -> BaseException:
    """``exc`` as the caller sees it: unchanged when it names ``path`` already (the atomic
    writer's full-disk error does), else a :class:`StateWriteError` naming it (errno kept, so a
    full disk is still reported as one)."""
    if isinstance(exc, OSError) and exc.filename == path:
        return exc
    detail = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()[0]
    err = StateWriteError(getattr(exc, "errno", None) or 0, f"writing in the background failed: {detail}", path)
    err.__cause__ = exc
    return err


class StateWriter:
    """One worker thread writing snapshots of states atomically, in the order submitted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: Deque[str] = collections.deque()  # paths, in write order
        self._pending: Dict[str, _Job] = {}
        self._busy = False
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self.written: Dict[object, int] = {}  # label -> bytes of the files written under it

    def submit(self, path: str, obj: Any, label: object = None) -> int:
        """Snapshot ``obj`` now and write it to ``path`` in the background (``label``: what its
        bytes count towards in :attr:`written`); returns the bytes of its tensors. Raises a
        failed earlier write first."""
        self._raise_error()
        copy = snapshot(obj)
        job = _Job(path, copy, snapshot_ready(copy), label)
        with self._cond:
            if path not in self._pending:
                self._queue.append(path)
            self._pending[path] = job  # an unstarted older state of the same file is dropped
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="l2kd-state-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return tensor_bytes(copy)

    def wait(self) -> None:
        """Block until every submitted state is on disk; raise a failed write (naming its file)."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()
        self._raise_error()

    def close(self) -> None:
        """Drain the queue and stop the worker (errors are raised as by :meth:`wait`)."""
        try:
            self.wait()
        finally:
            with self._cond:
                thread, self._thread = self._thread, None
                if thread is not None:
                    self._queue.append("")  # the stop mark
                    self._cond.notify_all()
            if thread is not None:
                thread.join()

    def _raise_error(self) -> None:
        with self._cond:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                path = self._queue.popleft()
                if not path:
                    return
                job = self._pending.pop(path)
                self._busy = True
            try:
                if job.ready is not None:
                    job.ready.synchronize()
                atomic_torch_save(path, job.obj)
                size = os.path.getsize(path)
                with self._cond:
                    self.written[job.label] = self.written.get(job.label, 0) + size
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                err = _named(exc, path)
                with self._cond:
                    if self._error is None:
                        self._error = err
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
