"""Tests of l2kd.ops.gem_project: compiled kernel vs reference vs quadprog vs brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from l2kd.ops import has_compiled
from l2kd.ops.gem_project import MAX_MEMORIES, gem_dual_solve_ref, gem_project, gem_project_ref

COMPILED = has_compiled("gem_project")
needs_compiled = pytest.mark.skipif(not COMPILED, reason="l2kd._C (gem_project) is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

IMPLS = ["ref", pytest.param("compiled", marks=needs_compiled)]


def run(impl, grad, mem, margin=0.5, eps=1e-3):
    if impl == "ref":
        return gem_project_ref(grad, mem, margin, eps)
    return gem_project(grad, mem, margin, eps, use_kernels=True)


def violated_case(t, P, seed=0, dtype=torch.float32, correlated=False):
    gen = torch.Generator().manual_seed(seed)
    if correlated:  # nearly parallel memories: common direction + small noise (Gram ill-conditioned)
        base = torch.randn(P, generator=gen, dtype=torch.float64)
        mem = base + 1e-3 * torch.randn(t, P, generator=gen, dtype=torch.float64)
        mem = mem * torch.linspace(0.5, 2.0, t, dtype=torch.float64)[:, None]
        grad = -(t + 2.0) * base + torch.randn(P, generator=gen, dtype=torch.float64)
    else:
        mem = torch.randn(t, P, generator=gen, dtype=torch.float64)
        grad = torch.randn(P, generator=gen, dtype=torch.float64) - 0.4 * mem.sum(0)
    mem, grad = mem.to(dtype), grad.to(dtype)
    if not bool(((mem.double() @ grad.double()) < 0).any()):  # force a violation: m0 . grad = -|m0|^2
        m0, g = mem[0].double(), grad.double()
        grad = (g - m0 * ((m0 @ g) / (m0 @ m0).clamp_min(1e-30) + 1.0)).to(dtype)
    return grad, mem


def dual_problem(grad, mem, eps):
    G, g = mem.double(), grad.double()
    A = G @ G.T
    A = 0.5 * (A + A.T) + eps * torch.eye(G.shape[0], dtype=torch.float64)
    return A, G @ g


def quadprog_original(grad, mem, margin=0.5, eps=1e-3):
    """The original project2cone2 (quadprog, fp64 numpy): returns (x, v)."""
    quadprog = pytest.importorskip("quadprog", reason="quadprog (test dependency) is not installed")
    M = mem.double().numpy()
    g = grad.double().numpy()
    t = M.shape[0]
    P = M @ M.T
    P = 0.5 * (P + P.T) + np.eye(t) * eps
    q = (M @ g) * -1
    v = quadprog.solve_qp(P, q, np.eye(t), np.zeros(t) + margin)[0]
    return torch.from_numpy(v @ M + g), torch.from_numpy(v)


def enumerate_solve(A, c, margin):
    """Brute force for small t: the active set whose solution satisfies the KKT conditions."""
    t = c.numel()
    b = c + margin * A.sum(1)
    best = None
    for mask in itertools.product([False, True], repeat=t):
        free = torch.tensor(mask, dtype=torch.bool)
        u = torch.zeros(t, dtype=torch.float64)
        if free.any():
            idx = free.nonzero().flatten()
            u[idx] = torch.linalg.solve(A[idx][:, idx], -b[idx])
        grad_u = A @ u + b
        tol = 1e-9 * (1 + b.abs().max())
        if bool((u >= -tol).all()) and bool((grad_u[~free] >= -tol).all()):
            best = u
            break
    assert best is not None, "no KKT point found"
    return best + margin


def kkt_residual(A, c, margin, v):
    """max violation of: v >= margin, A v + c >= 0, (v - margin) * (A v + c) = 0 (relative)."""
    grad_v = A @ v + c
    scale = 1.0 + float(c.abs().max()) + float((A.abs() @ v.abs()).max())
    return max(
        float((margin - v).clamp_min(0).max()),
        float((-grad_v).clamp_min(0).max()) / scale,
        float(((v - margin) * grad_v).abs().max()) / (scale * (1 + float(v.abs().max()))),
    )


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("t", [1, 2, 4, 8])
@pytest.mark.parametrize("P", [1, 7, 1000])
def test_matches_quadprog_and_brute_force_fp64(impl, t, P):
    grad, mem = violated_case(t, P, seed=t * 100 + P, dtype=torch.float64)
    out = run(impl, grad, mem)
    x_qp, v_qp = quadprog_original(grad, mem)
    assert rel_err(out, x_qp) < 1e-6
    A, c = dual_problem(grad, mem, 1e-3)
    v = gem_dual_solve_ref(A, c, 0.5)
    assert rel_err(v, v_qp) < 1e-6
    if t <= 6:
        v_bf = enumerate_solve(A, c, 0.5)
        assert rel_err(v, v_bf) < 1e-6
        assert rel_err(out, mem.double().T @ v_bf + grad.double()) < 1e-6


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("t", [2, 4, 8])
def test_correlated_memories(impl, t):
    """Nearly parallel memories: cond(A) ~ 1e6+, where projected Gauss-Seidel crawls."""
    grad, mem = violated_case(t, 2000, seed=7 + t, dtype=torch.float64, correlated=True)
    A, c = dual_problem(grad, mem, 1e-3)
    assert float(torch.linalg.cond(A)) > 1e4
    v = gem_dual_solve_ref(A, c, 0.5)
    assert kkt_residual(A, c, 0.5, v) < 1e-9
    x_qp, v_qp = quadprog_original(grad, mem)
    assert rel_err(v, v_qp) < 1e-6
    out = run(impl, grad, mem)
    assert rel_err(out, x_qp) < 1e-6
    # Projected Gauss-Seidel with the same budget of sweeps as a dense solve does not get there.
    b = c + 0.5 * A.sum(1)
    u = torch.zeros(t, dtype=torch.float64)
    for _ in range(50):
        for i in range(t):
            u[i] = max(0.0, float(u[i] - (A[i] @ u + b[i]) / A[i, i]))
    assert rel_err(u + 0.5, v) > 1e-6


@pytest.mark.parametrize("margin,eps", [(0.5, 1e-3), (0.0, 1e-3), (0.0, 1e-8), (2.0, 0.1)])
def test_kkt_and_constraint_after_projection(margin, eps):
    for seed in range(5):
        grad, mem = violated_case(5, 300, seed=seed, dtype=torch.float64, correlated=seed % 2 == 1)
        A, c = dual_problem(grad, mem, eps)
        v = gem_dual_solve_ref(A, c, margin)
        assert kkt_residual(A, c, margin, v) < 1e-9
        x = gem_project(grad, mem, margin, eps)
        # Stationarity A v + c >= 0 is (G x)_i + eps v_i >= 0: with eps -> 0, G x >= 0.
        Gx = mem.double() @ x.double()
        scale = float(mem.double().norm(dim=1).max() * x.double().norm())
        assert bool((Gx + eps * v >= -1e-9 * scale).all())
        if eps <= 1e-8:
            assert bool((Gx >= -1e-6 * scale).all())


# ----------------------------------------------------------------------------- compiled vs ref fp32
@needs_compiled
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("P", [1, 7, 1000, 100003])
def test_compiled_matches_ref_fp32(t, P):
    grad, mem = violated_case(t, P, seed=3 * t + P)
    out = gem_project(grad, mem)
    ref = gem_project_ref(grad, mem)
    assert out.dtype == torch.float32 and out.shape == grad.shape
    assert rel_err(out, ref) < 1e-6
    if P == 1000:
        x_qp, _ = quadprog_original(grad, mem)
        assert rel_err(out, x_qp) < 1e-6


@needs_compiled
@pytest.mark.parametrize("t", [1, 3, 5, 6, 7, 9])
def test_check_finds_the_one_violated_memory(t):
    """The fp32 check walks the memories in groups: whichever single memory conflicts with g
    (first, last, in a partial group) is found, and with none conflicting g is returned as is."""
    P = 65536 + 1029  # two deterministic blocks, a partial sub-block and a tail
    gen = torch.Generator().manual_seed(11 + t)
    g = torch.rand(P, generator=gen) + 0.1
    base = torch.rand(t, P, generator=gen)  # every dot positive
    assert torch.equal(gem_project(g, base), g)
    for j in range(t):
        mem = base.clone()
        mem[j] = -mem[j]
        out = gem_project(g, mem)
        assert not torch.equal(out, g), j
        assert rel_err(out, gem_project_ref(g, mem)) < 1e-6, j


@needs_compiled
def test_compiled_large_t():
    grad, mem = violated_case(37, 513, seed=1)
    assert rel_err(gem_project(grad, mem), gem_project_ref(grad, mem)) < 1e-6
    grad, mem = violated_case(MAX_MEMORIES, 129, seed=2, dtype=torch.float64)
    assert rel_err(gem_project(grad, mem), gem_project_ref(grad, mem)) < 1e-9


@needs_compiled
def test_compiled_deterministic_across_threads():
    grad, mem = violated_case(4, 300001, seed=5)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = gem_project(grad, mem)
        torch.set_num_threads(max(2, n))
        b = gem_project(grad, mem)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision(impl, dtype, tol):
    grad, mem = violated_case(4, 1001, seed=11, dtype=dtype)
    out = run(impl, grad, mem)
    assert out.dtype == dtype
    x_qp, _ = quadprog_original(grad, mem)  # fp64 math on the same (rounded) inputs
    assert rel_err(out, x_qp) < tol


# ------------------------------------------------------------------------------------ unchanged
@pytest.mark.parametrize("impl", IMPLS)
def test_unchanged_when_not_violated(impl):
    gen = torch.Generator().manual_seed(0)
    mem = torch.rand(4, 1000, generator=gen)
    grad = torch.rand(1000, generator=gen)  # all dots positive
    grad_before = grad.clone()
    out = run(impl, grad, mem)
    assert torch.equal(out, grad) and out.data_ptr() != grad.data_ptr()
    assert torch.equal(grad, grad_before)


@pytest.mark.parametrize("impl", IMPLS)
def test_inputs_not_modified_and_edges(impl):
    grad, mem = violated_case(3, 50, seed=2)
    g0, m0 = grad.clone(), mem.clone()
    run(impl, grad, mem)
    assert torch.equal(grad, g0) and torch.equal(mem, m0)
    # t = 0 and P = 0: nothing to project.
    assert torch.equal(run(impl, grad, mem[:0]), grad)
    assert run(impl, grad[:0], mem[:, :0]).shape == (0,)
    # Non-contiguous memories (a column slice of a [P, T] gradient matrix, as the original).
    cols = torch.cat([mem.T, torch.randn(50, 2)], dim=1)
    assert rel_err(run(impl, grad, cols[:, :3].T), run(impl, grad, mem)) < 1e-6


@pytest.mark.parametrize("use_kernels", [False, pytest.param(True, marks=needs_compiled)])
def test_out_and_in_place(use_kernels, raises_safely):
    grad, mem = violated_case(4, 1003, seed=21)
    expected = gem_project_ref(grad, mem)
    buf = torch.empty_like(grad)
    res = gem_project(grad, mem, out=buf, use_kernels=use_kernels)
    assert res is buf and rel_err(buf, expected) < 1e-6
    g = grad.clone()
    res = gem_project(g, mem, out=g, use_kernels=use_kernels)  # in place, as the original
    assert res is g and rel_err(g, expected) < 1e-6
    ok_mem, ok_grad = mem.abs(), grad.abs()
    g = ok_grad.clone()
    gem_project(g, ok_mem, out=g, use_kernels=use_kernels)
    assert torch.equal(g, ok_grad)
    big = torch.zeros(2 * 1003)
    big[:1003] = grad
    raises_safely(RuntimeError, "overlap",
                  lambda: gem_project(big[:1003], mem, out=big[1:1004], use_kernels=use_kernels))
    raises_safely(RuntimeError, "overlap", lambda: gem_project(mem[0], mem, out=mem[1], use_kernels=use_kernels))
    for bad_out, msg in ((torch.empty(5), "shape"), (torch.empty(1003, dtype=torch.float64), "dtype"),
                         (torch.empty(2006)[::2], "contiguous")):
        raises_safely(RuntimeError, msg, lambda: gem_project(grad, mem, out=bad_out, use_kernels=use_kernels))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite(impl, raises_safely):
    grad, mem = violated_case(3, 40, seed=4)
    bad = mem.clone()
    bad[1, 5] = float("nan")
    raises_safely(RuntimeError, "non-finite", lambda: run(impl, grad, bad))
    bad[1, 5] = float("inf")
    raises_safely(RuntimeError, "non-finite", lambda: run(impl, grad, bad))
    g = grad.clone()
    g[3] = float("inf")
    out = run(impl, g, mem)  # projection undefined: returned unchanged
    assert torch.equal(out, g)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_memory_is_reported_when_nothing_else_is_violated(impl, raises_safely):
    """The cheap G g check (no Gram) must still catch non-finite memories, and must return g
    exactly when every constraint holds."""
    torch.manual_seed(5)
    grad = torch.rand(1003) + 0.1
    mem = torch.rand(3, 1003)  # every <m_i, g> > 0: nothing violated
    assert torch.equal(run(impl, grad, mem), grad)
    mem[2, 1000] = float("nan")  # in the tail past the last full vector
    raises_safely(RuntimeError, "non-finite", lambda: run(impl, grad, mem))


@pytest.mark.parametrize("use_kernels", [False, pytest.param(True, marks=needs_compiled)])
def test_bad_inputs(use_kernels, raises_safely):
    g = torch.randn(10)
    m = torch.randn(3, 10)
    cases = [
        ((g[None], m), "1-D"),
        ((g, m[0]), "2-D"),
        ((g, torch.randn(3, 11)), "must equal"),
        ((g, m.double()), "same dtype"),
        ((g.int(), m.int()), "float32"),
        ((g, torch.randn(MAX_MEMORIES + 1, 10)), "at most"),
    ]
    for args, msg in cases:
        raises_safely(RuntimeError, msg, lambda: gem_project(*args, use_kernels=use_kernels))
    raises_safely(RuntimeError, "eps", lambda: gem_project(g, m, 0.5, -1.0, use_kernels=use_kernels))
    raises_safely(RuntimeError, "margin", lambda: gem_project(g, m, float("nan"), use_kernels=use_kernels))
    if torch.cuda.is_available():
        raises_safely(RuntimeError, "same device", lambda: gem_project(g, m.cuda(), use_kernels=use_kernels),
                      uses_cuda=True)
    else:
        raises_safely(RuntimeError, "same device", lambda: gem_project(g, m.to("meta"), use_kernels=use_kernels))


@needs_compiled
def test_compiled_op_checks_directly(raises_safely):
    op = torch.ops.l2kd.gem_project
    raises_safely(RuntimeError, "gem_project: memory_grads.size", lambda: op(torch.randn(5), torch.randn(2, 6), 0.5, 1e-3))
    raises_safely(RuntimeError, "at most 64", lambda: op(torch.randn(5), torch.randn(65, 5), 0.5, 1e-3))
@pytest.mark.parametrize("impl", IMPLS)
def test_rank_deficient_zero_eps(impl):
    """eps = 0 on repeated memories: quadprog refuses; we either raise a clear error or return a minimiser."""
    gen = torch.Generator().manual_seed(3)
    row = torch.randn(20, generator=gen, dtype=torch.float64)
    mem = torch.stack([row, row, 2 * row])  # rank 1
    grad = torch.randn(20, generator=gen, dtype=torch.float64)
    grad = grad - row * ((row @ grad) / (row @ row) + 1.0)  # row . grad = -|row|^2 < 0
    try:
        x = run(impl, grad, mem, 0.0, 0.0)
    except RuntimeError as exc:
        assert "positive definite" in str(exc)
    else:
        assert bool((mem @ x >= -1e-9 * float(row.norm() * x.norm())).all())
    x = run(impl, grad, mem, 0.5, 1e-3)  # eps > 0 is always fine
    assert rel_err(x, quadprog_original(grad, mem)[0]) < 1e-6


# ------------------------------------------------------------------------------ library plumbing
@needs_compiled
def test_opcheck_cpu():
    for seed, viol in ((0, True), (1, False)):
        grad, mem = violated_case(3, 33, seed=seed)
        if not viol:
            mem, grad = mem.abs(), grad.abs()
        torch.library.opcheck(torch.ops.l2kd.gem_project.default, (grad, mem, 0.5, 1e-3))
        torch.library.opcheck(torch.ops.l2kd.gem_project.out, (grad, mem, 0.5, 1e-3), {"out": torch.empty_like(grad)},
                              test_utils=("test_schema", "test_faketensor"))


@needs_compiled
def test_torch_compile_fullgraph():
    grad, mem = violated_case(4, 257, seed=9)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(g, m):
        return gem_project(g * 2.0, m, 0.5, 1e-3) + 1.0

    assert rel_err(f(grad, mem), gem_project_ref(grad * 2.0, mem) + 1.0) < 1e-6


# --------------------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("t,P", [(1, 1), (4, 7), (8, 100003), (37, 1000)])
def test_cuda_matches_cpu(dtype, tol, t, P):
    grad, mem = violated_case(t, P, seed=t + P, dtype=dtype)
    out = gem_project(grad.cuda(), mem.cuda())
    assert out.device.type == "cuda" and out.dtype == dtype
    assert rel_err(out.cpu(), gem_project_ref(grad, mem)) < tol


@needs_cuda
def test_cuda_unchanged_and_errors():
    mem = torch.rand(3, 1000, device="cuda")
    grad = torch.rand(1000, device="cuda")
    assert torch.equal(gem_project(grad, mem), grad)
    mem[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        gem_project(grad, mem)


@needs_cuda
@needs_compiled
def test_opcheck_cuda():
    grad, mem = violated_case(3, 33, seed=0)
    torch.library.opcheck(torch.ops.l2kd.gem_project.default, (grad.cuda(), mem.cuda(), 0.5, 1e-3))


# --------------------------------------------------------------------------------------------
# The fp32 no-conflict check: rounding-bounded, with an exact fp64 re-check near 0


def _cancelling_case(P=3 * 65536 + 37, y=-1.0, lane_col=16):
    """g = 1 and memory 0 = x, y, -x in one AVX lane (columns c, c+8, c+16), zero elsewhere:
    the exact dot is y, but an fp32 accumulation gives (x + y) - x = 0 for x = 1e8. Memory 1 is
    clearly positive. A naive fp32 check would call y = -1 "not violated"."""
    g = torch.ones(P)
    mem = torch.zeros(2, P)
    c = lane_col
    mem[0, c], mem[0, c + 8], mem[0, c + 16] = 1e8, y, -1e8
    mem[1] = torch.rand(P, generator=torch.Generator().manual_seed(1))
    assert float(mem[0].double() @ g.double()) == y
    return g, mem


@needs_compiled
@pytest.mark.parametrize("y", [-1.0, 1.0, 0.0])
def test_check_near_zero_dot_is_exact(y):
    g, mem = _cancelling_case(y=y)
    out = gem_project(g, mem)
    ref = gem_project_ref(g, mem)
    if y < 0:  # violated in exact arithmetic: projected, as the reference
        assert not torch.equal(out, g)
        assert rel_err(out, ref) < 1e-6
        assert float(mem[0].double() @ out.double()) >= -1e-3
    else:  # exactly 0 or positive: nothing violated, g unchanged
        assert torch.equal(out, g) and torch.equal(ref, g)


@needs_compiled
def test_check_decisions_same_for_1_and_2_threads_and_match_ref():
    """Dots spread around 0 (some within the fp32 bound): the kernel's decision (projected or
    not) matches the fp64 reference's and is bit-identical for 1 and 2 threads."""
    P, t = 2 * 65536 + 1001, 4
    gen = torch.Generator().manual_seed(7)
    n = torch.get_num_threads()
    decisions = []
    try:
        for case in range(12):
            mem = torch.randn(t, P, generator=gen)
            g = torch.randn(P, generator=gen)
            # shift g along memory 0 so that m0 . g is a tiny multiple (+-) of the dot's rounding scale
            m0, gd = mem[0].double(), g.double()
            target = (case - 6) * 1e-4 * float(m0.abs() @ gd.abs()) * 2**-24
            g = (gd - m0 * ((m0 @ gd - target) / (m0 @ m0))).float()
            mem[1:] = mem[1:].abs()
            g_pos = g.abs() if case % 3 == 0 else g  # some cases with every other memory positive
            exact_violated = bool(((mem.double() @ g_pos.double()) < 0).any())
            torch.set_num_threads(1)
            a = gem_project(g_pos, mem)
            torch.set_num_threads(max(2, n))
            b = gem_project(g_pos, mem)
            assert torch.equal(a, b), case
            assert (not torch.equal(a, g_pos)) == exact_violated, case
            assert rel_err(a, gem_project_ref(g_pos, mem)) < 1e-6, case
            decisions.append(exact_violated)
    finally:
        torch.set_num_threads(n)
    assert any(decisions) and not all(decisions)  # both outcomes exercised
