"""LAMOL's losses: weighted cross-entropy on the QA answer tokens and on the whole LM sequence.

``tokens_weight`` is a *class* weight of the cross-entropy (docs/original.md section 3): targets equal to
``__ans__`` (and ``__sep__``) count ``tokens_weight`` times, in the numerator and in the
weighted-mean denominator. The LM head is applied only to positions that have a target
(answer tokens for QA, non-padding for LM): the same loss as the original's full-logits
cross-entropy with ``ignore_index=-1``, without computing logits nobody reads.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from l2kd.data.qa_format import IGNORE
from l2kd.ops.linear_cross_entropy import linear_cross_entropy
from l2kd.tokenizer import SpecialIds


def token_weights(vocab_size: int, ids: SpecialIds, tokens_weight: float, device: torch.device) -> torch.Tensor:
    """Class-weight vector ``[V]``: ``tokens_weight`` at ``__ans__``/``__sep__``, 1 elsewhere."""
    w = torch.ones(vocab_size, device=device)
    w[ids.ans] = tokens_weight
    if ids.sep >= 0:
        w[ids.sep] = tokens_weight
    return w


LOSS_PARTS = ("qa", "lm", "qa_kd", "lm_kd", "qa_ce", "lm_ce")


def loss_denominators(batch, weight: torch.Tensor) -> torch.Tensor:
    """The denominator of every mean the built-in losses take over ``batch``, in
    :data:`LOSS_PARTS` order: class-weight sums of the QA / LM targets (``qa``, ``lm``), target
    counts of the current task's rows (``*_kd``, Word-KD's batchmean) and class-weight sums of
    the replayed rows (``*_ce``). Known before the forward pass, so one all-reduce of this
    vector lets N ranks normalise by the global batch."""
    out = []
    for tgt in (batch.qa_target, batch.lm_target):
        has = tgt != IGNORE
        out.append(weight[tgt[has]].sum())
    current = ~batch.is_pseudo[:, None]
    for tgt in (batch.qa_target, batch.lm_target):
        out.append(((tgt != IGNORE) & current).sum().to(weight.dtype))
    for tgt in (batch.qa_target, batch.lm_target):
        rows = (tgt != IGNORE) & ~current
        out.append(weight[tgt[rows]].sum())
    return torch.stack([o.to(torch.float64) for o in out])


def hidden_states(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[B, L, H]`` of the transformer body (no LM head)."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def selected_logits(model: PreTrainedModel, input_ids: torch.Tensor, target: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the positions with a target: ``(logits [N, V], targets [N], row mask [B, L])``."""
    mask = target != IGNORE
    h = hidden_states(model, input_ids)[mask]
    return model.get_output_embeddings()(h), target[mask], mask


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-weighted mean cross-entropy; 0 (with a graph) when there is no target."""
    if target.numel() == 0:
        return logits.sum() * 0.0
    w = weight[: logits.shape[-1]]
    return F.cross_entropy(logits.float(), target, weight=w)


def head_ce(model: PreTrainedModel, input_ids: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            chunked: bool = True) -> torch.Tensor:
    """Weighted-mean cross-entropy of the LM head on the positions that have a target.

    ``chunked`` uses :func:`l2kd.ops.linear_cross_entropy` (no ``[N, V]`` logits, same value
    and gradients); otherwise the eager logits + ``F.cross_entropy``.
    """
    head = model.get_output_embeddings()
    if chunked and getattr(head, "bias", None) is None:
        mask = target != IGNORE
        h = hidden_states(model, input_ids)[mask]
        return linear_cross_entropy(h, head.weight, target[mask], weight)
    logits, tgt, _ = selected_logits(model, input_ids, target)
    return weighted_ce(logits, tgt, weight)


def qa_lm_loss(model: PreTrainedModel, qa_input: torch.Tensor, qa_target: torch.Tensor,
               lm_input: Optional[torch.Tensor], lm_target: Optional[torch.Tensor],
               weight: torch.Tensor, chunked: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """QA loss and (when ``lm_input`` is given) LM loss, each a weighted-mean cross-entropy."""
    qa = head_ce(model, qa_input, qa_target, weight, chunked)
    if lm_input is None:
        return qa, None
    return qa, head_ce(model, lm_input, lm_target, weight, chunked)
