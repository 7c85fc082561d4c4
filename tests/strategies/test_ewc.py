"""EWC: Fisher importance vs a direct per-example computation, the decoupled penalty step vs
its formula, anchors, state round trip, and a resumed two-task run equal to an uninterrupted one."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2kd.config import TrainConfig
from l2kd.data.qa_format import collate, encode_example
from l2kd.losses import token_weights
from l2kd.strategies.base import TaskContext
from l2kd.strategies.ewc import EWC
from l2kd.strategies.regularizer import compute_importance, penalty_step

TEXTS = [("inform(name=a;food=thai)", "what?", "a serves thai"), ("inform(name=bb)", "q", "bb is here now"),
         ("inform(area=north;price=cheap;name=c)", "what is it?", "c"), ("x", "y", "a long answer of words"),
         ("inform(food=none)", "q?", "none")]


def examples(tok, ids, n=5):
    return [encode_example(tok, ids, c, q, [a], "rnnlg.rest", 128) for c, q, a in TEXTS[:n]]


def make_ctx(tok, ids, train, prev=None, index=0, prev_tasks=(), **cfg_kw):
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", **{"seq_train_type": "ewc", **cfg_kw})
    return TaskContext(index=index, tasks=("rnnlg.rest",), prev_tasks=tuple(prev_tasks), cfg=cfg, run_dir=".",
                       tokenizer=tok, ids=ids, task_dir=".", prev_task_dir=None, train_examples=train,
                       prev_train_examples=prev or {}, max_len=128, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0),
                       logger=logging.getLogger("test"))


def qa_ce(model, exs, ids, w):
    """The weighted QA cross-entropy from full logits (the original's formula)."""
    b = collate(exs, ids)
    logits = model(b.qa_input).logits
    m = b.qa_target != -1
    return F.cross_entropy(logits[m], b.qa_target[m], weight=w)


@pytest.mark.parametrize("batches", [[[0], [1], [2], [3], [4]], [[0, 1], [2, 3], [4]]])
def test_fisher_matches_direct(tok_ids, tiny_model, batches):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    exs = examples(tok, ids)
    ctx = make_ctx(tok, ids, exs)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    got = compute_importance(tiny_model, exs, ids, batches, lambda m, b, e: EWC().batch_loss(m, b, e, ctx, w),
                             "sq", torch.device("cpu"))
    names = [n for n, _ in tiny_model.named_parameters()]
    want = {n: 0.0 for n in names}
    for idx in batches:  # Omega = sum_b grad(L_b / n_b)**2 / N; one example per batch = empirical Fisher
        grads = torch.autograd.grad(qa_ce(tiny_model, [exs[i] for i in idx], ids, w) / len(idx),
                                    list(tiny_model.parameters()))
        for n, g in zip(names, grads):
            want[n] = want[n] + g**2 / len(exs)
    assert set(got) == set(names)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5 * float(want[n].abs().max()) + 1e-12)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_penalty_step_formula(tok_ids, tiny_model):
    tok, ids = tok_ids
    torch.manual_seed(2)
    params = [torch.randn(7, 3), torch.randn(5)]
    omega = [torch.rand(7, 3), torch.rand(5)]
    anchor = [torch.randn(7, 3), torch.randn(5)]
    want = [p - 1e-2 * 2 * 0.7 * o * (p - a) for p, o, a in zip(params, omega, anchor)]
    penalty_step(params, omega, anchor, 1e-2, 0.7)
    for p, w in zip(params, want):
        torch.testing.assert_close(p, w)

    # through the strategy: anchor = weights before task 1, Omega after task 1, pull after a step
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    exs = examples(tok, ids)
    s = EWC()
    ctx = make_ctx(tok, ids, exs, reg_lambda=2.0)
    s.before_task(ctx, tiny_model)
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    s.after_step(ctx, tiny_model, 1e-3)  # no importance yet: no pull
    assert all(torch.equal(p, init[n]) for n, p in tiny_model.named_parameters())
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.01)
    s.after_task(ctx, tiny_model)
    moved = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    s.before_task(make_ctx(tok, ids, exs, index=1, prev_tasks=("rnnlg.rest",), reg_lambda=2.0), tiny_model)
    s.after_step(ctx, tiny_model, 1e-3)
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p.detach(), moved[n] - 1e-3 * 2 * 2.0 * s.omega[n] * (moved[n] - init[n]))
    assert any(bool((s.omega[n] > 0).any()) for n in s.omega)


