"""What a run folder *is*: the configuration that defines what its models learnt, and the lock
that keeps a second process out of it.

A run folder's name holds only the model, strategy, tasks, replay share and seed; two command
lines that differ in, say, the learning rate share it. So every task record
(``l2kd_task.json``), resume state (``checkpoint.pt``) and the run record (``l2kd_run.json``)
carry the *learning configuration*: the whole :class:`~l2kd.config.TrainConfig` except the
keys that change how a run executes or is tested, not what it learns. A finished task or a
checkpoint is reused only under an equal learning configuration.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Dict, List, Optional

from l2kd.config import RUNTIME, TEST, SamplingConfig, TrainConfig, keys_of

# Keys that do not change what is learnt: where things live, how the run executes and logs
# (kind runtime), and test-time settings (kind test, recorded beside the scores instead); read
# from the config fields' metadata.
RUNTIME_KEYS = keys_of(TrainConfig, (RUNTIME, TEST))
DISCARD_FLAG = "--discard_stale"
# Flags added after run folders were learnt without them: recorded only when on, so that those
# folders (whose identities lack the key) stay reusable.
RECORDED_WHEN_ON = ("unbound", "distil_weighting", "distil_qa_only")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def learning_config(cfg) -> Dict[str, object]:
    """The keys of ``cfg`` that define what a run learns, as plain JSON values."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}
    d["lm_sampling"] = {k: v for k, v in d["lm_sampling"].items() if k not in keys_of(SamplingConfig, (RUNTIME,))}
    for key in RECORDED_WHEN_ON:
        if not d.get(key):
            d.pop(key, None)
    return _jsonable(d)


def test_settings(cfg) -> Dict[str, object]:
    """The settings a score depends on besides the model: recorded beside the scores."""
    return {"top_k_qa": cfg.qa_sampling.top_k, "top_p_qa": cfg.qa_sampling.top_p,
            "temperature_qa": cfg.qa_sampling.temperature, "max_test_examples": cfg.max_test_examples,
            "test_all": cfg.test_all, "seed": cfg.seed, "use_kernels": cfg.use_kernels,
            "extra_e2e": cfg.extra_e2e}


def differences(recorded: Dict[str, object], current: Dict[str, object]) -> List[str]:
    """``key: recorded -> current`` for every learning key that differs."""
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: {recorded.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}"
            for k in keys if recorded.get(k, "<absent>") != current.get(k, "<absent>")]


class IdentityMismatch(RuntimeError):
    """A run folder holds models learnt under another configuration."""


def mismatch_message(run_dir: str, stale: Dict[str, List[str]]) -> str:
    """The refusal: which files differ in which keys, and the two ways out."""
    lines = [f"{run_dir} holds models learnt with a different configuration:"]
    for where, diffs in stale.items():
        lines.append(f"  {where}: " + "; ".join(diffs))
    lines.append("Reusing them would mix configurations. Either train into a new --model_dir_root, or pass "
                 f"{DISCARD_FLAG} to move the stale tasks aside (into {os.path.join(run_dir, 'stale-<time>')}) "
                 "and train them again.")
    return "\n".join(lines)


def read_task_identity(record_path: str) -> Optional[Dict[str, object]]:
    """The learning configuration in a task record (None when it predates identities)."""
    try:
        with open(record_path) as f:
            return json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------- the lock
class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """An exclusive ``flock`` on ``<run>/.l2kd.lock`` holding the owner's pid, host and start time.

    The kernel drops the lock when its process dies (SIGKILL included), so a lock file left
    by a dead run is stale by construction and simply taken over; a live holder is named in
    the refusal.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def holder(self) -> Dict[str, object]:
        """The pid/host/start recorded in the lock file (empty when unreadable)."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self.holder()
            raise RunLocked(
                f"{os.path.dirname(self.path)} is in use by another l2kd process (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')}, started {h.get('started', '?')}); wait for it to finish or stop it. "
                f"Lock file: {self.path}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
