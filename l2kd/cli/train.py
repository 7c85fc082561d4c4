"""``python -m l2kd.train``: an original LAMOL / L2KD training command line, unchanged."""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Optional, Sequence

from l2kd.launch import LaunchError, launch_if_needed
from l2kd.loop import train_sequence
from l2kd.loop.failures import expected, reported_message
from l2kd.runtime import apply_thread_policy, setup_console_logging
from l2kd.settings import config_from_args, flag_notes, parse_args
from l2kd.strategies import load_custom_strategy

log = logging.getLogger("l2kd")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, train, and turn the errors a user can fix into one message on stderr (the run's
    log has it too) and exit status 1; an error in the code itself keeps its traceback."""
    args = parse_args(argv, prog="python -m l2kd.train")
    setup_console_logging(args.quiet)
    apply_thread_policy()  # the CPUs this process may use (affinity, cgroup quota)
    for level, note in flag_notes(args):
        log.log(level, "%s", note)
    try:
        status = launch_if_needed(args.n_gpus, "l2kd.train", sys.argv[1:] if argv is None else list(argv),
                                  args.device)
    except LaunchError as exc:
        print(f"l2kd.train: error: {exc}", file=sys.stderr)
        return 1
    if status is not None:
        return status
    cfg = config_from_args(args)
    try:
        strategy, warnings = None, []
        if args.custom_strategy:
            strategy = load_custom_strategy(args.custom_strategy)
            if args.seq_train_type != strategy.name and args.seq_train_type != "lll":
                warnings.append(f"--custom_strategy {args.custom_strategy} replaces --seq_train_type "
                                f"{args.seq_train_type}: the run trains {strategy.name!r} only")
            cfg = dataclasses.replace(cfg, seq_train_type=strategy.name)
        train_sequence(cfg, strategy, warnings)
    except BaseException as exc:
        message = reported_message(exc)
        if isinstance(exc, KeyboardInterrupt) or not expected(exc):
            raise
        print(f"l2kd.train: error: {message or exc}", file=sys.stderr)
        return 1
    return 0
