"""LAMOL's losses: weighted cross-entropy on the QA answer tokens and on the whole LM sequence.

``tokens_weight`` is a *class* weight of the cross-entropy (docs/original.md section 3): targets equal to
``__ans__`` (and ``__sep__``) count ``tokens_weight`` times, in the numerator and in the
weighted-mean denominator. The LM head is applied only to positions that have a target
(answer tokens for QA, non-padding for LM): the same loss as the original's full-logits
cross-entropy with ``ignore_index=-1``, without computing logits nobody reads.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from l2kd.data.qa_format import IGNORE
from l2kd.ops import kd_loss, kd_loss_ref
from l2kd.ops.linear_cross_entropy import linear_cross_entropy
from l2kd.ops.linear_kd_loss import linear_kd_loss
from l2kd.tokenizer import SpecialIds


@dataclass(frozen=True)
class Losses:
    """The run's loss implementations, chosen once (``--no_kernels`` sets ``use_kernels=False``).

    ``ce`` is the chunked head + cross-entropy (plain PyTorch, so on either way; a head with a
    bias gets the eager logits instead, as the fused path has no bias). ``kd`` is the fused
    heads + KD loss with the compiled kernel (bias-free heads), else eager logits and
    :func:`l2kd.ops.kd_loss` (the reference with ``use_kernels=False``).

    ``compile_mode`` (``--torch_compile``): ``"off"``, or a ``torch.compile`` mode under which
    :meth:`hidden` runs the transformer body (compiled once per model, with dynamic shapes, as
    batch lengths vary); the heads and losses stay the compiled operators above.
    """

    use_kernels: bool = True
    compile_mode: str = "off"
    _bodies: "weakref.WeakKeyDictionary" = field(default_factory=weakref.WeakKeyDictionary, repr=False,
                                                 compare=False)

    def hidden(self, model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``[B, L, H]`` of ``model``'s body, compiled with ``compile_mode``."""
        if self.compile_mode == "off":
            return hidden_states(model, input_ids)
        body = self._bodies.get(model)
        if body is None:
            from torch._inductor import list_mode_options

            # fallback_random: dropout draws from the same generator as eager, so a compiled run
            # keeps the seed's masks (and resumes exactly) instead of inductor's own stream
            options = {**list_mode_options(self.compile_mode), "fallback_random": True}
            body = self._bodies[model] = torch.compile(model.base_model, dynamic=True, options=options)
        return body(input_ids=input_ids, use_cache=False).last_hidden_state

    def ce(self, h: torch.Tensor, head: torch.nn.Module, target: torch.Tensor,
           class_weight: torch.Tensor) -> torch.Tensor:
        """Class-weighted mean cross-entropy of ``head(h)`` (rows ``[N, H]``) against ``target [N]``."""
        if getattr(head, "bias", None) is None:
            low, w, chunk = head_dtype(h), head.weight, 256
            if low is not None:  # each block adds a [V, H] product: fewer, larger blocks on a GPU
                h, w, chunk = h.to(low), w.to(low), 2048 if h.is_cuda else 256
            return linear_cross_entropy(h, w, target, class_weight, chunk=chunk)
        return weighted_ce(head(h), target, class_weight)

    def kd(self, h: torch.Tensor, head: torch.nn.Module, h_teacher: torch.Tensor, teacher_head: torch.nn.Module,
           temperature: float) -> torch.Tensor:
        """Word-KD loss of the student's ``head(h)`` against the teacher's ``teacher_head(h_teacher)``
        (rows ``[N, H]``; no gradient to the teacher)."""
        biased = getattr(head, "bias", None) is not None or getattr(teacher_head, "bias", None) is not None
        if self.use_kernels and not biased:  # no [N, V] student or teacher logits
            low = head_dtype(h)
            ws, wt = (head.weight, teacher_head.weight) if low is None else (head.weight.to(low),
                                                                           teacher_head.weight.to(low))
            return linear_kd_loss(h.to(ws.dtype), ws, h_teacher.to(wt.dtype), wt, temperature)
        s_logits = head(h)
        with torch.no_grad():
            t_logits = teacher_head(h_teacher)
        kd = kd_loss if self.use_kernels else kd_loss_ref
        return kd(s_logits, t_logits.to(s_logits.dtype), None, temperature)


def head_dtype(h: torch.Tensor) -> Optional[torch.dtype]:
    """bf16 when bf16 autocast is on for ``h``'s device, else None (fp32 heads).

    Autocast does not reach the fused heads (their GEMMs write into reused buffers), so they
    take the autocast dtype from here: the LM head's GEMMs are the largest of a step. fp16
    autocast keeps fp32 heads, since a block's weight gradient can overflow fp16."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
        return torch.bfloat16
    return None


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


def select(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The positions ``rows`` (flat, row-major) of ``x`` ``[B, L, ...]``: an index_select whose
    size the host knows, so unlike a boolean mask it does not wait for the device."""
    return x.flatten(0, 1).index_select(0, rows)


def head_ce(model: PreTrainedModel, input_ids: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            chunked: bool = True, losses: Optional[Losses] = None, rows: Optional[torch.Tensor] = None
            ) -> torch.Tensor:
    """Weighted-mean cross-entropy of the LM head on the positions that have a target.

    Through ``losses.ce`` (the chunked :func:`l2kd.ops.linear_cross_entropy`: no ``[N, V]``
    logits, same value and gradients); ``chunked=False`` without ``losses`` computes the eager
    logits + ``F.cross_entropy`` (the reference the tests compare with). ``rows``: the flat
    positions with a target when the caller knows them (``Batch.rows``), else a boolean mask
    selects them (a host read on a GPU).
    """
    if losses is None and not chunked:
        logits, tgt, _ = selected_logits(model, input_ids, target)
        return weighted_ce(logits, tgt, weight)
    h = (losses or Losses()).hidden(model, input_ids)
    if rows is None:
        mask = target != IGNORE
        h, tgt = h[mask], target[mask]
    else:
        h, tgt = select(h, rows), select(target, rows)
    return (losses or Losses()).ce(h, model.get_output_embeddings(), tgt, weight)


def qa_lm_loss(model: PreTrainedModel, qa_input: torch.Tensor, qa_target: torch.Tensor,
               lm_input: Optional[torch.Tensor], lm_target: Optional[torch.Tensor],
               weight: torch.Tensor, chunked: bool = True, losses: Optional[Losses] = None,
               rows: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """QA loss and (when ``lm_input`` is given) LM loss, each a weighted-mean cross-entropy
    (``rows``: ``Batch.rows``, the positions with a target, when known)."""
    rows = rows or {}
    qa = head_ce(model, qa_input, qa_target, weight, chunked, losses, rows.get("qa"))
    if lm_input is None:
        return qa, None
    return qa, head_ce(model, lm_input, lm_target, weight, chunked, losses, rows.get("lm"))
