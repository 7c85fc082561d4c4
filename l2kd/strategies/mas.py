"""MAS (``--seq_train_type mas``): QA loss only, plus a decoupled pull towards the anchor
weights weighted by Memory-Aware-Synapses importance (the original's ``regularizers.py``).

Importance: ``|grad|`` of ``MSE(softmax(logits at the last prompt position), 0)`` (the mean of
``p**2`` over the batch and the vocabulary; the last prompt position is ``__ans__``, whose
logits predict the first answer token), ``Omega += sum_b |grad(L_b / n_b)| / N``. Aljundi et
al. use the squared L2 norm of the output per example (a sum over outputs, not a mean) and
average per-example gradients; the original's MSE mean divides by the vocabulary size and its
batch-mean gradient by ``n_b``. ``MAS(importance_batch_size=1)`` gives per-example gradients
(still with the MSE's ``1/V``, which ``--reg_lambda`` absorbs). Anchor and penalty step as EWC
(``regularizer.py``).
"""
from __future__ import annotations

import torch

from l2kd.config import StrategyTraits
from l2kd.losses import hidden_states
from l2kd.strategies.regularizer import ImportanceRegularizer


class MAS(ImportanceRegularizer):
    """Memory-aware synapses as LAMOL/L2KD run it."""

    name = "mas"
    traits = StrategyTraits(memory_factor=0.18)
    kind = "abs"

    def batch_loss(self, model, batch, examples, ctx, weight):
        # causal model, right padding: the prompt's last position sees only the prompt
        last = torch.tensor([len(e.cq) - 1 for e in examples], device=batch.qa_input.device)
        h = hidden_states(model, batch.qa_input[:, : int(last.max()) + 1])
        logits = model.get_output_embeddings()(h[torch.arange(len(examples), device=h.device), last])
        return torch.softmax(logits.float(), dim=-1).pow(2).mean()
