"""l2kd.optim: the original's AdamW rule (pytorch-transformers 1.2.0), its groups and resume."""
from __future__ import annotations

import io
import math
from typing import Dict, List

import pytest
import torch

from l2kd.config import TrainConfig
from l2kd.model import tiny_gpt2_config
from l2kd.optim import CPU_SLICE, OriginalAdamW, make_optimizer, parameter_groups


class ForeachAdamW(OriginalAdamW):
    """The GPU code path (one foreach call per op over a group), run on CPU tensors."""

    _update_sliced = OriginalAdamW._update


def reference_step(params: List[torch.Tensor], grads: List[torch.Tensor], state: List[Dict], lr: float,
                   betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                   correct_bias: bool = True) -> None:
    """The 1.2.0 update written out per tensor (``grads[i] is None``: parameter skipped)."""
    b1, b2 = betas
    for p, g, st in zip(params, grads, state):
        if g is None:
            continue
        if not st:
            st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        st["step"] += 1
        st["m"].mul_(b1).add_(g, alpha=1.0 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = st["v"].sqrt().add_(eps)
        step_size = lr
        if correct_bias:
            step_size = lr * math.sqrt(1.0 - b2 ** st["step"]) / (1.0 - b1 ** st["step"])
        p.addcdiv_(st["m"], denom, value=-step_size)
        if weight_decay > 0.0:
            p.add_(p, alpha=-lr * weight_decay)


def _tensors(seed: int, big: bool = False) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (13,), (3, 4, 2), (1,)]
    if big:  # several CPU slices, the last one partial; and a non-contiguous parameter
        shapes[0] = (CPU_SLICE * 2 + 777,)
    out = [torch.randn(shape, generator=g) for shape in shapes]
    if big:
        out[2] = torch.randn(4, 6, generator=g).t()
    return out


