"""Word-KD (``--distil``): the current task's rows learn the teacher's soft targets.

For rows of the current task the QA and LM cross-entropies are replaced by
``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over their target positions
(:func:`l2kd.ops.kd_loss`); replayed pseudo-sample rows keep the weighted cross-entropy; a
batch without pseudo-samples is pure KD, as the original. The LM part (lll only) is weighted
by ``lm_lambda``. Non-lll strategies distil the QA loss only. The teacher is a single-task
model of the current task (:mod:`l2kd.distillation`); its vocabulary may lack later task
tokens: inputs are clamped to its vocabulary and its distribution widened by its last
column, as the original does.

The two means are added, as the original runs them; with ``--distil_weighting`` they are
weighted by the current and replayed rows' shares of the batch's examples instead (the
original's ``weighting`` branch), so that one replayed row in a batch of eight carries an eighth
of the loss rather than half of it. With ``--distil_qa_only`` only the QA loss is distilled: the
LM loss stays LAMOL's single cross-entropy mean over all rows, so what follows the generation
token is learnt from the data rather than from the teacher's softened distribution.

Both parts go through the run's :class:`~l2kd.losses.Losses` (``ctx.setup.losses``): the KD
rows through ``kd`` (both heads and the KD loss chunked over rows when the compiled kernel is
on and the heads have no bias), the replayed rows through ``ce`` (which honours a head bias).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from transformers import PreTrainedModel

from l2kd.data.qa_format import Batch, target_rows
from l2kd.diagnostics import DIAGNOSTICS, diagnose_teacher
from l2kd.distillation import ensure_teacher, load_teacher, teacher_vocabulary
from l2kd.losses import Losses, head_ce, select
from l2kd.strategies.base import ONE_PROCESS, Report, Shares, Strategy, TaskContext, TaskStart, Wrapper, merge_reports


class WordKD(Wrapper):
    """Wraps a base strategy (LAMOL or finetune) and distils the current task from its teacher."""

    suffix = "+word_kd"

    def __init__(self, base: Strategy) -> None:
        super().__init__(base)
        self.teacher: Optional[PreTrainedModel] = None

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        start = self.base.before_task(ctx, model)
        (task,) = ctx.tasks
        self.teacher = load_teacher(ensure_teacher(ctx.cfg, task, ctx.train_teacher), ctx.device)
        report: Report = {"teacher": task}
        if not self.base.diagnoses_teacher:  # Seq-KD soft: the wrapped SeqKD measures this teacher
            report[DIAGNOSTICS] = diagnose_teacher(self.teacher, model, ctx.tokenizer, ctx.ids, ctx.cfg, task,
                                                   ctx.train_examples, ctx.max_len,
                                                   teacher_vocab=teacher_vocabulary(ctx.cfg, task))
        return TaskStart(start.extra, merge_reports(self.name, start.report, report))

    def _part(self, model, inp: torch.Tensor, tgt: torch.Tensor, kd_rows: torch.Tensor, ce_rows: torch.Tensor,
              weight: torch.Tensor, cfg, losses: Losses, shares: Tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """KD on the current task's target positions (``kd_rows``, flat) plus weighted CE on the
        replayed ones (``ce_rows``), each mean scaled by this rank's share of its global
        denominator (``shares``: KD, CE). The positions come from the host (``Batch.rows``), so
        their counts are known without a read: a part with no positions is left out (a batch of
        replayed rows only runs no teacher forward); an empty selection would give 0."""
        h = losses.hidden(model, inp)
        head = model.get_output_embeddings()
        parts = []
        if kd_rows.numel():
            t_head = self.teacher.get_output_embeddings()
            with torch.no_grad():
                th = select(losses.hidden(self.teacher, inp.clamp(max=t_head.weight.shape[0] - 1)), kd_rows)
            parts.append(shares[0] * losses.kd(select(h, kd_rows), head, th, t_head, cfg.temperature_kd))
        if ce_rows.numel() or not parts:
            parts.append(shares[1] * losses.ce(select(h, ce_rows), head, select(tgt, ce_rows), weight))
        return sum(parts[1:], parts[0])

    def loss(self, ctx: TaskContext, model: PreTrainedModel, batch: Batch, weight: torch.Tensor,
             shares: Shares = ONE_PROCESS) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        losses, rows = ctx.setup.losses, batch_rows(batch)
        kd_w, ce_w = part_weights(batch, ctx.cfg.distil_weighting)
        qa = self._part(model, batch.qa_input, batch.qa_target, rows["qa_cur"], rows["qa_rep"], weight, ctx.cfg,
                        losses, (kd_w * shares.share("qa_kd"), ce_w * shares.share("qa_ce")))
        if not self.uses_lm_loss:
            return qa, {"qa_kd_loss": qa.detach()}
        if ctx.cfg.distil_qa_only:
            lm = head_ce(model, batch.lm_input, batch.lm_target, weight, losses=losses, rows=rows["lm"])
            lm = lm * shares.share("lm")
            return qa + ctx.cfg.lm_lambda * lm, {"qa_kd_loss": qa.detach(), "lm_loss": lm.detach()}
        lm = self._part(model, batch.lm_input, batch.lm_target, rows["lm_cur"], rows["lm_rep"], weight, ctx.cfg,
                        losses, (kd_w * shares.share("lm_kd"), ce_w * shares.share("lm_ce")))
        return qa + ctx.cfg.lm_lambda * lm, {"qa_kd_loss": qa.detach(), "lm_kd_loss": lm.detach()}

    def after_task(self, ctx: TaskContext, model: PreTrainedModel) -> Report:
        report = self.base.after_task(ctx, model)
        self.teacher = None
        return report


def part_weights(batch: Batch, weighting: bool) -> Tuple[float, float]:
    """The factors of the KD and the CE mean: 1 and 1 (summed), or with ``weighting`` the
    current and replayed rows' shares of the whole batch's examples (host counts, no read)."""
    if not weighting:
        return 1.0, 1.0
    n, pseudo = batch.n_rows, batch.n_pseudo
    if n <= 0:
        raise ValueError("--distil_weighting: the batch does not record its row counts (build it with collate)")
    return (n - pseudo) / n, pseudo / n


def batch_rows(batch: Batch) -> dict:
    """``batch.rows``; computed here (on the batch's device) for a batch built without them."""
    if batch.rows:
        return batch.rows
    return {**target_rows(batch.qa_target, batch.is_pseudo, "qa"), **target_rows(batch.lm_target, batch.is_pseudo,
                                                                                "lm")}
