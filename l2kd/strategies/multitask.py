"""``multitask``: every task learnt at once in one joint stage (QA loss only), the upper bound
the sequential methods are compared with."""
from __future__ import annotations

from l2kd.config import StrategyTraits
from l2kd.strategies.base import Strategy

JOINT_UNBOUND = ("the original ignores --unbound for the multitask types (their single stage has no task "
                 "boundaries to remove); drop --unbound")


class Multitask(Strategy):
    """One stage of every task, written into the run folder itself."""

    name = "multitask"
    traits = StrategyTraits(joint=True, accepts=frozenset({"multitask_specific"}),
                            refusals=(("unbound", JOINT_UNBOUND),))
