"""Seq-KD (``--seq_distil``): a task trains on its teacher's greedy decodes of the training
answers instead of the gold answers; everything else is the base strategy's.

The file is built once per teacher (:func:`l2kd.distillation.ensure_distil_data`; rank 0
decodes, every rank reads the same path). With ``--distil`` as well (Seq-KD soft) Word-KD
wraps this strategy, so the KD targets are computed on the decoded answers, as the original.
"""
from __future__ import annotations

from typing import Optional

from transformers import PreTrainedModel

from l2kd import distributed as dist
from l2kd.diagnostics import DIAGNOSTICS, diagnose_teacher
from l2kd.distillation import ensure_distil_data, ensure_teacher, load_teacher, teacher_vocabulary
from l2kd.strategies.base import TaskContext, TaskStart, Wrapper, merge_reports


class SeqKD(Wrapper):
    """Swap each task's training file for the teacher-decoded one."""

    suffix = "+seq_kd"
    diagnoses_teacher = True  # a Word-KD around it (Seq-KD soft) does not measure the teacher again

    def training_data(self, ctx: TaskContext, task: str) -> Optional[str]:
        ensure_teacher(ctx.cfg, task, ctx.train_teacher)  # every rank: training a missing teacher is collective
        path = ensure_distil_data(ctx.cfg, task, ctx.device, ctx.train_teacher) if dist.is_main() else None
        return dist.broadcast(path)

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        """The base's, then the teacher diagnostics (:mod:`l2kd.diagnostics`) on the decoded answers."""
        start = self.base.before_task(ctx, model)
        (task,) = ctx.tasks
        teacher = load_teacher(ensure_teacher(ctx.cfg, task, ctx.train_teacher), ctx.device)
        diag = diagnose_teacher(teacher, model, ctx.tokenizer, ctx.ids, ctx.cfg, task, ctx.train_examples,
                                ctx.max_len, teacher_vocab=teacher_vocabulary(ctx.cfg, task))
        return TaskStart(start.extra, merge_reports(self.name, start.report, {DIAGNOSTICS: diag}))
