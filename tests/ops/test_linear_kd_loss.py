"""linear_kd_loss (chunked LM heads + KD loss) against the unfused reference: values and gradients."""
from __future__ import annotations

import pytest
import torch

from l2kd.ops import has_compiled
from l2kd.ops.linear_kd_loss import linear_kd_loss, linear_kd_loss_ref

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=3e-2, atol=2e-3)}

# kernels=True runs the compiled kd_loss per block (skipped without the extension);
# kernels=False runs the same chunked algorithm with plain-PyTorch per-block math.
KERNELS = [pytest.param(True, id="kernel"), pytest.param(False, id="torch")]


def _need(kernels: bool) -> None:
    if kernels and not has_compiled("kd_loss"):
        pytest.skip("compiled l2kd::kd_loss not built")


def _inputs(n, vs, vt, h, ht, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    ws = (torch.randn(vs, h, generator=g) * 0.5).to(dtype).requires_grad_()
    hts = torch.randn(n, ht, generator=g).to(dtype)
    wt = (torch.randn(vt, ht, generator=g) * 0.5).to(dtype)
    return hs, ws, hts, wt


def _loss_and_grads(fn, hs, ws, ht, wt, grad_out, **kw):
    hs.grad = ws.grad = None
    loss = fn(hs, ws, ht, wt, 2.0, **kw)
    (loss * grad_out).backward()
    return loss.detach(), hs.grad.clone(), ws.grad.clone()


def _compare(got, want, dtype):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,chunk", [(1, 1), (37, 8), (300, 64)])
def test_matches_reference(kernels, dtype, n, chunk):
    _need(kernels)
    hs, ws, ht, wt = _inputs(n, 211, 211, 48, 48, dtype, seed=n)
    got = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, 1.0, chunk=chunk, use_kernels=kernels)
    want = _loss_and_grads(linear_kd_loss_ref, hs, ws, ht, wt, 1.0)
    assert got[0].dtype == torch.float32 and got[0].shape == ()
    _compare(got, want, dtype)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("k", [1, 3])
def test_smaller_teacher_vocab_and_hidden(kernels, k):
    _need(kernels)
    hs, ws, ht, wt = _inputs(37, 500, 500 - k, 40, 24, torch.float32, seed=k)
    got = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, -0.7, chunk=10, use_kernels=kernels)
    want = _loss_and_grads(linear_kd_loss_ref, hs, ws, ht, wt, -0.7)
    _compare(got, want, torch.float32)


@pytest.mark.parametrize("kernels", KERNELS)
def test_grad_output_and_gpt2_vocab(kernels):
    _need(kernels)
    hs, ws, ht, wt = _inputs(5, 50257, 50254, 16, 12, torch.float32)
    got = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, 2.5, chunk=2, use_kernels=kernels)
    want = _loss_and_grads(linear_kd_loss_ref, hs, ws, ht, wt, 2.5)
    _compare(got, want, torch.float32)


@pytest.mark.parametrize("kernels", KERNELS)
def test_chunk_size_does_not_change_result(kernels):
    _need(kernels)
    hs, ws, ht, wt = _inputs(37, 101, 99, 8, 8, torch.float32)
    a = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, 1.0, chunk=37, use_kernels=kernels)
    b = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, 1.0, chunk=5, use_kernels=kernels)
    _compare(a, b, torch.float32)


def test_teacher_gets_no_gradient_and_only_needed_grads():
    hs, ws, ht, wt = _inputs(9, 50, 50, 8, 8, torch.float32)
    ht.requires_grad_()
    wt.requires_grad_()
    ws.requires_grad_(False)
    linear_kd_loss(hs, ws, ht, wt, chunk=4).backward()
    assert hs.grad is not None and ws.grad is None and ht.grad is None and wt.grad is None
    with torch.no_grad():
        loss = linear_kd_loss(hs, ws, ht, wt, chunk=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, linear_kd_loss_ref(hs, ws, ht, wt).detach())


@pytest.mark.parametrize("kernels", KERNELS)
def test_empty_rows_give_zero(kernels):
    _need(kernels)
    hs, ws, ht, wt = _inputs(0, 30, 28, 8, 6, torch.float32)
    loss = linear_kd_loss(hs, ws, ht, wt, chunk=4, use_kernels=kernels)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert hs.grad.shape == (0, 8) and torch.count_nonzero(ws.grad) == 0


def test_bad_inputs_raise():
    hs, ws, ht, wt = _inputs(4, 30, 28, 8, 6, torch.float32)
    with pytest.raises(ValueError, match="larger than the student"):
        linear_kd_loss(hs, ws[:10], ht, wt)
    with pytest.raises(ValueError, match="rows"):
        linear_kd_loss(hs, ws, ht[:3], wt)
    with pytest.raises(ValueError, match="h_student"):
        linear_kd_loss(hs, ws[:, :7], ht, wt)
    with pytest.raises(TypeError, match="w_student"):
        linear_kd_loss(hs, ws.double(), ht, wt)
    with pytest.raises(ValueError, match="temperature"):
        linear_kd_loss(hs, ws, ht, wt, temperature=0.0)
    with pytest.raises(ValueError, match="chunk"):
        linear_kd_loss(hs, ws, ht, wt, chunk=0)


def test_autocast_runs_in_input_dtype():
    hs, ws, ht, wt = _inputs(37, 211, 209, 16, 16, torch.float32)
    want = _loss_and_grads(linear_kd_loss_ref, hs, ws, ht, wt, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _loss_and_grads(linear_kd_loss, hs, ws, ht, wt, 1.0, chunk=8)
    _compare(got, want, torch.float32)
