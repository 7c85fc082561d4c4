"""The QA/LM loss against a hand-computed small case, and the LR schedule's formula."""
from __future__ import annotations

import math

import pytest
import torch

from l2kd.data.qa_format import collate, encode_example
from l2kd.losses import qa_lm_loss, token_weights
from l2kd.schedule import LRSchedule, annealing_lr


@pytest.mark.parametrize("chunked", [True, False])
def test_weighted_ce_by_hand(tok_ids, tiny_model, chunked):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()  # no dropout: both formulations must see the same network
    ex = encode_example(tok, ids, "ab", "c", ["d e"], "rnnlg.rest", 128)
    b = collate([ex, encode_example(tok, ids, "x", "y", [""], "rnnlg.rest", 128)], ids)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    qa, lm = qa_lm_loss(tiny_model, b.qa_input, b.qa_target, b.lm_input, b.lm_target, w, chunked=chunked)
    # hand formula: full logits, every target != -1, sum_i w[y_i] * -log p(y_i) / sum_i w[y_i]
    for loss, inp, tgt in ((qa, b.qa_input, b.qa_target), (lm, b.lm_input, b.lm_target)):
        logp = torch.log_softmax(tiny_model(inp).logits, -1).detach()
        num = den = 0.0
        for r in range(tgt.shape[0]):
            for t in range(tgt.shape[1]):
                y = int(tgt[r, t])
                if y != -1:
                    num += float(w[y]) * -float(logp[r, t, y])
                    den += float(w[y])
        assert math.isclose(float(loss), num / den, rel_tol=1e-5)
    # __ans__ is an LM target (weight 5); it is never a QA target
    assert (b.lm_target == ids.ans).any() and not (b.qa_target == ids.ans).any()


def test_original_annealing_lr():
    # warmup 10 examples, end 1000: first update lr 0, linear decay ends at lr*warmup/end
    assert annealing_lr(0, 1.0, 10, 1000) == 0.0
    assert annealing_lr(5, 1.0, 10, 1000) == 0.5
    assert math.isclose(annealing_lr(1000, 1.0, 10, 1000), 10 / 1000)
    assert annealing_lr(500, 2.0, 0, 1000, "constant") == 2.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(opt, 1.0, n_examples=200, epochs=5, n_steps=100, warmup_ratio=0.005)
    assert (s.warmup, s.end) == (1, 1000)  # counted in examples, as the original
    assert s.apply() == 0.0
    s.advance(16)
    assert math.isclose(s.apply(), (1000 - 15) / 1000)
    t = LRSchedule(opt, 1.0, n_examples=200, epochs=5, n_steps=100, warmup_ratio=0.0, textbook=True)
    t.clock = 100
    assert t.lr() == 0.0


@pytest.mark.parametrize("n, chunk", [(1, 4), (37, 8), (64, 256)])
def test_chunked_linear_ce_matches_eager(n, chunk):
    from l2kd.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_ref

    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 16, generator=g, requires_grad=True)
    w = torch.randn(1001, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 1001, (n,), generator=g)
    cw = torch.ones(1001)
    cw[3] = 5.0
    y[0] = 3
    outs = []
    for fn in (linear_cross_entropy_ref, lambda *a: linear_cross_entropy(*a, chunk=chunk)):
        loss = fn(h, w, y, cw)
        (loss * 3.0).backward()  # grad_output != 1
        outs.append((loss.detach(), h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert float(linear_cross_entropy(h[:0], w, y[:0], cw)) == 0.0


def _mm_dtypes(fn):
    """The input dtypes of every matrix product ``fn`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


@pytest.mark.parametrize("n, chunk", [(37, 8), (64, 256)])
def test_chunked_linear_ce_runs_bf16_gemms_on_bf16_inputs(n, chunk):
    """bf16 h and weight: every GEMM in bf16, the loss and gradients within bf16 rounding of the
    fp32 reference on the same (rounded) inputs; gradients come back in bf16."""
    from l2kd.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_ref

    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 32, generator=g).bfloat16().requires_grad_()
    w = (torch.randn(1001, 32, generator=g) * 0.3).bfloat16().requires_grad_()
    y = torch.randint(0, 1001, (n,), generator=g)
    cw = torch.ones(1001)
    cw[3] = 5.0
    y[0] = 3

    def run():
        loss = linear_cross_entropy(h, w, y, cw, chunk=chunk)
        (loss * 3.0).backward()
        return loss

    dtypes = _mm_dtypes(run)
    assert dtypes and all(set(d) == {torch.bfloat16} for d in dtypes), dtypes
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = linear_cross_entropy_ref(h32, w32, y, cw)
    (ref * 3.0).backward()
    loss = linear_cross_entropy(h.detach(), w.detach(), y, cw, chunk=chunk)
    torch.testing.assert_close(loss, ref.detach(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(h.grad.float(), h32.grad, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(w.grad.float(), w32.grad, rtol=5e-2, atol=5e-3)


def test_losses_run_the_heads_in_bf16_under_bf16_autocast():
    """Under bf16 autocast the run's losses cast the hidden states and the fp32 head to bf16 for
    the fused heads (CE and KD); outside autocast they stay fp32, and fp16 autocast keeps fp32."""
    from l2kd.losses import Losses

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(32, 1001, bias=False)
    teacher = torch.nn.Linear(32, 1001, bias=False)
    h = torch.randn(20, 32, generator=g, requires_grad=True)
    ht = torch.randn(20, 32, generator=g)
    y = torch.randint(0, 1001, (20,), generator=g)
    cw = torch.ones(1001)
    losses = Losses()
    for ctx, want in ((torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16),
                      (torch.autocast("cpu", enabled=False), torch.float32),
                      (torch.autocast("cpu", dtype=torch.float16), torch.float32)):
        with ctx:
            ce = _mm_dtypes(lambda: losses.ce(h, head, y, cw).backward())
            kd = _mm_dtypes(lambda: losses.kd(h, head, ht, teacher, 2.0).backward())
        assert ce and kd and all(set(d) == {want} for d in ce + kd), (want, ce, kd)
        assert head.weight.grad.dtype == torch.float32  # the master weights' gradient
        head.weight.grad = h.grad = None
