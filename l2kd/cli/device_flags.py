"""The device flags the demo and the study share (``train``'s own come from :mod:`l2kd.settings`)."""
from __future__ import annotations

import argparse


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """``--device`` (auto: a GPU when there is one) and ``--bf16_cpu`` (bf16 autocast on CPU)."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: a GPU when there is one)")
    p.add_argument("--bf16_cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CPU (as on a recent GPU by default), fp32 master weights "
                        "(default off; on in the smollm2-135m presets)")
