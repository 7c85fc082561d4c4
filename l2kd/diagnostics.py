"""Teacher diagnostics: is a distillation teacher worth distilling from?

Before a task is distilled (``--distil`` / ``--seq_distil``) the run measures, logs and records
in the task's ``l2kd_task.json`` (under ``teacher_diagnostics``):

* the teacher's own score on the task's test examples (``--max_test_examples`` of them) and
  the student's, i.e. the model about to learn the task, before it does;
* the mean entropy (nats) and mean top-1 probability of the teacher's soft targets
  ``softmax(logits / --temperature_kd)`` on the training answer positions, the positions the
  Word-KD loss uses, and the mean probability of the gold token there.
* when the student replays (``--seq_train_type lll``): the pseudo-samples the teacher itself
  writes after its generation token, as many as LAMOL generates before the next task, with the
  run's LM sampling, and how many of them parse. Word-KD distils the teacher's LM distribution
  too, so a teacher that does not write its own task there cannot teach the student to replay it.

It warns (``logging.warning``) when the targets are close to uniform (entropy over ``log V``
at least :data:`NEAR_UNIFORM`): distilling them teaches the student almost nothing, which is
what a randomly initialised tiny teacher gives; when the teacher scores below the student; and
when fewer than half of the teacher's own pseudo-samples parse.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import IGNORE, Encoded, collate, pseudo_from_ids
from l2kd.losses import hidden_states
from l2kd.replay import n_pseudo, pseudo_len, sample_after_gen
from l2kd.tokenizer import SpecialIds

log = logging.getLogger("l2kd")
DIAGNOSTICS = "teacher_diagnostics"  # key of the record in the task summary (l2kd_task.json)
NEAR_UNIFORM = 0.9  # entropy / log(V) at or above this: the soft targets are close to uniform
POOR_PARSE = 0.5  # a teacher whose own pseudo-samples parse less often than this is warned about
MAX_TRAIN_EXAMPLES = 256  # training examples the soft-target statistics are measured on (cost bound)
ROW_CHUNK = 256  # answer positions per [chunk, V] logits block


@torch.no_grad()
def soft_target_stats(model, examples: Sequence[Encoded], ids: SpecialIds, temperature: float,
                      batch_size: int = 16, max_examples: int = MAX_TRAIN_EXAMPLES) -> Dict[str, float]:
    """Mean entropy, mean top-1 probability and mean gold-token probability of
    ``softmax(logits / temperature)`` over the QA answer positions of ``examples`` (the first
    ``max_examples``; 0 = all), with ``entropy_fraction`` = entropy / log(V) for the model's
    vocabulary size V. Inputs beyond the model's vocabulary are clamped to its last id (a
    teacher that lacks later task tokens, as Word-KD does)."""
    exs = list(examples[: max_examples] if max_examples else examples)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    was = model.training
    model.eval()
    device = head.weight.device
    ent_sum = top_sum = gold_sum = 0.0
    n = 0
    for s in range(0, len(exs), batch_size):
        batch = collate(exs[s:s + batch_size], ids).to(device)
        mask = batch.qa_target != IGNORE
        h = hidden_states(model, batch.qa_input.clamp(max=vocab - 1))[mask]
        gold = batch.qa_target[mask].clamp(max=vocab - 1)
        for c in range(0, h.shape[0], ROW_CHUNK):
            logits = head(h[c:c + ROW_CHUNK]).float() / temperature
            logp = torch.log_softmax(logits, dim=-1)
            p = logp.exp()
            ent_sum += float(-(p * logp).sum(-1).sum())
            top_sum += float(p.max(-1).values.sum())
            gold_sum += float(p.gather(1, gold[c:c + ROW_CHUNK, None]).sum())
            n += logits.shape[0]
    model.train(was)
    log_v = math.log(vocab)
    if n == 0:
        return {"positions": 0, "examples": len(exs), "vocab": vocab, "log_vocab": log_v, "temperature": temperature,
                "entropy": float("nan"), "entropy_fraction": float("nan"), "top1": float("nan"),
                "gold_prob": float("nan")}
    return {"positions": n, "examples": len(exs), "vocab": vocab, "log_vocab": log_v, "temperature": temperature,
            "entropy": ent_sum / n, "entropy_fraction": ent_sum / n / log_v, "top1": top_sum / n,
            "gold_prob": gold_sum / n}


@torch.no_grad()
def teacher_pseudo_samples(teacher, tok, ids: SpecialIds, task: str, n: int, max_len: int,
                           sampling: SamplingConfig, seed: int) -> Dict[str, object]:
    """``n`` sequences the teacher writes after ``task``'s generation token (up to ``max_len``
    tokens with it), parsed as LAMOL parses the student's pseudo-samples. ``tok`` and ``ids`` are
    the teacher's own: its vocabulary holds only its task's tokens. Sampling uses its own
    generator seeded with ``seed``, so the run's random streams are untouched. Returns
    ``generated``, ``parsed`` and the decoded ``texts``."""
    device = next(teacher.parameters()).device
    seqs = sample_after_gen(teacher, ids, [task] * n, max_len, sampling,
                            torch.Generator(device=device).manual_seed(seed), label=f"the {task} teacher's pseudo-samples")
    parsed, _ = pseudo_from_ids(seqs, ids, {ids.gen[task]: task}, max_len)
    return {"generated": n, "parsed": len(parsed), "texts": [tok.decode(q) for q in seqs]}


def diagnostic_warnings(task: str, diag: Dict[str, object], near_uniform: float = NEAR_UNIFORM) -> List[str]:
    """The warnings ``diag`` (a :func:`diagnose_teacher` record) calls for: soft targets close
    to uniform, a teacher scoring below the student. Pure, so the thresholds are testable."""
    out = []
    soft = diag.get("soft_targets") or {}
    frac = soft.get("entropy_fraction")
    if frac is not None and not math.isnan(frac) and frac >= near_uniform:
        out.append(
            f"[{task}] the teacher's soft targets at T={soft['temperature']:g} are close to uniform: mean entropy "
            f"{soft['entropy']:.2f} nats = {100 * frac:.1f}% of the maximum log(V) = {soft['log_vocab']:.2f}, "
            f"mean top-1 probability {soft['top1']:.4f}, gold-token probability {soft['gold_prob']:.4f}. "
            "Distilling them teaches the student little: train the teacher longer, start from a pretrained base "
            "(python -m l2kd.pretrain; --model_name DIR), or lower --temperature_kd")
    t, s = diag.get("teacher_score"), diag.get("student_score")
    if t is not None and s is not None and t < s:
        out.append(f"[{task}] the teacher scores below the student's current model on this task "
                   f"({t:.1f} vs {s:.1f}): distilling from it can only pull the student down")
    own = diag.get("teacher_pseudo")
    if isinstance(own, dict) and own.get("generated") and own["parsed"] < POOR_PARSE * own["generated"]:
        out.append(f"[{task}] of the {own['generated']} pseudo-samples the teacher itself writes after the "
                   f"generation token, only {own['parsed']} parse: Word-KD distils that generation into the "
                   "student, which then replays this task poorly (--distil_qa_only keeps LAMOL's LM loss)")
    return out


def diagnose_teacher(teacher, student, tok, ids: SpecialIds, cfg: TrainConfig, task: str,
                     train_examples: Sequence[Encoded], max_len: int,
                     teacher_vocab: Tuple[object, SpecialIds]) -> Dict[str, object]:
    """Score the teacher and the student on ``task``'s test examples, measure the teacher's soft
    targets on ``train_examples`` and, when the student replays, the teacher's own pseudo-samples
    (``teacher_vocab``: the teacher's tokenizer and special ids); log the figures and the
    warnings; returns the record.

    Decoding uses its own seeded generators, so the run's random streams are the same with or
    without these diagnostics."""
    from l2kd.data.loading import load_task_examples
    from l2kd.evaluate import evaluate_task
    from l2kd.metrics import task_score

    test = load_task_examples(cfg.data_dir, task, "test", tok, ids, max_len, cfg.max_test_examples)
    scores: Dict[str, Optional[float]] = {}
    for who, model in (("teacher", teacher), ("student", student)):
        metrics = evaluate_task(model, tok, ids, cfg, task, test, torch.Generator(
            device=next(model.parameters()).device).manual_seed(cfg.seed))
        scores[who] = task_score(task, metrics)
    soft = soft_target_stats(teacher, train_examples, ids, cfg.temperature_kd)
    diag: Dict[str, object] = {"teacher_score": scores["teacher"], "student_score": scores["student"],
                               "test_examples": len(test), "soft_targets": soft}
    log.info("[%s] teacher diagnostics: teacher score %.1f, student (before the task) %.1f on %d test examples; "
             "soft targets at T=%g on %d answer positions: mean entropy %.3f nats (%.1f%% of log V = %.2f), "
             "mean top-1 %.4f, gold-token %.4f", task, scores["teacher"], scores["student"], len(test),
             cfg.temperature_kd, soft["positions"], soft["entropy"], 100 * soft["entropy_fraction"],
             soft["log_vocab"], soft["top1"], soft["gold_prob"])
    n = n_pseudo(cfg.gen_lm_sample_percentage, len(train_examples), 1) if cfg.seq_train_type == "lll" else 0
    if n:
        t_tok, t_ids = teacher_vocab
        own = teacher_pseudo_samples(teacher, t_tok, t_ids, task, n, pseudo_len(cfg.max_gen_len, max_len),
                                     cfg.lm_sampling, cfg.seed)
        diag["teacher_pseudo"] = own
        log.info("[%s] the teacher's own pseudo-samples: %d of %d parse; e.g. %r", task, own["parsed"], n,
                 own["texts"][0][:120])
    diag["warnings"] = diagnostic_warnings(task, diag)
    for w in diag["warnings"]:
        log.warning("%s", w)
    return diag
