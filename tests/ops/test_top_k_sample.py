"""Tests of l2kd.ops.top_k_sample: invariants, distribution, errors, opcheck, compile.

Sampling ops test invariants rather than values: every id lies in the kept set (ties at the
k-th value included, nucleus applied), k=1 is argmax, a seeded generator repeats, and a
chi-square goodness-of-fit test compares many draws with the exact filtered distribution
computed here independently (numpy, float64). Compiled-path tests skip when the extension
(l2kd._C) lacks the op; CUDA tests skip without a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from l2kd.ops import has_compiled
from l2kd.ops.top_k_sample import top_k_sample, top_k_sample_ref

COMPILED = has_compiled("top_k_sample")
CUDA = COMPILED and torch.cuda.is_available()
needs_compiled = pytest.mark.skipif(not COMPILED, reason="l2kd._C without top_k_sample")
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device / CUDA kernel")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _sampler(path):
    if path == "ref":
        return lambda *a, **kw: top_k_sample_ref(*a, **kw)
    if not COMPILED:
        pytest.skip("l2kd._C without top_k_sample")
    return lambda *a, **kw: top_k_sample(*a, **kw)


PATHS = ["ref", "compiled"]


# ----------------------------------------------------------------------------- oracle
def filtered_probs(row, k, top_p=0.0, temperature=1.0):
    """Exact filtered distribution of one row (numpy float64), written independently."""
    y = torch.div(torch.as_tensor(row).float(), temperature).double().numpy()
    kth = np.partition(y, len(y) - k)[len(y) - k]  # k-th largest
    keep = y >= kth
    w = np.zeros_like(y)
    w[keep] = np.exp(y[keep] - y[keep].max())  # exp(-inf) = 0
    if 0.0 < top_p < 1.0:
        idx = np.flatnonzero(keep)
        order = idx[np.lexsort((idx, -y[idx]))]  # value descending, index ascending
        p = w[order] / w.sum()
        before = np.concatenate(([0.0], np.cumsum(p)[:-1]))
        w[order[before > top_p]] = 0.0
    return w / w.sum()


def allowed_ids(x, k, top_p, temperature, slack=1e-4):
    """Boolean [B, V]: ids an exact sampler may return (nucleus boundary loosened by slack)."""
    tp = min(top_p + slack, 0.99999) if top_p > 0 else 0.0
    return np.stack([filtered_probs(r, k, tp, temperature) > 0 for r in x])


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ids_in_kept_set(path, dtype):
    sample = _sampler(path)
    g = torch.Generator().manual_seed(0)
    for V in (7, 8, 1000, 50257):
        for B in ((1, 37) if V < 50257 else (1, 3)):
            for k in sorted({min(kk, V) for kk in (1, 2, 20, V)}):
                for top_p, temp in ((0.0, 1.0), (0.5, 0.7), (0.9, 1.3)):
                    x = (torch.randn(B, V, generator=g) * 3).to(dtype)
                    if V == 50257 and k == V and top_p > 0 and path == "ref":
                        continue  # the reference sorts the full row: slow, covered at V=1000
                    ids = sample(x, k, top_p, temp, g)
                    assert ids.shape == (B,) and ids.dtype == torch.long
                    ok = allowed_ids(x, k, top_p, temp)
                    got = ok[np.arange(B), ids.numpy()]
                    assert got.all(), (V, B, k, top_p, temp, dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_k1_is_argmax(path, dtype):
    sample = _sampler(path)
    g = torch.Generator().manual_seed(1)
    for V in (7, 1000, 50257):
        B = 37 if V < 50257 else 3
        x = torch.randn(B, V, generator=g)
        x[torch.arange(B), torch.randint(V, (B,), generator=g)] = 100.0  # unique maximum in every dtype
        x = x.to(dtype)
        ids = sample(x, 1, 0.0, 0.8, g)
        assert torch.equal(ids, x.float().argmax(dim=1))


@pytest.mark.parametrize("path", PATHS)
def test_seeded_generator_repeats(path):
    sample = _sampler(path)
    x = torch.randn(37, 1000) * 2
    a = sample(x, 20, 0.9, 1.0, torch.Generator().manual_seed(7))
    b = sample(x, 20, 0.9, 1.0, torch.Generator().manual_seed(7))
    c = sample(x, 20, 0.9, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("path", PATHS)
def test_ties_at_kth_value_kept(path):
    sample = _sampler(path)
    g = torch.Generator().manual_seed(2)
    x = torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0, -5.0, 1.0]]).repeat(4000, 1)
    ids = sample(x, 2, 0.0, 1.0, g)
    assert set(ids.tolist()) == {1, 2, 3, 4, 6}
    # k = 1 with tied maxima: one of the maxima, drawn uniformly
    x = torch.tensor([[3.0, 1.0, 3.0, 3.0]]).repeat(3000, 1)
    ids = sample(x, 1, 0.0, 1.0, g)
    assert set(ids.tolist()) == {0, 2, 3}


@pytest.mark.parametrize("path", PATHS)
def test_nucleus_cuts_inside_tie_group(path):
    """All-equal logits, top_p 0.45: members 0..4 (stable order) stay, 5..9 go."""
    sample = _sampler(path)
    x = torch.zeros(3000, 10)
    ids = sample(x, 10, 0.45, 1.0, torch.Generator().manual_seed(3))
    assert set(ids.tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("path", PATHS)
def test_temperature_rounding_ties(path):
    """Two adjacent floats that x / 3 maps to one value: both kept with k = 1."""
    sample = _sampler(path)
    three = np.float32(3.0)
    b = np.float32(1.75)  # x / 3 in [0.5, 1): the result's ulp exceeds a third of x's
    for _ in range(100):
        a = np.nextafter(b, np.float32(-np.inf), dtype=np.float32)
        if np.float32(a / three) == np.float32(b / three):
            break
        b = np.nextafter(b, np.float32(np.inf), dtype=np.float32)
    else:
        pytest.skip("no rounding tie found")
    x = torch.tensor([[float(b), float(a), 0.0, -1.0]], dtype=torch.float32).repeat(2000, 1)
    assert torch.div(x[:1, 0], 3.0).item() == torch.div(x[:1, 1], 3.0).item()
    ids = sample(x, 1, 0.0, 3.0, torch.Generator().manual_seed(4))
    assert set(ids.tolist()) == {0, 1}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_neg_inf_never_sampled(path, dtype):
    sample = _sampler(path)
    g = torch.Generator().manual_seed(5)
    V = 1000
    x = torch.randn(37, V, generator=g)
    x[torch.rand(37, V, generator=g) < 0.98] = float("-inf")
    x[:, 3] = 0.0  # at least one finite entry per row
    x = x.to(dtype)
    for k in (1, 5, 50, V):  # also fewer finite entries than k
        for top_p in (0.0, 0.9):
            ids = sample(x, k, top_p, 1.0, g)
            assert torch.isfinite(x[torch.arange(37), ids].float()).all()


# ----------------------------------------------------------------------------- distribution
CHI_CASES = [
    # logits, k, top_p, temperature
    ([2.0, 1.5, 0.3, -1.0, 0.9, 0.9, 2.2, -0.4, 1.1, 0.0, -2.0, 0.5], 5, 0.0, 1.0),
    ([2.0, 1.5, 0.3, -1.0, 0.9, 0.9, 2.2, -0.4, 1.1, 0.0, -2.0, 0.5], 5, 0.7, 0.8),
    ([1.0, 1.0, 0.5, 1.0, 0.5, 2.0, -1.0, 0.5], 4, 0.0, 1.5),  # ties at the k-th value
    ([1.0, 1.0, 0.5, 1.0, 0.5, 2.0, -1.0, 0.5], 8, 0.8, 1.0),  # nucleus through a tie group
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(len(CHI_CASES)))
def test_chi_square_goodness_of_fit(path, case):
    from scipy.stats import chisquare

    sample = _sampler(path)
    logits, k, top_p, temp = CHI_CASES[case]
    row = torch.tensor(logits)
    p = filtered_probs(row, k, top_p, temp)
    n = 20000
    ids = sample(row.repeat(n, 1), k, top_p, temp, torch.Generator().manual_seed(100 + case))
    counts = np.bincount(ids.numpy(), minlength=len(logits))
    assert counts[p == 0].sum() == 0
    sup = p > 0
    stat = chisquare(counts[sup], p[sup] * n)
    assert stat.pvalue > 1e-3, (counts, p * n, stat)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("use_kernels", [False, True])
def test_bad_inputs(use_kernels, raises_safely):
    x = torch.randn(3, 10)
    f = lambda *a, **kw: top_k_sample(*a, use_kernels=use_kernels, **kw)  # noqa: E731
    raises_safely(ValueError, "k must", lambda: f(x, 0))
    raises_safely(ValueError, "k must", lambda: f(x, 11))
    raises_safely(TypeError, "float32", lambda: f(x.double(), 2))
    raises_safely(TypeError, "float32", lambda: f(x.long(), 2))
    raises_safely(ValueError, "2-D", lambda: f(x[0], 2))
    raises_safely(ValueError, "2-D", lambda: f(x[None], 2))
    raises_safely(ValueError, "temperature", lambda: f(x, 2, temperature=0.0))
    raises_safely(ValueError, "temperature", lambda: f(x, 2, temperature=-1.0))
    raises_safely(ValueError, "top_p", lambda: f(x, 2, top_p=1.5))
    raises_safely(ValueError, "top_p", lambda: f(x, 2, top_p=-0.1))
    err = (ValueError, RuntimeError)
    bad = x.clone()
    bad[1, 4] = float("nan")
    raises_safely(err, "NaN", lambda: f(bad, 2))
    bad = x.clone()
    bad[2] = float("-inf")
    raises_safely(err, "-inf", lambda: f(bad, 2))
    bad = x.clone()
    bad[0, 0] = float("inf")
    raises_safely(err, r"\+inf", lambda: f(bad, 2))


@needs_compiled
def test_core_op_checks(raises_safely):
    x = torch.randn(3, 10)
    u = torch.rand(3)
    op = torch.ops.l2kd.top_k_sample
    raises_safely(RuntimeError, "top_k_sample: k must", lambda: op(x, 0, 0.0, 1.0, u))
    raises_safely(RuntimeError, "top_k_sample: k must", lambda: op(x, 11, 0.0, 1.0, u))
    raises_safely(RuntimeError, "top_k_sample: logits must be float32", lambda: op(x.double(), 2, 0.0, 1.0, u))
    raises_safely(RuntimeError, "top_k_sample: uniforms", lambda: op(x, 2, 0.0, 1.0, torch.rand(2)))
    raises_safely(RuntimeError, "top_k_sample: temperature", lambda: op(x, 2, 0.0, 0.0, u))
# ----------------------------------------------------------------------------- torch.library
@needs_compiled
def test_opcheck_cpu():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 37, generator=g).to(torch.bfloat16)
    u = torch.rand(5, generator=g)
    torch.library.opcheck(torch.ops.l2kd.top_k_sample.default, (x, 4, 0.9, 0.7, u))


@needs_compiled
def test_core_op_deterministic_given_uniforms():
    x = torch.randn(37, 1000)
    u = torch.rand(37)
    a = torch.ops.l2kd.top_k_sample(x, 20, 0.9, 1.0, u)
    assert torch.equal(a, torch.ops.l2kd.top_k_sample(x, 20, 0.9, 1.0, u))
    # u -> 0 draws the first member in the kernel's fixed order; u -> 1 the last: both kept
    lo = torch.ops.l2kd.top_k_sample(x, 20, 0.0, 1.0, torch.zeros(37))
    hi = torch.ops.l2kd.top_k_sample(x, 20, 0.0, 1.0, torch.full((37,), 1.0 - 2**-24))
    ok = allowed_ids(x, 20, 0.0, 1.0)
    assert ok[np.arange(37), lo.numpy()].all() and ok[np.arange(37), hi.numpy()].all()


@needs_compiled
def test_torch_compile_fullgraph():
    """The public function with generator=None compiles in one graph (uniforms drawn inside)."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x: top_k_sample(x, 5, 0.9, 0.8), fullgraph=True)
    x = torch.randn(37, 100)
    ids = fn(x)
    ok = allowed_ids(x, 5, 0.9, 0.8)
    assert ok[np.arange(37), ids.numpy()].all()