@pytest.mark.parametrize("impl", [OriginalAdamW, ForeachAdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("correct_bias", [True, False])
def test_matches_the_per_tensor_original_bit_for_bit(weight_decay: float, correct_bias: bool, impl) -> None:
    big = impl is OriginalAdamW and weight_decay == 0.01
    ours = [t.clone() for t in _tensors(0, big)]
    ref = [t.clone() for t in _tensors(0, big)]
    eps = 1e-4
    opt = impl([{"params": ours[:2], "weight_decay": weight_decay},
                {"params": ours[2:], "weight_decay": 0.0}], lr=1e-2, eps=eps, correct_bias=correct_bias)
    state: List[Dict] = [{} for _ in ref]
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        lr = 1e-2 * (1.0 - step / 10)  # the schedule rewrites the group lr before each step
        for g in opt.param_groups:
            g["lr"] = lr
        grads = [torch.randn(t.shape, generator=gen) for t in ours]
        if step in (2, 5):  # a parameter without gradient keeps its state and step count
            grads[1] = None
        for p, g in zip(ours, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        reference_step(ref[:2], grads[:2], state[:2], lr, eps=eps, weight_decay=weight_decay,
                       correct_bias=correct_bias)
        reference_step(ref[2:], grads[2:], state[2:], lr, eps=eps, weight_decay=0.0, correct_bias=correct_bias)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), f"step {step}: max diff {(a - b).abs().max().item()}"
    assert opt.state[ours[1]]["step"] == 6 and opt.state[ours[0]]["step"] == 8


def test_reference_is_the_documented_formula() -> None:
    """The transcription itself, against the closed form in float64 (one tensor, three steps)."""
    p0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    gs = [torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64) * (k + 1) for k in range(3)]
    lr, eps, wd, (b1, b2) = 0.1, 1e-4, 0.01, (0.9, 0.999)
    p, st = [p0.clone()], [{}]
    expect = p0.clone()
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate(gs, start=1):
        reference_step(p, [g], st, lr, eps=eps, weight_decay=wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expect = expect - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        expect = expect - lr * wd * expect
    torch.testing.assert_close(p[0], expect, rtol=1e-12, atol=1e-14)


def _model(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(vocab_size=97)
    cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions = 1, 16, 2, 32
    return GPT2LMHeadModel(cfg).eval()  # no dropout: runs compare bit for bit


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(tasks=("rnnlg.tv",), data_dir=".", model_dir_root=".", learning_rate=1e-3, **kw)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for k in steps:
        g = torch.Generator().manual_seed(100 + k)
        x = torch.randint(0, 97, (2, 9), generator=g)
        opt.zero_grad(set_to_none=True)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()


def test_make_optimizer_defaults_to_the_original_rule() -> None:
    """Default: the original's update on the original's groups (LayerNorm weights decayed)."""
    cfg = _cfg()
    model, ref_model = _model(), _model()
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, OriginalAdamW)
    assert opt.defaults["eps"] == cfg.adam_epsilon == 1e-4
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "transformer.h.0.ln_1.weight" in names and not any("bias" in n for n in names)
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0

    groups = parameter_groups(ref_model, cfg)
    state = [[{} for _ in g["params"]] for g in groups]
    _train(model, opt, range(3))
    for k in range(3):  # the same training, updated by the transcription
        g = torch.Generator().manual_seed(100 + k)
        x = torch.randint(0, 97, (2, 9), generator=g)
        ref_model.zero_grad(set_to_none=True)
        ref_model(input_ids=x, labels=x).loss.backward()
        with torch.no_grad():
            for grp, st in zip(groups, state):
                reference_step(grp["params"], [p.grad for p in grp["params"]], st, cfg.learning_rate,
                               eps=cfg.adam_epsilon, weight_decay=grp["weight_decay"])
    for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(a, b), n


def test_textbook_groups_and_torch_adamw_option() -> None:
    model = _model()
    opt = make_optimizer(model, _cfg(no_decay_layernorm=True, torch_adamw=True))
    assert isinstance(opt, torch.optim.AdamW) and not isinstance(opt, OriginalAdamW)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert not any(id(p) in decayed for n, p in model.named_parameters() if "ln_" in n)


def test_the_two_rules_really_differ_early_in_a_task() -> None:
    """With eps 1e-4 the first steps differ by far more than rounding (why the default matters)."""
    a, b = _model(), _model()
    _train(a, make_optimizer(a, _cfg()), range(2))
    _train(b, make_optimizer(b, _cfg(torch_adamw=True)), range(2))
    w0 = _model().transformer.wte.weight
    da = a.transformer.wte.weight - w0
    db = b.transformer.wte.weight - w0
    assert (da - db).abs().max() > 0.1 * db.abs().max()


def test_state_dict_round_trip_continues_bit_identically() -> None:
    """Resume (torch.save of optimizer.state_dict(), as the task checkpoints) == never stopped."""
    cfg = _cfg()
    straight = _model()
    opt = make_optimizer(straight, cfg)
    _train(straight, opt, range(6))

    first = _model()
    opt1 = make_optimizer(first, cfg)
    _train(first, opt1, range(3))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    assert ck["optimizer"]["state"][0]["step"] == 3

    resumed = _model(seed=7)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ck["model"])
    opt2 = make_optimizer(resumed, cfg)
    opt2.load_state_dict(ck["optimizer"])
    _train(resumed, opt2, range(3, 6))
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    sa, sb = opt.state_dict(), opt2.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k, st in sa["state"].items():
        assert st["step"] == sb["state"][k]["step"]
        assert torch.equal(st["exp_avg"], sb["state"][k]["exp_avg"])
        assert torch.equal(st["exp_avg_sq"], sb["state"][k]["exp_avg_sq"])


def test_rejects_bad_hyperparameters() -> None:
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="learning rate"):
        OriginalAdamW(p, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        OriginalAdamW(p, betas=(1.0, 0.999))


@pytest.mark.parametrize("impl", [OriginalAdamW, ForeachAdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_keep_flag_is_bit_identical_or_leaves_everything(weight_decay: float, impl) -> None:
    """``step(keep=1.0)`` is the plain step bit for bit; ``step(keep=0.0)`` (a non-finite step
    skipped on the device, its gradients zeroed) changes no parameter and no moment."""
    torch.manual_seed(0)
    params = [torch.randn(300, 7), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    oa = impl(a, lr=1e-3, eps=1e-4, weight_decay=weight_decay)
    ob = impl(b, lr=1e-3, eps=1e-4, weight_decay=weight_decay)
    for gs in grads:
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        ob.step(keep=torch.tensor(1.0))
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    before = [q.detach().clone() for q in b] + [ob.state[q][k].clone() for q in b for k in ("exp_avg", "exp_avg_sq")]
    for q in b:
        q.grad = torch.zeros_like(q)
    ob.step(keep=torch.tensor(0.0), grads_finite=True)
    after = [q.detach() for q in b] + [ob.state[q][k] for q in b for k in ("exp_avg", "exp_avg_sq")]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    # gradients a skipped step did not zero (NaN, inf) are read as 0: still nothing changes
    for q in b:
        q.grad = torch.full_like(q, float("nan"))
    b[0].grad[0, 0] = float("inf")
    ob.step(keep=torch.tensor(0.0))
    after = [q.detach() for q in b] + [ob.state[q][k] for q in b for k in ("exp_avg", "exp_avg_sq")]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
