"""What a run does when something breaks: one message for a fatal error (in the run's log
and, through the command line, once on stderr, with what to do next), and recovery from state
files that were damaged after l2kd wrote them whole.

Damaged files are never deleted and never silently replaced: they move into
``<task>/damaged-<time>/`` with a warning that names them.

* A truncated or corrupt ``checkpoint.pt``: the task restarts from its beginning. The latest
  ``model-<epoch>`` holds the weights only (no optimizer, schedule or random state), so
  continuing from it would train a different model than an uninterrupted run; restarting
  trains the same one (on CPU, bit for bit) and costs at most that task's time.
* A truncated ``model-finish`` (or ``strategy_state.pt`` / ``rng_state.pt``) of a finished
  task: that task's files are moved aside together and the task is trained again; every other
  finished task is kept as it is.
* A file that would run code when loaded (:class:`~l2kd.checkpoint.UnsafeStateFile`) is not
  recovered from: the run stops and names it.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from typing import List, Optional

from l2kd.checkpoint import UnreadableStateFile, load_state_file
from l2kd.layout import CHECKPOINT, MODEL_FINISH, RNG_STATE, STRATEGY_STATE, TASK_RECORD, TRAIN_LOG

log = logging.getLogger("l2kd")
MESSAGE_ATTR = "l2kd_message"  # set on an exception once its message is in the run's log
RESUME_HINT = ("re-run the same command: finished tasks are kept and the unfinished task resumes from its last "
               "checkpoint.pt")


def _move_into_damaged(tdir: str, names: List[str]) -> str:
    """Move ``names`` of ``tdir`` into a new ``<tdir>/damaged-<time>/``; return that folder."""
    dest = os.path.join(tdir, time.strftime("damaged-%Y%m%d-%H%M%S"))
    os.makedirs(dest, exist_ok=True)
    for name in names:
        if os.path.exists(os.path.join(tdir, name)):
            shutil.move(os.path.join(tdir, name), os.path.join(dest, name))
    return dest


def set_aside_checkpoint(tdir: str, exc: UnreadableStateFile) -> None:
    """A damaged ``checkpoint.pt``: move it aside and say that the task restarts."""
    dest = _move_into_damaged(tdir, [CHECKPOINT])
    log.warning("%s\nThe task cannot resume from it: moved it to %s; the task restarts from its beginning "
                "(finished tasks are kept)", exc, dest)


def check_finished_files(tdir: str, task: str) -> bool:
    """Whether the finished task in ``tdir`` can be restored. Its state files are opened
    (memory-mapped: the zip index and object tree are read, the tensors are not); a damaged one
    moves the task's final files aside with a warning and returns False (train it again).
    An unsafe file raises :class:`~l2kd.checkpoint.UnsafeStateFile`."""
    for name in (MODEL_FINISH, STRATEGY_STATE, RNG_STATE):
        path = os.path.join(tdir, name)
        if not os.path.isfile(path):
            continue
        try:
            load_state_file(path, "cpu", mmap=True)
        except UnreadableStateFile as exc:
            dest = _move_into_damaged(tdir, [MODEL_FINISH, STRATEGY_STATE, RNG_STATE, TASK_RECORD])
            log.warning("%s\nFinished task %s cannot be restored from it: moved its model-finish, state files and "
                        "%s to %s, and training %s again (every other finished task is kept)", exc, task,
                        TASK_RECORD, dest, task)
            return False
    return True


def _free_space(path: str) -> str:
    try:
        st = os.statvfs(path)
    except OSError:
        return "unknown"
    return f"{st.f_bavail * st.f_frsize / 2**20:.0f} MiB"


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as RuntimeError("... file write failed" / "unexpected pos")
    return isinstance(exc, RuntimeError) and ("write failed" in str(exc) or "unexpected pos" in str(exc))


def fatal_message(exc: BaseException, rdir: str) -> str:
    """The one message a fatal error of the run in ``rdir`` is reported with (what and where,
    then what to do next)."""
    if _is_disk_full(exc):
        where = getattr(exc, "filename", None) or rdir
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        return (f"no space left on the device while writing {where} ({_free_space(rdir)} free now; {detail}). "
                "Nothing half-written is left as a result. Free space (or give another --model_dir_root), then "
                f"{RESUME_HINT}")
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted; {RESUME_HINT}"
    if isinstance(exc, SystemExit):
        return str(exc.code)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return f"{exc}. Fix the cause, then {RESUME_HINT}"
    if isinstance(exc, (OSError, ValueError, RuntimeError, ArithmeticError)):
        return str(exc)
    return (f"{type(exc).__name__}: {exc} -- an error in l2kd or in a custom strategy; the traceback is in "
            f"{os.path.join(rdir, TRAIN_LOG)}")


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure a user can act on (reported as a message, no traceback)."""
    return isinstance(exc, (OSError, ValueError, RuntimeError, ArithmeticError, SystemExit, KeyboardInterrupt))


def report_fatal(exc: BaseException, rdir: str) -> None:
    """Write the fatal error into the run's log file(s) once (an inner teacher run reports it;
    the student's run around it does not again) and attach the message to ``exc`` for the
    command line, which prints it on stderr. The console handler is skipped so that the
    message appears on stderr once."""
    if getattr(exc, MESSAGE_ATTR, None) is not None:
        return
    message = fatal_message(exc, rdir)
    try:
        setattr(exc, MESSAGE_ATTR, message)
    except AttributeError:  # pragma: no cover - exceptions without a __dict__
        pass
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "fatal: %s", (message,),
                            None if expected(exc) else (type(exc), exc, exc.__traceback__))
    # a full disk may refuse the log line too: then the message still reaches stderr, without
    # logging's own "--- Logging error ---" traceback in front of it
    raise_before, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        for h in log.handlers:
            if isinstance(h, logging.FileHandler):
                h.handle(record)
    finally:
        logging.raiseExceptions = raise_before


def reported_message(exc: BaseException) -> Optional[str]:
    """The message :func:`report_fatal` attached to ``exc`` (None when it was not reported)."""
    return getattr(exc, MESSAGE_ATTR, None)
