"""EWC (``--seq_train_type ewc``): QA loss only, plus a decoupled pull towards the anchor
weights weighted by a diagonal Fisher information (the original's ``regularizers.py``).

Importance: squared gradients of the class-weighted QA cross-entropy (``--tokens_weight``, the
training loss) over the task's training data, ``Omega += sum_b grad(L_b / n_b)**2 / N`` (the
original; the original's code crashes here on an undefined ``TOKEN_WEIGHT``, l2kd uses the
training weights it evidently meant). Kirkpatrick et al. average per-example squared
gradients: that is ``EWC(importance_batch_size=1)``; the original squares batch-mean gradients
(smaller by ``1/n_b**2``) and anchors at the weights before task 1 (``--reg_anchor initial``)
instead of at each previous task's optimum (``--reg_anchor previous``). The penalty is a step
after Adam, ``p -= lr * 2 * reg_lambda * Omega * (p - anchor)``; see ``regularizer.py``.
"""
from __future__ import annotations

from l2kd.config import StrategyTraits
from l2kd.losses import head_ce
from l2kd.strategies.regularizer import ImportanceRegularizer


class EWC(ImportanceRegularizer):
    """Elastic weight consolidation as LAMOL/L2KD run it."""

    name = "ewc"
    traits = StrategyTraits(memory_factor=0.30)
    kind = "sq"

    def batch_loss(self, model, batch, examples, ctx, weight):
        return head_ce(model, batch.qa_input, batch.qa_target, weight, losses=ctx.setup.losses,
                       rows=batch.rows.get("qa"))