# ----------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ids_in_kept_set(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    for V in (7, 8, 1000, 50257):
        for k in sorted({min(kk, V) for kk in (1, 2, 20, V)}):
            for top_p, temp in ((0.0, 1.0), (0.5, 0.7), (0.9, 1.3)):
                if V == 50257 and k == V and top_p > 0:
                    continue
                x = (torch.randn(37 if V < 50257 else 3, V) * 3).to(dtype)
                ids = top_k_sample(x.cuda(), k, top_p, temp, g).cpu()
                ok = allowed_ids(x, k, top_p, temp)
                assert ok[np.arange(x.shape[0]), ids.numpy()].all(), (V, k, top_p, dtype)


@needs_cuda
@pytest.mark.parametrize("case", range(len(CHI_CASES)))
def test_cuda_chi_square(case):
    from scipy.stats import chisquare

    logits, k, top_p, temp = CHI_CASES[case]
    row = torch.tensor(logits)
    p = filtered_probs(row, k, top_p, temp)
    n = 20000
    g = torch.Generator(device="cuda").manual_seed(200 + case)
    ids = top_k_sample(row.repeat(n, 1).cuda(), k, top_p, temp, g).cpu()
    counts = np.bincount(ids.numpy(), minlength=len(logits))
    assert counts[p == 0].sum() == 0
    assert chisquare(counts[p > 0], p[p > 0] * n).pvalue > 1e-3