@pytest.mark.parametrize("anchor", ["initial", "previous"])
def test_anchor_and_state_round_trip(tok_ids, tiny_model, anchor):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    exs = examples(tok, ids, 3)
    s = EWC()
    ctx = make_ctx(tok, ids, exs, reg_anchor=anchor, train_batch_size=2)
    s.before_task(ctx, tiny_model)
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(1.5)
    s.after_task(ctx, tiny_model)
    om1 = {n: o.clone() for n, o in s.omega.items()}
    s.after_task(ctx, tiny_model)  # importance accumulates: Omega += Omega_task (dropout on: > first)
    assert all(bool((s.omega[n] >= om1[n]).all()) for n in om1)
    ref = init if anchor == "initial" else dict(tiny_model.named_parameters())
    assert all(torch.equal(s.anchor[n], ref[n]) for n in s.anchor)
    state = s.state_dict()
    t = EWC()
    t.load_state_dict(state)
    assert all(torch.equal(t.omega[n], s.omega[n]) and torch.equal(t.anchor[n], s.anchor[n]) for n in s.omega)
    with pytest.raises(ValueError, match="reg_anchor"):
        EWC().before_task(make_ctx(tok, ids, exs, reg_anchor="bogus"), tiny_model)


def test_grown_vocabulary_rows_are_unregularised(tok_ids, tiny_model):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    exs = examples(tok, ids, 2)
    s = EWC()
    ctx = make_ctx(tok, ids, exs)
    s.before_task(ctx, tiny_model)
    s.after_task(ctx, tiny_model)
    tiny_model.resize_token_embeddings(len(tok) + 1, mean_resizing=False)
    s.before_task(ctx, tiny_model)
    wte = tiny_model.transformer.wte.weight
    assert s.omega["transformer.wte.weight"].shape == wte.shape
    assert float(s.omega["transformer.wte.weight"][-1].abs().sum()) == 0.0
    assert torch.equal(s.anchor["transformer.wte.weight"][-1], wte[-1].detach())


def _run(root, seq_train_type, data_dir, **kw):
    from l2kd.loop import train_sequence

    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=data_dir, model_dir_root=str(root),
                      model_name="tiny-gpt2", seq_train_type=seq_train_type, max_train_examples=16,
                      train_batch_size=8, n_train_epochs=1, quiet=True, learning_rate=1e-3, **kw)
    return train_sequence(cfg), os.path.join(str(root), "tiny-gpt2", seq_train_type, "rnnlg.rest_rnnlg.tv_seed_42")


def resume_equals_uninterrupted(tmp_path, data_dir, seq_train_type, **kw):
    """Run A uninterrupted; run B, delete its task-2 folder, run B again: task 1 is reloaded
    (model-finish + strategy_state.pt), task 2 retrained, and equals A's bit for bit."""
    sa, rdir_a = _run(tmp_path / "A", seq_train_type, data_dir, **kw)
    sb, rdir_b = _run(tmp_path / "B", seq_train_type, data_dir, **kw)
    assert os.path.isfile(os.path.join(rdir_b, "rnnlg.rest", "strategy_state.pt"))
    shutil.rmtree(os.path.join(rdir_b, "rnnlg.tv"))
    sb2, _ = _run(tmp_path / "B", seq_train_type, data_dir, **kw)
    assert sb2["tasks"]["rnnlg.rest"]["seconds"] == sb["tasks"]["rnnlg.rest"]["seconds"]  # reloaded, not retrained
    a = torch.load(os.path.join(rdir_a, "rnnlg.tv", "model-finish"), weights_only=True)
    b = torch.load(os.path.join(rdir_b, "rnnlg.tv", "model-finish"), weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    init = torch.load(os.path.join(rdir_a, "rnnlg.rest", "model-finish"), weights_only=True)
    assert any(not torch.equal(a[k], init[k]) for k in a)  # task 2 really trained
    return sa, sb2


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, data_dir):
    sa, _ = resume_equals_uninterrupted(tmp_path, data_dir, "ewc")
    assert sa["tasks"]["rnnlg.tv"]["ewc_importance"]["mean"] > 0
