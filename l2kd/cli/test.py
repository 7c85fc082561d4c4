"""``python -m l2kd.test``: an original test command line (the training flags).

Tests every finished stage's model (a task's, or with ``--unbound`` a chunk's ``task_<i>``) on
every task of ``--tasks`` (the last epoch, or every epoch with ``--test_all``), writes
``qa_<task>_<epoch>.csv`` and ``metrics.json`` in each stage folder and ``accuracy_matrix.json``
in the run folder, and prints the matrix (one row per stage).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Optional, Sequence

from l2kd import distributed as dist
from l2kd.evaluate import evaluate_run, format_epoch_matrices, format_matrix
from l2kd.launch import under_launcher
from l2kd.runtime import apply_thread_policy, setup_console_logging
from l2kd.settings import config_from_args, flag_notes, parse_args
from l2kd.strategies import load_custom_strategy

log = logging.getLogger("l2kd")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, test, print the matrix; a user-fixable error is one message and exit status 1."""
    args = parse_args(argv, prog="python -m l2kd.test")
    setup_console_logging(args.quiet)
    apply_thread_policy()  # the CPUs this process may use (affinity, cgroup quota)
    for level, note in flag_notes(args):
        log.log(level, "%s", note)
    if args.n_gpus > 1 and not under_launcher():
        # The original's test refuses n_gpus > 1; evaluation here runs on one device (rank 0 under
        # torchrun), so the training command's flags test unchanged.
        log.warning("--n_gpus %d: l2kd.test evaluates on one device", args.n_gpus)
    cfg = config_from_args(args)
    try:
        if args.custom_strategy:  # the output folder is named after the user strategy
            cfg = dataclasses.replace(cfg, seq_train_type=load_custom_strategy(args.custom_strategy).name)
    except (FileNotFoundError, ValueError) as exc:
        print(f"l2kd.test: error: {exc}", file=sys.stderr)
        return 1
    dist.init_from_env()
    if not dist.is_main():  # evaluation runs on rank 0 (as the original's test, one device)
        dist.barrier()
        return 0
    try:
        result = evaluate_run(cfg, quiet=args.quiet)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"l2kd.test: error: {exc}", file=sys.stderr)
        return 1
    if cfg.test_all:
        print(format_epoch_matrices(result) + "\n")
    print(format_matrix(result, "score after each task (0-100)"))
    dist.barrier()
    return 0