@needs_cuda
def test_cuda_large_kept_set_and_repeat():
    """k = V with nucleus (kept set larger than the kernel's shared-memory list)."""
    x = torch.zeros(4, 50257, device="cuda")
    x[:, :10] = 5.0
    a = top_k_sample(x, 50257, 0.5, 1.0, torch.Generator(device="cuda").manual_seed(1))
    b = top_k_sample(x, 50257, 0.5, 1.0, torch.Generator(device="cuda").manual_seed(1))
    assert torch.equal(a, b)
    ok = allowed_ids(x.cpu(), 50257, 0.5, 1.0)
    assert ok[np.arange(4), a.cpu().numpy()].all()
    x = torch.randn(5, 37, device="cuda")
    torch.library.opcheck(torch.ops.l2kd.top_k_sample.default, (x, 4, 0.9, 0.7, torch.rand(5, device="cuda")))


@needs_cuda
def test_cuda_invalid_row_gives_minus_one():
    x = torch.randn(3, 10, device="cuda")
    x[1] = float("-inf")
    x[2, 3] = float("nan")
    ids = torch.ops.l2kd.top_k_sample(x, 2, 0.0, 1.0, torch.rand(3, device="cuda")).cpu()
    assert ids[0] >= 0 and ids[1] == -1 and ids[2] == -1


