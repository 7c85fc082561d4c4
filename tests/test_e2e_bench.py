"""The e2e benchmark's step split, patching, import profile and precision row (behaviour, no
timings), and a dry run of its instrumented training run and dispatch count on CPU."""
from __future__ import annotations

import argparse
import types

import pytest
import torch

from tests.test_phases_threads import FakeClock, _phases


class FakeEvent:
    """A CUDA event stand-in: records the fake clock; elapsed_time in ms."""

    def __init__(self, clock):
        self.clock, self.t = clock, None

    def record(self):
        self.t = self.clock()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def _step(split, clock, batch=1.0, fwd=2.0, bwd=3.0, opt=4.0, backward=True):
    with split.step():
        clock.t += batch
        with split.loss():
            clock.t += fwd / 2
            with split.loss():  # a wrapper strategy's base loss: no marks of its own
                clock.t += fwd / 2
        if backward:
            clock.t += bwd
            split.mark("backward_end", last=True)
        clock.t += opt


def test_step_split_sections_and_skipped_steps():
    mod = _phases()
    clock = FakeClock()
    split = mod.StepSplit(clock=clock)
    _step(split, clock)
    _step(split, clock, backward=False)  # a skipped non-finite step: left out
    _step(split, clock, batch=3.0)
    with split.log_call():
        clock.t += 0.5
    split.mark("backward_end")  # outside a step: ignored
    rep = split.report()
    assert rep["batch"]["steps"] == 2 and rep["batch"]["host_ms_per_step"] == pytest.approx(2000.0)
    assert rep["forward"]["host_ms_per_step"] == pytest.approx(2000.0)
    assert rep["backward"]["host_ms_per_step"] == pytest.approx(3000.0)
    assert rep["optimizer"]["host_ms_per_step"] == pytest.approx(4000.0)
    assert rep["logging"]["host_ms"] == pytest.approx(500.0) and "device_ms" not in rep["logging"]


def test_step_split_device_time_from_events(monkeypatch):
    mod = _phases()
    host, dev = FakeClock(), FakeClock()
    monkeypatch.setattr(mod, "_cuda_sync", lambda: None)
    split = mod.StepSplit(cuda=True, clock=host, event=lambda: FakeEvent(dev))
    with split.step():
        dev.t += 0.25  # the device runs behind the host: only events see its time
        with split.loss():
            dev.t += 1.0
        split.mark("backward_end", last=True)
    rep = split.report()
    assert rep["forward"]["device_ms_per_step"] == pytest.approx(1000.0)
    assert rep["batch"]["device_ms_per_step"] == pytest.approx(250.0)
    assert rep["forward"]["host_ms_per_step"] == 0.0


def test_patched_skips_a_missing_attribute_and_restores():
    mod = _phases()
    owner = types.SimpleNamespace(f=lambda x: x + 1)
    original = owner.f
    seen = []
    with mod.patched(owner, "f", mod.after(lambda: seen.append("after"))) as found:
        assert found and owner.f(1) == 2 and seen == ["after"]
    assert owner.f is original
    with mod.patched(owner, "gone", mod.after(lambda: None)) as found:
        assert not found and not hasattr(owner, "gone")


def test_import_profile_sums_self_time_by_package(load_benchmark):
    e2e = load_benchmark("e2e")
    trace = ("import time: self [us] | cumulative | imported package\n"
             "import time:      1000 |       1000 |   torch._C\n"
             "import time:      2000 |       3000 | torch\n"
             "import time:       500 |       3500 |     transformers.utils\n"
             "import time:       250 |        250 | l2kd.threads\n"
             "something else\n")
    assert e2e._import_profile(trace) == {"torch": 0.003, "transformers": 0.0005, "l2kd": 0.00025}


def test_precision_ratio_pairs_runs(load_benchmark):
    e2e = load_benchmark("e2e")
    run = lambda p, step, wall: {"run": "lll", "kernels": True, "precision": p, "wall_s": wall,  # noqa: E731
                                 "phases": {"train_step": {"seconds": step}}}
    rows = e2e.precision_ratio([run("default", 2.0, 10.0), run("fp32", 3.0, 12.0)])
    assert rows == [{"run": "precision", "strategy": "lll", "kernels": True, "train_step_fp32_over_default": 1.5,
                     "wall_fp32_over_default": 1.2}]
    assert e2e.precision_ratio([run("default", 2.0, 10.0)]) == []


def _args(tmp_path, **kw):
    base = dict(tasks=["rnnlg.rest"], train=16, test=2, epochs=1, device="cpu", model_dir=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.slow
def test_dry_run_instruments_every_phase_and_the_step(load_benchmark, tmp_path):
    """The CPU code path of the benchmark end to end, on a model folder (``--model DIR``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    e2e = load_benchmark("e2e")
    torch.manual_seed(0)  # GPT-2's vocabulary: a bare folder takes the bundled tokenizer
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=1, n_head=2, n_embd=32, n_positions=256)
                    ).save_pretrained(tmp_path / "model")
    r = e2e.run_one("lll", True, _args(tmp_path, model_dir=str(tmp_path / "model")))
    assert "not_instrumented" not in r
    assert r["phases"]["train_step"]["calls"] == 2 and r["phases"]["model_load"]["calls"] == 2
    split = r["step_split"]
    assert split["forward"]["steps"] == 2 and split["forward"]["host_ms"] > 0 and split["backward"]["host_ms"] > 0
    assert split["logging"]["steps"] >= 1
    assert r["written_mb_per_epoch"] > 0
    d = e2e.dispatch_counts(_args(tmp_path), 2)
    assert d["found_step"] and d["steps"] == 2 and d["ops_per_step"] > 100 and d["host_reads_per_step"] >= 1
    assert torch.get_num_threads() >= 1
