"""Teacher diagnostics: the soft-target figures against an explicit softmax, the warning
thresholds, and the record a distillation run writes into l2kd_task.json."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import IGNORE, collate, encode_example
from l2kd import diagnostics, replay
from l2kd.diagnostics import (NEAR_UNIFORM, POOR_PARSE, diagnose_teacher, diagnostic_warnings, soft_target_stats,
                              teacher_pseudo_samples)
from l2kd.tokenizer import add_special_tokens


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
        diag = diagnose_teacher(teacher, tiny_model, tok, ids, cfg, "rnnlg.rest", _examples(tok, ids), 128,
                                teacher_vocab=(tok, ids))
    assert torch.equal(rng, torch.get_rng_state())  # the run's random stream is untouched
    assert diag["test_examples"] == 2 and 0 <= diag["teacher_score"] <= 100 and 0 <= diag["student_score"] <= 100
    assert diag["soft_targets"]["entropy_fraction"] > 0.99  # a random init is near uniform
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("close to uniform" in m for m in warned)
    assert any("teacher diagnostics" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    # the student replays (lll, 5% of 3 examples): one pseudo-sample of the teacher's own, which a random
    # init does not write well-formed
    own = diag["teacher_pseudo"]
    assert (own["generated"], own["parsed"], len(own["texts"])) == (1, 0, 1)
    assert own["texts"][0].strip().startswith("__gen__")
    assert any("pseudo-samples the teacher itself writes" in m and "only 0 parse" in m for m in warned)


def test_teacher_pseudo_warning_threshold():
    def diag(parsed, generated=32):
        return dict(_diag(0.2), teacher_pseudo={"generated": generated, "parsed": parsed, "texts": []})

    assert diagnostic_warnings("t", diag(16)) == []  # exactly half is not below
    (w,) = diagnostic_warnings("t", diag(15))
    assert "of the 32 pseudo-samples" in w and "only 15 parse" in w and "--distil_qa_only" in w
    assert diagnostic_warnings("t", diag(0, generated=0)) == []
    assert POOR_PARSE == 0.5


def test_the_teachers_own_samples_start_with_its_own_generation_token(base_tok, monkeypatch):
    """With task tokens the teacher's generation token is not the student's: the teacher is
    prompted with its own, and its samples are parsed and decoded with its own vocabulary."""
    import copy

    student_tok, teacher_tok = copy.deepcopy(base_tok), copy.deepcopy(base_tok)
    s_ids = add_special_tokens(student_tok, ["e2enlg", "rnnlg.rest"], add_task_tokens=True, use_sep=False)
    t_ids = add_special_tokens(teacher_tok, ["rnnlg.rest"], add_task_tokens=True, use_sep=False)
    assert t_ids.gen["rnnlg.rest"] != s_ids.gen["rnnlg.rest"]
    good = teacher_tok.encode("inform(name=x) what is it?") + [t_ids.ans] + teacher_tok.encode(" x")
    bad = teacher_tok.encode("inform(name=x) what is it? x")
    seen = {}

    def fake_generate(model, prompts, max_new, eos, pad, sampling, generator, **kw):
        seen.update(prompts=prompts, max_new=max_new, eos=eos, top_k=sampling.top_k, state=generator.get_state())
        return [good, bad, good][: len(prompts)]

    monkeypatch.setattr(replay, "generate", fake_generate)
    teacher = torch.nn.Linear(2, 2)
    teacher.train()
    own = teacher_pseudo_samples(teacher, teacher_tok, t_ids, "rnnlg.rest", 3, 40, SamplingConfig(top_k=20), 7)
    assert seen["prompts"] == [[t_ids.gen["rnnlg.rest"]]] * 3 and seen["max_new"] == [39] * 3
    assert (seen["eos"], seen["top_k"]) == (t_ids.eos, 20)
    assert torch.equal(seen["state"], torch.Generator().manual_seed(7).get_state())  # its own seeded generator
    assert (own["generated"], own["parsed"]) == (3, 2)
    assert own["texts"][0] == teacher_tok.decode([t_ids.gen["rnnlg.rest"]] + good)
    assert teacher.training  # left in the mode it was found in


@pytest.mark.parametrize("seq_train_type, pct, max_gen_len, expect", [
    ("lll", 0.5, 0, (2, 127)), ("lll", 0.5, 20, (2, 19)), ("lll", 0.0, 0, None), ("finetune", 0.5, 0, None)])
def test_the_teachers_own_samples_only_where_the_student_replays(tok_ids, tiny_model, data_dir, monkeypatch,
                                                                  seq_train_type, pct, max_gen_len, expect):
    """As many as LAMOL generates before the next task (``pct`` of the training examples), capped
    at ``--max_gen_len``; none for a strategy that does not replay."""
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    calls = []

    def fake(teacher, t_tok, t_ids, task, n, max_len, sampling, seed):
        calls.append((n, max_len - 1))
        return {"generated": n, "parsed": n, "texts": ["x"] * n}

    monkeypatch.setattr(diagnostics, "teacher_pseudo_samples", fake)
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=data_dir, model_dir_root=".", max_test_examples=1,
                      qa_sampling=SamplingConfig(top_k=1), seq_train_type=seq_train_type,
                      gen_lm_sample_percentage=pct, max_gen_len=max_gen_len)
    diag = diagnose_teacher(tiny_model, tiny_model, tok, ids, cfg, "rnnlg.rest", _examples(tok, ids), 128,
                            teacher_vocab=(tok, ids))
    assert calls == ([expect] if expect else [])
    assert ("teacher_pseudo" in diag) == bool(expect)
