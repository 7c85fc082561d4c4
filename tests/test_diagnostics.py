"""Teacher diagnostics: the soft-target figures against an explicit softmax, the warning
thresholds, and the record a distillation run writes into l2kd_task.json."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import IGNORE, collate, encode_example
from l2kd.diagnostics import NEAR_UNIFORM, diagnose_teacher, diagnostic_warnings, soft_target_stats


def _examples(tok, ids):
    return [encode_example(tok, ids, "inform(name=x;food=y)", "what is the natural language form?", [a],
                           "rnnlg.rest", 128) for a in ("x serves y food", "there is x", "x is a y restaurant near")]


def test_soft_target_stats_match_a_hand_computation(tok_ids, tiny_model):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # sharpen the random model so the figures are far from uniform and differ per row
        tiny_model.lm_head.weight.mul_(40.0)
    exs = _examples(tok, ids)
    T = 2.0
    got = soft_target_stats(tiny_model, exs, ids, T, batch_size=2)

    tiny_model.eval()
    b = collate(exs, ids)
    with torch.no_grad():
        logits = tiny_model(b.qa_input).logits
    ents, tops, golds = [], [], []
    for row in range(len(exs)):
        for pos in range(b.qa_target.shape[1]):
            y = int(b.qa_target[row, pos])
            if y == IGNORE:
                continue
            z = [v / T for v in logits[row, pos].tolist()]
            m = max(z)
            e = [math.exp(v - m) for v in z]
            s = sum(e)
            p = [v / s for v in e]
            ents.append(-sum(q * math.log(q) for q in p if q > 0))
            tops.append(max(p))
            golds.append(p[y])
    assert got["positions"] == len(ents) == sum(len(ex.answer) + 1 for ex in exs)  # answer tokens + eos
    assert got["entropy"] == pytest.approx(sum(ents) / len(ents), rel=1e-4)
    assert got["top1"] == pytest.approx(sum(tops) / len(tops), rel=1e-4)
    assert got["gold_prob"] == pytest.approx(sum(golds) / len(golds), rel=1e-3, abs=1e-7)
    assert got["log_vocab"] == pytest.approx(math.log(len(tok)))
    assert got["entropy_fraction"] == pytest.approx(got["entropy"] / math.log(len(tok)))
    assert got["entropy_fraction"] < 0.9  # the sharpened model is not near uniform
    # a lower temperature sharpens: lower entropy, higher top-1
    cold = soft_target_stats(tiny_model, exs, ids, 0.5)
    assert cold["entropy"] < got["entropy"] and cold["top1"] > got["top1"]


def test_a_teacher_smaller_than_the_inputs_is_clamped(tok_ids, tiny_model):
    """A teacher lacking later task tokens sees them clamped to its last id (as Word-KD)."""
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok) - 2, mean_resizing=False)  # lacks __unk__ / __gen__ rows
    got = soft_target_stats(tiny_model, _examples(tok, ids), ids, 2.0)
    assert got["vocab"] == len(tok) - 2 and got["positions"] > 0 and math.isfinite(got["entropy"])


def _diag(frac, teacher=50.0, student=10.0, log_v=10.0):
    return {"teacher_score": teacher, "student_score": student,
            "soft_targets": {"entropy": frac * log_v, "entropy_fraction": frac, "log_vocab": log_v, "top1": 0.01,
                             "gold_prob": 0.003, "temperature": 2.0}}


def test_warning_thresholds():
    assert diagnostic_warnings("t", _diag(0.5)) == []
    assert diagnostic_warnings("t", _diag(NEAR_UNIFORM - 1e-6)) == []
    (w,) = diagnostic_warnings("t", _diag(0.991))
    assert "close to uniform" in w and "99.1%" in w and "9.91 nats" in w and "T=2" in w
    (w,) = diagnostic_warnings("t", _diag(0.2, teacher=12.0, student=30.5))
    assert "below the student" in w and "12.0 vs 30.5" in w
    assert diagnostic_warnings("t", _diag(0.2, teacher=30.0, student=30.0)) == []  # equal is not below
    assert len(diagnostic_warnings("t", _diag(0.95, teacher=1.0, student=2.0))) == 2
    assert diagnostic_warnings("t", _diag(0.95), near_uniform=0.99) == []


def test_diagnose_teacher_warns_on_a_random_teacher(tok_ids, tiny_model, data_dir, caplog):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    torch.manual_seed(3)
    teacher = type(tiny_model)(tiny_model.config)
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=data_dir, model_dir_root=".", max_test_examples=2,
                      qa_sampling=SamplingConfig(top_k=1), temperature_kd=2.0)
    rng = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="l2kd"):
        diag = diagnose_teacher(teacher, tiny_model, tok, ids, cfg, "rnnlg.rest", _examples(tok, ids), 128)
    assert torch.equal(rng, torch.get_rng_state())  # the run's random stream is untouched
    assert diag["test_examples"] == 2 and 0 <= diag["teacher_score"] <= 100 and 0 <= diag["student_score"] <= 100
    assert diag["soft_targets"]["entropy_fraction"] > 0.99  # a random init is near uniform
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("close to uniform" in m for m in warned)
    assert any("teacher diagnostics" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