# ----------------------------------------------------------------------------- seeded op (uniforms drawn in the op)
_M32 = 0xFFFFFFFF


def _philox(ctr, key):
    """Philox4x32-10, written here from the published description (Salmon et al., SC'11)."""
    c, (k0, k1) = list(ctr), key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & _M32, p1 & _M32, ((p0 >> 32) ^ c[3] ^ k1) & _M32, p0 & _M32]
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c


def test_philox_reference_known_answers():
    assert _philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox([_M32] * 4, [_M32, _M32]) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.skipif(not has_compiled("top_k_sample_seeded"), reason="l2kd._C without top_k_sample_seeded")
def test_seeded_op_draws_the_shared_philox_uniforms():
    """The kernels' own uniforms (top_k_sample_math.h, shared with CUDA): on a flat row of 2^16
    logits the drawn id is floor(u * 2^16), i.e. the top 16 bits of Philox word 0 of (0, row)."""
    g = torch.Generator().manual_seed(5)
    twin = torch.Generator()
    twin.set_state(g.get_state())
    seed = int(torch.empty(1, dtype=torch.int64).random_(-2**63, None, generator=twin)) & (2**64 - 1)
    B, V = 9, 2**16
    ids = torch.ops.l2kd.top_k_sample_seeded(torch.zeros(B, V), V, 0.0, 1.0, g)
    expected = [_philox([0, 0, r, 0], [seed & _M32, seed >> 32])[0] >> 16 for r in range(B)]
    assert ids.tolist() == expected


@pytest.mark.skipif(not has_compiled("top_k_sample_seeded"), reason="l2kd._C without top_k_sample_seeded")
def test_seeded_op_kept_set_repeat_and_distribution():
    from scipy.stats import chisquare

    op = torch.ops.l2kd.top_k_sample_seeded
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(3)) * 2
    for k, top_p, temp in ((1, 0.0, 1.0), (7, 0.0, 0.7), (40, 0.9, 1.3)):
        ids = op(x, k, top_p, temp, torch.Generator().manual_seed(11)).numpy()
        assert allowed_ids(x, k, top_p, temp)[np.arange(64), ids].all()
        again = op(x, k, top_p, temp, torch.Generator().manual_seed(11)).numpy()
        assert (ids == again).all()
    logits, k, top_p, temp = CHI_CASES[1]
    row = torch.tensor(logits)
    p = filtered_probs(row, k, top_p, temp)
    n = 20000
    counts = np.bincount(op(row.repeat(n, 1), k, top_p, temp, torch.Generator().manual_seed(9)).numpy(),
                         minlength=len(logits))
    assert counts[p == 0].sum() == 0
    assert chisquare(counts[p > 0], p[p > 0] * n).pvalue > 1e-3


@needs_cuda
def test_cuda_sampling_step_has_no_host_sync():
    x = torch.randn(64, 50257, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    top_k_sample(x, 20, 0.9, 1.0, g)  # warm-up (allocator, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for top_p in (0.0, 0.9):
            ids = top_k_sample(x, 20, top_p, 1.0, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ids.shape == (64,) and ids.dtype == torch.long


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_seeded_kernel_repeats_and_keeps_the_set(dtype):
    x = (torch.randn(37, 1001, generator=torch.Generator().manual_seed(4)) * 3).to(dtype)
    for k, top_p in ((1, 0.0), (20, 0.9), (300, 0.5)):  # warp path (kept <= 32) and block path
        a = torch.ops.l2kd.top_k_sample_seeded(x.cuda(), k, top_p, 1.0, torch.Generator(device="cuda").manual_seed(2))
        b = torch.ops.l2kd.top_k_sample_seeded(x.cuda(), k, top_p, 1.0, torch.Generator(device="cuda").manual_seed(2))
        assert torch.equal(a, b)
        assert allowed_ids(x.float(), k, top_p, 1.0)[np.arange(37), a.cpu().numpy()].all()
