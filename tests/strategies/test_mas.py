"""MAS: importance vs a direct per-example computation, the pull step, state, resume."""
from __future__ import annotations

import pytest
import torch

from l2kd.losses import token_weights
from l2kd.strategies.mas import MAS
from l2kd.strategies.regularizer import compute_importance

from test_ewc import examples, make_ctx, resume_equals_uninterrupted  # tests/strategies is on sys.path


def mse_at_prompt_end(model, exs, ids):
    """The original's loss: MSE(softmax(logits at len(cq)-1 of the cq input), 0), a mean over B x V."""
    rows = []
    for e in exs:  # each prompt alone, unpadded
        logits = model(torch.tensor([e.cq])).logits[0, -1]
        rows.append(torch.softmax(logits, -1))
    p = torch.stack(rows)
    return torch.nn.functional.mse_loss(p, torch.zeros_like(p))


@pytest.mark.parametrize("batches", [[[0], [1], [2], [3], [4]], [[0, 1, 2], [3, 4]]])
def test_mas_importance_matches_direct(tok_ids, tiny_model, batches):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    exs = examples(tok, ids)
    ctx = make_ctx(tok, ids, exs, seq_train_type="mas")
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    got = compute_importance(tiny_model, exs, ids, batches, lambda m, b, e: MAS().batch_loss(m, b, e, ctx, w),
                             "abs", torch.device("cpu"))
    names = [n for n, _ in tiny_model.named_parameters()]
    want = {n: 0.0 for n in names}
    for idx in batches:  # Omega = sum_b |grad(L_b / n_b)| / N
        grads = torch.autograd.grad(mse_at_prompt_end(tiny_model, [exs[i] for i in idx], ids) / len(idx),
                                    list(tiny_model.parameters()))
        for n, g in zip(names, grads):
            want[n] = want[n] + g.abs() / len(exs)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5 * float(want[n].abs().max()) + 1e-14)
    assert sum(float(want[n].sum()) for n in names) > 0


def test_mas_pull_and_state(tok_ids, tiny_model):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    exs = examples(tok, ids, 3)
    s = MAS()
    ctx = make_ctx(tok, ids, exs, seq_train_type="mas", reg_lambda=1.0)
    s.before_task(ctx, tiny_model)
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.05)
    s.after_task(ctx, tiny_model)
    t = MAS()
    t.load_state_dict(s.state_dict())
    t.before_task(make_ctx(tok, ids, exs, index=1, prev_tasks=("rnnlg.rest",), seq_train_type="mas"), tiny_model)
    moved = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    t.after_step(ctx, tiny_model, 0.1)
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p.detach(), moved[n] - 0.1 * 2 * 1.0 * s.omega[n] * (moved[n] - init[n]))


@pytest.mark.slow
def test_mas_resume_equals_uninterrupted(tmp_path, data_dir):
    resume_equals_uninterrupted(tmp_path, data_dir, "mas")


def test_penalty_strength_and_warnings():
    from l2kd.strategies.regularizer import penalty_strength, strength_warnings

    omega = {"a": torch.tensor([1e-9, 3e-9]), "b": torch.tensor([[2e-9], [0.0]])}
    s = penalty_strength(omega, 1e-3, 1e6)
    assert s["mean"] == pytest.approx(1.5e-9) and s["max"] == pytest.approx(3e-9)
    assert s["max_pull"] == pytest.approx(2 * 1e-3 * 1e6 * 3e-9)  # 6e-6: far too weak
    (weak,) = strength_warnings("mas", s, 1e-3, 1e6)
    assert "too weak" in weak and "1.7e+10" in weak  # 0.1 / (2 * 1e-3 * 3e-9)
    assert strength_warnings("mas", penalty_strength(omega, 1e-3, 1.7e10), 1e-3, 1.7e10) == []
    (over,) = strength_warnings("mas", penalty_strength(omega, 1e-3, 1e12), 1e-3, 1e12)
    assert "overshoots" in over
    assert strength_warnings("mas", penalty_strength({"a": torch.zeros(3)}, 1e-3, 1.0), 1e-3, 1.0) == []


def test_after_task_records_strength_and_warns(tok_ids, tiny_model, caplog):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    exs = examples(tok, ids, 3)
    s = MAS()
    ctx = make_ctx(tok, ids, exs, seq_train_type="mas", reg_lambda=1.0, learning_rate=6.25e-5)
    s.before_task(ctx, tiny_model)
    with caplog.at_level("WARNING", logger="test"):
        report = s.after_task(ctx, tiny_model)
    rec = report["mas_importance"]  # the hook returns its report; the loop files it
    top = max(float(w.max()) for w in s.omega.values())
    assert rec["max"] == pytest.approx(top) and rec["max_pull"] == pytest.approx(2 * 6.25e-5 * top)
    assert rec["max_pull"] < 1e-4 and rec["warnings"] and "too weak" in caplog.text
