"""A training step that does not log never reads the device (issue: every host read is a GPU
synchronisation). Counted on CPU with DispatchCounter around the loop's step function: what is
left is one read per transformer forward, inside transformers' mask preparation (its check for
packed sequences), which l2kd does not call, and CPU-only reads inside the fused ops; main
made 8 reads per lll step."""
from __future__ import annotations

import os

import pytest
import torch

import l2kd.loop.task as task
from l2kd import TrainConfig
from l2kd.dispatch_stats import DispatchCounter
from l2kd.loop import train_sequence

pytestmark = pytest.mark.slow


def _count_forwards(model_cls, counter):
    orig = model_cls.forward

    def forward(self, *a, **k):
        counter[0] += 1
        return orig(self, *a, **k)

    return orig, forward


def _reads_per_step(monkeypatch, cfg, strategy=None):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    reads, forwards, n_fwd = [], [], [0]
    orig_step = task.step
    orig_fwd, fwd = _count_forwards(GPT2Model, n_fwd)

    def counted(run, idx):
        n_fwd[0] = 0
        with DispatchCounter() as c:
            out = orig_step(run, idx)
        reads.append(c.host_reads)
        forwards.append(n_fwd[0])
        return out

    monkeypatch.setattr(task, "step", counted)
    monkeypatch.setattr(GPT2Model, "forward", fwd)
    train_sequence(cfg, strategy)
    return reads, forwards


def _cfg(root, data_dir, **kw):
    return TrainConfig(data_dir=data_dir, model_dir_root=str(root), model_name="tiny-gpt2",
                       learning_rate=1e-3, train_batch_size=8, quiet=True,
                       **{"tasks": ("rnnlg.rest",), "seq_train_type": "lll", "n_train_epochs": 1,
                          "max_train_examples": 48, **kw})


def test_lll_step_reads_only_inside_the_transformer(tmp_path, data_dir, monkeypatch):
    reads, forwards = _reads_per_step(monkeypatch, _cfg(tmp_path, data_dir))
    assert len(reads) == 6 and set(forwards) == {2}  # QA and LM forward per step
    assert max(reads) <= 2, reads  # main: 8 (loss parts, finite check, token count, loss, grad norm)


def test_word_kd_step_reads_only_inside_the_transformer(tmp_path, data_dir, monkeypatch):
    teacher = _cfg(tmp_path / "t", data_dir)
    train_sequence(teacher)  # the student finds it through --teacher_dir
    from l2kd.layout import run_dir_of

    cfg = _cfg(tmp_path / "s", data_dir, distil=True, teacher_dir=run_dir_of(teacher))
    reads, forwards = _reads_per_step(monkeypatch, cfg)
    assert set(forwards) == {4}  # student and teacher, QA and LM
    # besides the transformer's: the fused head + KD's backward reads its upstream gradient on
    # CPU only (ops/linear_kd_loss.py; free there, skipped on a GPU), once per KD part
    assert all(r <= f + 2 for r, f in zip(reads, forwards)), (reads, forwards)


def test_non_finite_steps_are_skipped_on_the_device_and_a_diverged_run_stops(tmp_path, data_dir):
    """Two NaN steps are skipped (parameters unchanged, counted and logged at the next check);
    a run of them stops the run within HEALTH_STEPS steps."""
    from l2kd.strategies import Strategy

    class NaNAt(Strategy):
        def __init__(self, bad):
            self.bad, self.n = bad, 0

        def loss(self, ctx, model, batch, weight):
            self.n += 1
            loss, parts = super().loss(ctx, model, batch, weight)
            return (loss * float("nan") if self.n in self.bad else loss), parts

    cfg = _cfg(tmp_path / "a", data_dir, seq_train_type="finetune", n_train_epochs=2)
    summary = train_sequence(cfg, NaNAt({2, 3}))
    info = summary["tasks"]["rnnlg.rest"]
    assert info["final_loss"] is not None and torch.isfinite(torch.tensor(info["final_loss"]))
    log = open(os.path.join(summary["run_dir"], "log_train.txt")).read()
    assert "2 non-finite losses after step 0" in log and "longest run: 2 in a row" in log

    cfg = _cfg(tmp_path / "b", data_dir, seq_train_type="finetune", n_train_epochs=40, max_train_examples=8)
    with pytest.raises(FloatingPointError, match="consecutive non-finite losses"):
        train_sequence(cfg, NaNAt(set(range(3, 10**6))))


def test_a_skipped_step_hands_gem_finite_gradients(tmp_path, data_dir):
    """On CPU the gradients are per-parameter tensors that the optimizer reads as 0 on a skipped
    step; a strategy that edits them (GEM, whose projection raises on NaN) gets them zeroed."""
    from l2kd.strategies import GEM, LAMOL, Strategy, WordKD, edits_gradients

    assert edits_gradients(GEM()) and not edits_gradients(LAMOL()) and not edits_gradients(Strategy())
    assert not edits_gradients(WordKD(LAMOL()))

    seen = []

    class NaNGEM(GEM):
        def loss(self, ctx, model, batch, weight, **kw):
            loss, parts = super().loss(ctx, model, batch, weight, **kw)
            bad = ctx.index == 1 and not getattr(self, "fired", False)  # the first step after a memory exists
            self.fired = getattr(self, "fired", False) or bad
            return (loss * float("nan") if bad else loss), parts

        def after_backward(self, ctx, model):
            seen.append(all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None))
            super().after_backward(ctx, model)

    cfg = _cfg(tmp_path, data_dir, seq_train_type="gem", tasks=("rnnlg.rest", "rnnlg.tv"), max_train_examples=16)
    summary = train_sequence(cfg, NaNGEM())
    assert seen and all(seen)
    log = open(os.path.join(summary["run_dir"], "log_train.txt")).read()
    assert "[rnnlg.tv] 1 non-finite losses" in log


def test_flat_and_separate_gradients_train_the_same_bits(tmp_path, data_dir, monkeypatch):
    """The GPU's flat gradient buffer (masked on a skipped step) and CPU's separate gradients (read
    as 0 by the optimizer) give bit-identical models, skipped NaN steps included."""
    from l2kd.model import load_model_dir
    from l2kd.strategies import LAMOL

    class NaNAt(LAMOL):
        def loss(self, ctx, model, batch, weight, **kw):
            self.n = getattr(self, "n", 0) + 1
            loss, parts = super().loss(ctx, model, batch, weight, **kw)
            return (loss * float("nan") if self.n in (2, 5) else loss), parts

    models = []
    for flat in (False, True):
        monkeypatch.setattr(task, "flat_gradients", lambda device, flat=flat: flat)
        cfg = _cfg(tmp_path / str(flat), data_dir, n_train_epochs=2, max_train_examples=24, weight_decay=0.01)
        summary = train_sequence(cfg, NaNAt())
        log = open(os.path.join(summary["run_dir"], "log_train.txt")).read()
        assert "non-finite losses" in log
        models.append(load_model_dir(os.path.join(summary["run_dir"], "rnnlg.rest")))
    a, b = (dict(m.named_parameters()) for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
