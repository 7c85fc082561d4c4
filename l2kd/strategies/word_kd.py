"""Word-KD (``--distil``): the current task's rows learn the teacher's soft targets.

For rows of the current task the QA and LM cross-entropies are replaced by
``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over their target positions
(:func:`l2kd.ops.kd_loss`); replayed pseudo-sample rows keep the weighted cross-entropy; a
batch without pseudo-samples is pure KD, as the original. The LM part (lll only) is weighted
by ``lm_lambda``. Non-lll strategies distil the QA loss only. The teacher is a single-task
model of the current task (:mod:`l2kd.distillation`); its vocabulary may lack later task
tokens: inputs are clamped to its vocabulary and its distribution widened by its last
column, as the original does.

With ``cfg.use_kernels`` (and bias-free LM heads) the KD rows go through
:func:`l2kd.ops.linear_kd_loss`: both heads and the KD loss chunked over rows, so neither the
student's nor the teacher's ``[N, V]`` logits are materialised; otherwise full logits of the
KD rows and :func:`l2kd.ops.kd_loss` (:func:`l2kd.ops.kd_loss_ref` without ``use_kernels``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from transformers import PreTrainedModel

from l2kd.data.qa_format import IGNORE, Batch, Encoded
from l2kd.diagnostics import DIAGNOSTICS, diagnose_teacher
from l2kd.distillation import ensure_teacher, load_teacher
from l2kd.losses import hidden_states
from l2kd.ops import kd_loss, kd_loss_ref
from l2kd.ops.linear_cross_entropy import linear_cross_entropy
from l2kd.ops.linear_kd_loss import linear_kd_loss
from l2kd.strategies.base import Strategy, TaskContext, Wrapper


class WordKD(Wrapper):
    """Wraps a base strategy (LAMOL or finetune) and distils the current task from its teacher."""

    suffix = "+word_kd"

    def __init__(self, base: Strategy) -> None:
        super().__init__(base)
        self.teacher: Optional[PreTrainedModel] = None

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> List[Encoded]:
        extra = self.base.before_task(ctx, model)
        (task,) = ctx.tasks
        self.teacher = load_teacher(ensure_teacher(ctx.cfg, task, ctx.train_teacher), ctx.device)
        ctx.stats["teacher"] = task
        if DIAGNOSTICS not in ctx.stats:  # Seq-KD soft: the wrapped SeqKD measured this teacher already
            ctx.stats[DIAGNOSTICS] = diagnose_teacher(self.teacher, model, ctx.tokenizer, ctx.ids, ctx.cfg, task,
                                                      ctx.train_examples, ctx.max_len)
        return extra

    def _part(self, model, inp: torch.Tensor, tgt: torch.Tensor, current: torch.Tensor, weight: torch.Tensor,
              cfg, shares: Tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """KD on the current task's target positions plus weighted CE on the replayed ones, each
        mean scaled by this rank's share of its global denominator (``shares``: KD, CE)."""
        has_t = tgt != IGNORE
        kd_rows = has_t & current[:, None]
        ce_rows = has_t & ~current[:, None]
        h = hidden_states(model, inp)
        head = model.get_output_embeddings()
        loss = h.new_zeros((), dtype=torch.float32)
        if kd_rows.any():
            t_head = self.teacher.get_output_embeddings()
            with torch.no_grad():
                th = hidden_states(self.teacher, inp.clamp(max=t_head.weight.shape[0] - 1))[kd_rows]
            if cfg.use_kernels and getattr(head, "bias", None) is None and getattr(t_head, "bias", None) is None:
                # fused heads + KD, chunked over rows: no [N, V] student or teacher logits
                hk = h[kd_rows].to(head.weight.dtype)  # autocast may leave h in another dtype
                loss = loss + shares[0] * linear_kd_loss(hk, head.weight, th.to(t_head.weight.dtype),
                                                         t_head.weight, cfg.temperature_kd)
            else:
                s_logits = head(h[kd_rows])
                with torch.no_grad():
                    t_logits = t_head(th)
                kd = kd_loss if cfg.use_kernels else kd_loss_ref
                loss = loss + shares[0] * kd(s_logits, t_logits.to(s_logits.dtype), None, cfg.temperature_kd)
        if ce_rows.any():
            loss = loss + shares[1] * linear_cross_entropy(h[ce_rows], head.weight, tgt[ce_rows], weight)
        return loss

    def loss(self, ctx: TaskContext, model: PreTrainedModel, batch: Batch, weight: torch.Tensor
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        current = ~batch.is_pseudo
        qa = self._part(model, batch.qa_input, batch.qa_target, current, weight, ctx.cfg,
                        (ctx.share("qa_kd"), ctx.share("qa_ce")))
        if not self.uses_lm_loss:
            return qa, {"qa_kd_loss": qa.item()}
        lm = self._part(model, batch.lm_input, batch.lm_target, current, weight, ctx.cfg,
                        (ctx.share("lm_kd"), ctx.share("lm_ce")))
        return qa + ctx.cfg.lm_lambda * lm, {"qa_kd_loss": qa.item(), "lm_kd_loss": lm.item()}

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> None:
        self.base.after_task(ctx, model)
        self.teacher = None
