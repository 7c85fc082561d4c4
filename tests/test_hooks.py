"""The strategy hooks: one signature convention, wrappers forward every hook, and the order in
which a full run calls them."""
from __future__ import annotations

import inspect
import os

import pytest

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.strategies import HOOKS, LAMOL, Strategy, Wrapper, make_strategy
from l2kd.strategies.seq_kd import SeqKD
from l2kd.strategies.word_kd import WordKD


def test_hooks_lists_every_public_method_of_strategy():
    public = {n for n, v in vars(Strategy).items() if callable(v) and not n.startswith("_")}
    assert public == set(HOOKS)


def test_every_hook_takes_the_context_first():
    for name in HOOKS:
        params = list(inspect.signature(getattr(Strategy, name)).parameters)
        if name not in ("state_dict", "load_state_dict"):
            assert params[:2] == ["self", "ctx"], (name, params)


def test_a_wrapper_forwards_every_hook_it_does_not_override():
    calls = []

    class Base(Strategy):
        name = "base"

    for hook in HOOKS:
        setattr(Base, hook, lambda self, *a, _h=hook, **k: calls.append((_h, a)) or _h)

    class Plain(Wrapper):
        suffix = "+plain"

    w = Plain(Base())
    assert w.name == "base+plain"
    for hook in HOOKS:
        assert getattr(w, hook)(1, 2) == hook
    assert [c[0] for c in calls] == list(HOOKS) and all(c[1] == (1, 2) for c in calls)


def test_make_strategy_composes_seq_kd_inside_word_kd(tmp_path):
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=str(tmp_path), model_dir_root=str(tmp_path),
                      distil=True, seq_distil=True)
    s = make_strategy(cfg)
    assert isinstance(s, WordKD) and isinstance(s.base, SeqKD) and isinstance(s.base.base, LAMOL)
    assert s.name == "lll+seq_kd+word_kd" and s.uses_lm_loss


class Recorder(Wrapper):
    """Records (hook, stage) for every hook call, then forwards it."""

    suffix = ""

    def __init__(self, base):
        super().__init__(base)
        self.events = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name in HOOKS:
            def record(*args, **kwargs):
                ctx = args[0] if args and hasattr(args[0], "tasks") else None
                self.events.append((name, "+".join(ctx.tasks) if ctx else None))
                return attr(*args, **kwargs)
            return record
        return attr


def _squash(events):
    out = []
    for e in events:
        if not out or out[-1][0] != e:
            out.append([e, 1])
        else:
            out[-1][1] += 1
    return [(h, t, n) for (h, t), n in out]


@pytest.mark.slow
def test_hook_order_of_a_full_run(tmp_path, data_dir):
    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=data_dir, model_dir_root=str(tmp_path),
                      model_name="tiny-gpt2", seq_train_type="lll", learning_rate=1e-3, train_batch_size=8,
                      n_train_epochs=1, max_train_examples=16, gen_lm_sample_percentage=0.25, max_gen_len=16,
                      qa_sampling=SamplingConfig(top_k=1), quiet=True, checkpoint_steps=0, seed=2)
    rec = Recorder(LAMOL())
    from l2kd.loop import train_sequence

    summary = train_sequence(cfg, rec)
    steps1, steps2 = (summary["tasks"][t]["steps"] for t in cfg.tasks)
    assert steps1 == 2 and steps2 == -(-(16 + summary["tasks"]["rnnlg.tv"]["replayed"]) // 8)  # batch 8
    expected = []
    for task, n in (("rnnlg.rest", steps1), ("rnnlg.tv", steps2)):
        expected += [("training_data", task, 1), ("before_task", task, 1)]
        expected += [("loss", task, 1), ("after_backward", task, 1), ("after_step", task, 1)] * n
        expected += [("state_dict", None, 1), ("after_task", task, 1), ("state_dict", None, 1)]
    got = _squash(rec.events)
    assert got == expected, got
    assert os.path.isfile(os.path.join(tmp_path, "tiny-gpt2", "lll", "rnnlg.rest_rnnlg.tv_0.25_2", "rnnlg.tv",
                                       "model-finish"))
