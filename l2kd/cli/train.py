"""``python -m l2kd.train``: an original LAMOL / L2KD training command line, unchanged."""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional, Sequence

from l2kd.loop import train_sequence
from l2kd.loop.failures import expected, reported_message
from l2kd.settings import config_from_args, parse_args
from l2kd.strategies import load_custom_strategy


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, train, and turn the errors a user can fix into one message on stderr (the run's
    log has it too) and exit status 1; an error in the code itself keeps its traceback."""
    args = parse_args(argv, prog="python -m l2kd.train")
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
