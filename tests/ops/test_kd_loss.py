"""Tests of l2kd.ops.kd_loss: the compiled op against kd_loss_ref, and kd_loss_ref against the
original's formula (KLDivLoss(reduction="batchmean") * T^2).

Precision: the CPU kernel uses SLEEF's expf (at::vec exp, <= 1 ulp) and logf, the CUDA kernel
the IEEE expf/logf; no fast-math approximation. Both accumulate in fp32, so the loss agrees with
the fp32 reference to ~1e-5 relative (looser with V = 50257: sums of 50k terms) and the
gradient to one rounding of its storage dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

from l2kd.ops import has_compiled, kd_loss, kd_loss_ref

COMPILED = has_compiled("kd_loss")
needs_compiled = pytest.mark.skipif(not COMPILED, reason="compiled l2kd::kd_loss not built")


def _cuda_ok() -> bool:
    if not (COMPILED and torch.cuda.is_available()):
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("l2kd::kd_loss", "CUDA")
    except Exception:
        return False


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_ok(), reason="no CUDA kernel/GPU"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (loss rtol, grad rtol vs max |grad|): fp32 math everywhere, the gradient is stored in the dtype.
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-5, 2e-3), torch.bfloat16: (2e-5, 1.6e-2)}


def _logits(shape, dtype, device, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)


def _run(fn, s, t, mask, T, gout=1.0, **kw):
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, t, mask, T, **kw)
    (loss * gout).backward()
    return loss.detach(), s.grad


def _compare(s, t, mask, T, gout=1.0, loss_rtol=None, grad_rtol=None):
    lr, gr = _run(kd_loss_ref, s, t, mask, T, gout)
    lk, gk = _run(kd_loss, s, t, mask, T, gout)
    d_loss, d_grad = TOL[s.dtype]
    loss_rtol = loss_rtol or d_loss
    grad_rtol = grad_rtol or d_grad
    assert lk.dtype == torch.float32 and lk.shape == ()
    assert gk.dtype == s.dtype and gk.shape == s.shape
    torch.testing.assert_close(lk.cpu(), lr.cpu(), rtol=loss_rtol, atol=1e-6)
    scale = gr.float().abs().max().item() + 1e-30
    torch.testing.assert_close(gk.float().cpu() / scale, gr.float().cpu() / scale, rtol=0, atol=grad_rtol)
    return lk, gk


# --------------------------------------------------------------------------------------------
# The reference itself: the original's exact formula


def _original_formula(s, t, mask, T):
    """L2KD: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T) widened by its last column) * T^2."""
    vs, vt = s.shape[-1], t.shape[-1]
    s2, t2 = s.reshape(-1, vs), t.reshape(-1, vt)
    if mask is not None:
        s2, t2 = s2[mask.reshape(-1)], t2[mask.reshape(-1)]
    log_q = torch.log_softmax(s2.double() / T, dim=-1)
    p = torch.softmax(t2.double() / T, dim=-1)
    if vt < vs:
        p = torch.cat([p, p[:, -1:].repeat(1, vs - vt)], dim=-1)
    return torch.nn.KLDivLoss(reduction="batchmean")(log_q, p) * T**2


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("T", [0.5, 2.0])
def test_ref_matches_original_formula(k, T):
    s = _logits((4, 9, 50), torch.float32, "cpu", seed=1)
    t = _logits((4, 9, 50 - k), torch.float32, "cpu", seed=2)
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(3)) > 0.4
    sd = s.double().requires_grad_()
    expected = _original_formula(sd, t, mask, T)
    expected.backward()
    lr, gr = _run(kd_loss_ref, s, t, mask, T)
    torch.testing.assert_close(lr.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gr.double(), sd.grad, rtol=1e-4, atol=1e-7)
    # the closed-form gradient of the docstring: T * (q * P - p) / n on the selected rows
    n = int(mask.sum())
    q = torch.softmax(sd.detach() / T, -1)
    p = torch.softmax(t.double() / T, -1)
    if k:
        p = torch.cat([p, p[..., -1:].expand(*p.shape[:-1], k)], -1)
    closed = T * (q * p.sum(-1, keepdim=True) - p) / n * mask[..., None]
    torch.testing.assert_close(gr.double(), closed, rtol=1e-4, atol=1e-7)


def test_ref_empty_mask_is_zero():
    s = _logits((3, 11), torch.float32, "cpu")
    lr, gr = _run(kd_loss_ref, s, s.clone(), torch.zeros(3, dtype=torch.bool), 2.0)
    assert lr.item() == 0.0 and torch.count_nonzero(gr) == 0
    # the original gives NaN there (documented difference)
    assert torch.isnan(_original_formula(s, s, torch.zeros(3, dtype=torch.bool), 2.0))


# --------------------------------------------------------------------------------------------
# Compiled op against the reference


@needs_compiled
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("V", [7, 8, 257])
@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_ref_small(dtype, rows, V, T):
    s = _logits((rows, V), dtype, "cpu", seed=rows + V)
    t = _logits((rows, V), dtype, "cpu", seed=rows * V + 7)
    mask = (torch.arange(rows) % 3 != 1) if rows > 1 else None
    _compare(s, t, mask, T)


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_ref_gpt2_vocab(device, dtype):
    s = _logits((3, 50257), dtype, device, seed=11)
    t = _logits((3, 50257), dtype, device, seed=12)
    _compare(s, t, torch.tensor([True, False, True], device=device), 2.0, loss_rtol=1e-4)


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["none", "random", "all_true", "all_false"])
def test_masks(device, kind):
    s = _logits((37, 100), torch.float32, device, seed=5)
    t = _logits((37, 100), torch.float32, device, seed=6)
    mask = {
        "none": None,
        "random": torch.rand(37, generator=torch.Generator().manual_seed(0)) > 0.5,
        "all_true": torch.ones(37, dtype=torch.bool),
        "all_false": torch.zeros(37, dtype=torch.bool),
    }[kind]
    if mask is not None:
        mask = mask.to(device)
    lk, gk = _run(kd_loss, s, t, mask, 2.0)
    if kind == "all_false":
        assert lk.item() == 0.0 and torch.count_nonzero(gk) == 0
        return
    _compare(s, t, mask, 2.0)
    if mask is not None:
        assert torch.count_nonzero(gk[~mask]) == 0  # dropped rows get no gradient
        if kind == "all_true":
            torch.testing.assert_close(lk, _run(kd_loss, s, t, None, 2.0)[0], rtol=0, atol=0)


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_leading_dims_and_noncontiguous(device, dtype):
    s = _logits((2, 5, 33), dtype, device, seed=1)
    t = _logits((5, 2, 33), dtype, device, seed=2).transpose(0, 1)  # non-contiguous teacher
    assert not t.is_contiguous()
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool, device=device)
    _compare(s, t, mask, 2.0)
    s_nc = _logits((2, 5, 66), dtype, device, seed=3)[..., ::2]  # non-contiguous student
    _compare(s_nc, t, mask, 1.0)
    _compare(s, t, None, 1.0)
    _compare(_logits((33,), dtype, device), _logits((33,), dtype, device, seed=4), None, 1.0)  # one row, no batch


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 3])
def test_teacher_smaller_vocab(device, dtype, k):
    V = 257
    s = _logits((37, V), dtype, device, seed=k)
    t = _logits((37, V - k), dtype, device, seed=k + 10)
    t[:5, -1] += 6.0  # a large last teacher column weighs the widened part
    mask = (torch.arange(37, device=device) % 4 != 0)
    _compare(s, t, mask, 2.0)
    if dtype == torch.float32:
        _compare(s[:1, :50], t[:1, : 50 - k], None, 0.5)


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gout", [0.37, -2.0])
def test_grad_output_not_one(device, gout):
    s = _logits((37, 257), torch.float32, device, seed=8)
    t = _logits((37, 257), torch.float32, device, seed=9)
    _compare(s, t, None, 2.0, gout=gout)
    # retain_graph: a second backward gives the same gradient (the saved gradient is not mutated)
    x = s.clone().requires_grad_()
    loss = kd_loss(x, t, None, 2.0)
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    x.grad = None
    (loss * gout).backward()
    torch.testing.assert_close(x.grad, g1 * gout)


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits(device):
    V = 40
    s = _logits((6, V), torch.float32, device, seed=1)
    t = _logits((6, V), torch.float32, device, seed=2)
    s[0] *= 1e4 / 3  # huge logits
    t[0] *= -1e4 / 3
    s[1, 5] = 1e4
    t[1, 7] = -1e4
    t[2, :10] = float("-inf")  # teacher p = 0 entries contribute 0 ...
    s[2, :3] = float("-inf")  # ... also where the student is -inf there
    s[3] = 0.5  # all-equal rows
    t[3] = -2.0
    s[4, ::2] = float("-inf")
    t[4, ::2] = float("-inf")
    for T in (0.5, 2.0):
        lk, gk = _compare(s, t, None, T, loss_rtol=1e-4)
        assert torch.isfinite(lk) and torch.isfinite(gk).all()
    # all-equal rows and identical distributions: loss 0
    eq = torch.full((2, 9), 3.0, device=device)
    assert abs(_run(kd_loss, eq, eq.clone(), None, 2.0)[0].item()) < 1e-6


@needs_compiled
@pytest.mark.parametrize("device", DEVICES)
def test_student_neg_inf_under_teacher_mass_is_inf(device):
    s = _logits((3, 20), torch.float32, device, seed=1)
    t = _logits((3, 20), torch.float32, device, seed=2)
    s[1, 4] = float("-inf")
    lk, gk = _run(kd_loss, s, t, None, 2.0)
    lr, gr = _run(kd_loss_ref, s, t, None, 2.0)
    assert math.isinf(lk.item()) and lk.item() > 0 and math.isinf(lr.item())
    assert torch.isfinite(gk).all()
    torch.testing.assert_close(gk, gr, rtol=1e-4, atol=1e-7)
    s[2] = float("-inf")  # a student row entirely -inf: still +inf, not NaN
    lk, gk = _run(kd_loss, s, t, None, 2.0)
    assert math.isinf(lk.item()) and torch.isfinite(gk).all()
    # in the teacher's widened columns too
    lk, _ = _run(kd_loss, s[:2], t[:2, :18], None, 2.0)
    s2 = s[:1].clone()
    s2[0, 19] = float("-inf")
    lk2, gk2 = _run(kd_loss, s2, t[:1, :18], None, 2.0)
    assert math.isinf(lk2.item()) and torch.isfinite(gk2).all()


@needs_compiled
def test_no_grad_path_and_need_grad_flag():
    s = _logits((37, 257), torch.bfloat16, "cpu")
    t = _logits((37, 257), torch.bfloat16, "cpu", seed=1)
    with torch.no_grad():
        l0 = kd_loss(s.requires_grad_(), t, None, 2.0)
    l1, g1 = torch.ops.l2kd.kd_loss(s.detach(), t, None, 2.0, True)
    l2, g2 = torch.ops.l2kd.kd_loss(s.detach(), t, None, 2.0, False)
    assert g2.numel() == 0 and g1.shape == s.shape
    assert l0.item() == l1.item() == l2.item()


@needs_compiled
def test_deterministic_across_thread_counts():
    s = _logits((64, 3001), torch.float32, "cpu", seed=1)
    t = _logits((64, 3001), torch.float32, "cpu", seed=2)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = torch.ops.l2kd.kd_loss(s, t, None, 2.0, True)
        torch.set_num_threads(max(2, n))
        b = torch.ops.l2kd.kd_loss(s, t, None, 2.0, True)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_compiled
@pytest.mark.parametrize("with_mask", [False, True])
def test_opcheck_cpu(with_mask):
    s = _logits((2, 3, 19), torch.float32, "cpu").requires_grad_()
    t = _logits((2, 3, 17), torch.float32, "cpu", seed=1)
    mask = torch.tensor([[True, False, True], [True, True, False]]) if with_mask else None
    torch.library.opcheck(torch.ops.l2kd.kd_loss.default, (s, t, mask, 2.0, True))
    torch.library.opcheck(torch.ops.l2kd.kd_loss.default, (s.detach(), t, mask, 0.5, False))


@needs_compiled
@pytest.mark.skipif(not _cuda_ok(), reason="no CUDA kernel/GPU")
def test_opcheck_cuda():
    s = _logits((2, 3, 19), torch.float16, "cuda").requires_grad_()
    t = _logits((2, 3, 19), torch.float16, "cuda", seed=1)
    torch.library.opcheck(torch.ops.l2kd.kd_loss.default, (s, t, s.new_ones(2, 3, dtype=torch.bool), 2.0, True))


@needs_compiled
def test_torch_compile_fullgraph():
    s = _logits((4, 6, 50), torch.float32, "cpu")
    t = _logits((4, 6, 48), torch.float32, "cpu", seed=1)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.3

    def step(x, y, m):
        return kd_loss(x, y, m, 2.0) * 0.5

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    lc, gc = _run(lambda x, y, m, T: compiled(x, y, m), s, t, mask, 2.0)
    lr, gr = _run(lambda x, y, m, T: kd_loss_ref(x, y, m, 2.0) * 0.5, s, t, mask, 2.0)
    torch.testing.assert_close(lc, lr, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(gc, gr, rtol=1e-4, atol=1e-7)


def test_use_kernels_false_is_ref():
    s = _logits((5, 30), torch.float32, "cpu")
    t = _logits((5, 30), torch.float32, "cpu", seed=1)
    assert kd_loss(s, t, None, 2.0, use_kernels=False).item() == kd_loss_ref(s, t, None, 2.0).item()


# --------------------------------------------------------------------------------------------
# Bad inputs: errors name the argument (Python checks; the C++ op checks the same)


@pytest.mark.parametrize("fn", ["kd_loss", "kd_loss_ref", "op"])
def test_bad_inputs(fn, raises_safely):
    if fn == "op" and not COMPILED:
        pytest.skip("compiled l2kd::kd_loss not built")
    if fn == "op":
        f = lambda s, t, m=None, T=2.0: torch.ops.l2kd.kd_loss(s, t, m, T, True)  # noqa: E731
        errors = (RuntimeError,)
    else:
        f = {"kd_loss": kd_loss, "kd_loss_ref": kd_loss_ref}[fn]
        errors = (TypeError, ValueError)
    s = torch.randn(3, 10)
    t = torch.randn(3, 10)
    raises_safely(errors, "student_logits", lambda: f(s.long(), t.long()))
    raises_safely(errors, "teacher_logits", lambda: f(s, t.double()))
    raises_safely(errors, "teacher_logits", lambda: f(s, torch.randn(4, 10)))
    raises_safely(errors, "teacher_logits", lambda: f(s, torch.randn(3, 11)))  # teacher wider than student
    raises_safely(errors, "mask", lambda: f(s, t, torch.ones(4, dtype=torch.bool)))
    raises_safely(errors, "mask", lambda: f(s, t, torch.ones(3)))
    for bad_T in (0.0, -1.0, float("nan")):
        raises_safely(errors, "temperature", lambda: f(s, t, None, bad_T))
    if torch.cuda.is_available():
        raises_safely(errors, "teacher_logits|device", lambda: f(s, t.cuda()), uses_cuda=True)


# --------------------------------------------------------------------------------------------
# Shared arithmetic (kd_loss_math.h) seen through the op: a hand-computed row


@needs_compiled
def test_hand_computed_row():
    s = torch.tensor([[0.0, 1.0, 2.0]])
    t = torch.tensor([[2.0, 0.0]])  # teacher one column short: p widened to [p0, p1, p1]
    T = 1.0
    p = torch.softmax(t.double(), -1)[0]
    pw = torch.stack([p[0], p[1], p[1]])
    q = torch.softmax(s.double(), -1)[0]
    expected = float((pw * (pw.log() - q.log())).sum())
    loss, grad = torch.ops.l2kd.kd_loss(s, t, None, T, True)
    assert abs(loss.item() - expected) < 1e-5
    torch.testing.assert_close(grad[0].double(), T * (q * pw.sum() - pw), rtol=1e-5, atol=1e-7)


def _kd_fp64(s, t, T):
    """Loss and gradient in float64 (teacher widened by its last column), the accuracy yardstick."""
    s, t = s.double(), t.double()
    log_q = torch.log_softmax(s / T, -1)
    log_p = torch.log_softmax(t / T, -1)
    if t.shape[-1] < s.shape[-1]:
        log_p = torch.cat([log_p, log_p[:, -1:].expand(-1, s.shape[-1] - t.shape[-1])], -1)
    p = log_p.exp()
    loss = (p * (log_p - log_q)).sum() * T * T / s.shape[0]
    grad = T * (log_q.exp() * p.sum(-1, keepdim=True) - p) / s.shape[0]
    return loss, grad


@needs_compiled
@pytest.mark.parametrize("vt", [50257, 50000])
def test_loss_accuracy_vs_fp64(vt):
    """The CPU kernel's polynomial exp (not the library expf) costs no accuracy that matters:
    loss and gradient errors against float64 stay within 2x (plus a few ulp) of the float32
    reference's own errors."""
    s = _logits((37, 50257), torch.float32, "cpu", scale=4.0, seed=3)
    t = _logits((37, vt), torch.float32, "cpu", scale=4.0, seed=4)
    l64, g64 = _kd_fp64(s, t, 2.0)
    lr, gr = _run(kd_loss_ref, s, t, None, 2.0)
    lk, gk = torch.ops.l2kd.kd_loss(s, t, None, 2.0, True)
    err_ref, err_k = abs(lr.double() - l64).item(), abs(lk.double() - l64).item()
    assert err_k <= 2 * err_ref + 8 * 2**-24 * abs(l64.item()), (err_k, err_ref)
    gscale = g64.abs().max().item()
    gerr_ref = ((gr.double() - g64).abs().max() / gscale).item()
    gerr_k = ((gk.double() - g64).abs().max() / gscale).item()
    assert gerr_k <= 2 * gerr_ref + 8 * 2**-24, (gerr_k, gerr_ref)
    # relative error per element where the gradient is not tiny (ulp-level, not just max-scaled)
    big = g64.abs() > 1e-3 * gscale
    rel_k = ((gk.double() - g64).abs()[big] / g64.abs()[big]).max().item()
    rel_ref = ((gr.double() - g64).abs()[big] / g64.abs()[big]).max().item()
    assert rel_k <= 2 * rel_ref + 1e-6, (rel_k, rel_ref)
