"""LAMOL (``--seq_train_type lll``): QA + lm_lambda * LM loss, and replay of generated
pseudo-samples of the previous tasks (or real samples with ``--real_sample``)."""
from __future__ import annotations

import os

from transformers import PreTrainedModel

from l2kd.config import StrategyTraits
from l2kd.replay import generate_pseudo, n_pseudo, pseudo_len, sample_real
from l2kd.strategies.base import Strategy, TaskContext, TaskStart
from l2kd.strategies.multitask import JOINT_UNBOUND


class LAMOL(Strategy):
    """Pseudo-sample replay; the model learns to generate its own training data."""

    name = "lll"
    traits = StrategyTraits(replays=True, pct_in_folder=True, memory_factor=0.35,
                            accepts=frozenset({"distil", "seq_distil", "unbound", "real_sample"}))
    uses_lm_loss = True

    def before_task(self, ctx: TaskContext, model: PreTrainedModel) -> TaskStart:
        cfg = ctx.cfg
        if ctx.index == 0 or cfg.gen_lm_sample_percentage <= 0:
            return TaskStart()
        report = {}
        if cfg.real_sample:
            extra, stats = sample_real(dict(ctx.prev_train_examples), cfg.gen_lm_sample_percentage, ctx.rng)
            ctx.logger.info("real-sample replay: %d examples %s", len(extra), stats.per_task)
        else:
            # --debug: one pseudo-sample per previous task, as the original
            n = (len(ctx.prev_tasks) if cfg.debug else
                 n_pseudo(cfg.gen_lm_sample_percentage, len(ctx.train_examples), len(ctx.prev_tasks)))
            path = os.path.join(ctx.prev_task_dir, "lm.csv")
            extra, stats, seqs = generate_pseudo(
                model, ctx.tokenizer, ctx.ids, ctx.prev_tasks, n, pseudo_len(cfg.max_gen_len, ctx.max_len),
                cfg.lm_sampling, ctx.generator, path, quiet=cfg.quiet)
            report["pseudo_examples_shown"] = [ctx.tokenizer.decode(s) for s in seqs[:3]]
        report["replay"] = {"requested": stats.requested, "generated": stats.generated, "parsed": stats.parsed,
                            "dropped": stats.dropped, "per_task": stats.per_task, "source": stats.source}
        return TaskStart(extra, report)


class MultiLM(Strategy):
    """``multilm``: multitask training with QA + lm_lambda * LM, no replay."""

    name = "multilm"
    traits = StrategyTraits(joint=True, memory_factor=0.35, accepts=frozenset({"multitask_specific"}),
                            refusals=(("unbound", JOINT_UNBOUND),))
    uses_lm_loss = True
