"""Atomic file writes: a killed run never leaves a half-written file that looks finished."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from typing import Any, Optional

import torch


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        # mkstemp creates 0600; a result file should be as readable as one from a plain open()
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # torch.save reports a full disk as RuntimeError("... unexpected pos ..."): look at the free
        # space while the partial temp file still holds it (deleting it frees what it had taken)
        full = not isinstance(exc, OSError) and _nearly_full(d)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OSError(errno.ENOSPC, f"No space left on device ({str(exc).splitlines()[0]})", path) from exc
        raise


def _nearly_full(folder: str, margin: int = 16 * 2**20) -> bool:
    """Whether the file system of ``folder`` has less than ``margin`` bytes left."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file and rename."""
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(path: str, obj: Any) -> None:
    """``torch.save`` to a temp file, then rename."""
    _atomic(path, lambda f: torch.save(obj, f))


def remove_stale_temps(root: str) -> int:
    """Delete temp files a killed run left behind (``.tmp-*``, never mistaken for outputs)."""
    n = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.startswith(".tmp-"):
                os.unlink(os.path.join(d, f))
                n += 1
    return n


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: str) -> Optional[dict]:
    """The JSON object in ``path``, or None when the file is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def user_cache_dir(*parts: str) -> str:
    """``$XDG_CACHE_HOME/l2kd/<parts>`` (``~/.cache/l2kd/<parts>`` when it is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "l2kd", *parts)
