"""``python -m l2kd.train``: an original LAMOL / L2KD training command line, unchanged."""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Optional, Sequence

from l2kd.loop import train_sequence
from l2kd.settings import config_from_args, parse_args
from l2kd.strategies import load_custom_strategy

log = logging.getLogger("l2kd")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, train, and turn the errors a user can fix into one message and exit status 1."""
    args = parse_args(argv, prog="python -m l2kd.train")
    cfg = config_from_args(args)
    try:
        strategy = None
        if args.custom_strategy:
            strategy = load_custom_strategy(args.custom_strategy)
            cfg = dataclasses.replace(cfg, seq_train_type=strategy.name)
        train_sequence(cfg, strategy)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # data errors name the file and entry
        log.error("%s", exc)
        print(f"l2kd.train: error: {exc}", file=sys.stderr)
        return 1
    return 0
