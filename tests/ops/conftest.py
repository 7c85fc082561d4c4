"""Op tests: error paths of the compiled ops run in a forked child, and CUDA tests run first.

A C++ argument check that crashes instead of raising (an extension built by another compiler
than torch's; see ``python -m l2kd.ops.selfcheck``) would otherwise kill the whole pytest
process and every test after it. ``raises_safely`` makes that one failed test with a message.
"""
from __future__ import annotations

import os
import pickle
import re
import select
import signal
import time
from typing import Callable, Tuple, Type, Union

import pytest
import torch

Expected = Union[Type[BaseException], Tuple[Type[BaseException], ...]]
CHILD_TIMEOUT_S = 60.0


def _child(call: Callable[[], object], expected: Expected, match: str, fd: int) -> None:
    """In the forked child: make the call, report (outcome, type name, message), never return."""
    try:
        torch.set_num_threads(1)  # the parent's OpenMP pool does not exist in a forked child
        call()
        res = ("no-raise", "", "")
    except BaseException as exc:  # noqa: BLE001 - the parent judges it
        ok = isinstance(exc, expected)
        res = ("raised" if ok else "wrong-type", type(exc).__name__, str(exc))
    try:
        data = pickle.dumps(res)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os._exit(0)


def _read_all(fd: int, pid: int, timeout: float) -> Tuple[bytes, bool]:
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def raises_in_child(expected: Expected, match: str, call: Callable[[], object], *, uses_cuda: bool = False) -> None:
    """``with pytest.raises(expected, match=match): call()``, with the call made in a forked child.

    A child killed by a signal (or hung) fails this test with a message instead of taking the
    test process down. ``uses_cuda``: the call needs CUDA, which a forked child cannot use, so it
    runs here (as does everything where ``os.fork`` is missing).
    """
    if uses_cuda or not hasattr(os, "fork"):
        with pytest.raises(expected, match=match):
            call()
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        _child(call, expected, match, w)
    os.close(w)
    try:
        data, hung = _read_all(r, pid, CHILD_TIMEOUT_S)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    want = getattr(expected, "__name__", None) or " or ".join(e.__name__ for e in expected)
    if hung:
        pytest.fail(f"the call did not finish in {CHILD_TIMEOUT_S:.0f} s (expected {want} matching {match!r})")
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        pytest.fail(f"the call killed its (forked) process by {sig} instead of raising {want} matching {match!r}: "
                    "a C++ error path crashes; `python -m l2kd.ops.selfcheck` names the likely cause")
    outcome, name, message = pickle.loads(data)
    if outcome == "no-raise":
        pytest.fail(f"DID NOT RAISE {want}")
    if outcome == "wrong-type":
        pytest.fail(f"raised {name}: {message} (expected {want} matching {match!r})")
    assert re.search(match, message), f"Regex pattern did not match.\n Regex: {match!r}\n Input: {message!r}"


@pytest.fixture
def raises_safely():
    """The :func:`raises_in_child` helper as a fixture."""
    return raises_in_child


def pytest_collection_modifyitems(config, items):
    """Op tests that need CUDA run before the others, so a crash on a CPU error path cannot hide them."""
    here = os.path.dirname(os.path.abspath(__file__))
    ops = [i for i in items if str(i.fspath).startswith(here)]
    if not ops:
        return
    first = [i for i in ops if "cuda" in i.nodeid.lower()]
    if not first:
        return
    rest = [i for i in ops if "cuda" not in i.nodeid.lower()]
    pos = items.index(ops[0])
    others = [i for i in items if not str(i.fspath).startswith(here)]
    items[:] = others[:pos] + first + rest + others[pos:]
