"""``--dynamic_epochs`` as the original: every task trains ``min(max_n_epochs, max_size *
n_train_epochs // size)`` epochs, where ``max_size`` is the largest training set of the sequence."""
from __future__ import annotations

import dataclasses

import pytest

from l2kd.config import TrainConfig
from l2kd.loop import sequence
from l2kd.loop.task import n_epochs_for


def original_epochs(sizes, n_train_epochs, max_n_epochs):
    """Transcription of the original's settings: data sizes per task -> epochs per task."""
    max_total = max(sizes.values()) * n_train_epochs
    return {t: min(max_n_epochs, max_total // s) for t, s in sizes.items()}


@pytest.mark.parametrize("sizes, n, cap", [({"a": 1500, "b": 300}, 2, 9), ({"a": 100, "b": 1000, "c": 450}, 3, 9),
                                           ({"a": 10, "b": 1000}, 1, 4)])
def test_epochs_match_the_original(tmp_path, sizes, n, cap):
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=str(tmp_path), model_dir_root=str(tmp_path),
                      dynamic_epochs=True, n_train_epochs=n, max_n_epochs=cap)
    want = original_epochs(sizes, n, cap)
    assert {t: n_epochs_for(cfg, s, max(sizes.values())) for t, s in sizes.items()} == want
    plain = TrainConfig(tasks=("rnnlg.rest",), data_dir=str(tmp_path), model_dir_root=str(tmp_path), n_train_epochs=n)
    assert all(n_epochs_for(plain, s, max(sizes.values())) == n for s in sizes.values())


def test_the_loop_passes_the_largest_task_of_the_sequence(tmp_path, data_dir, monkeypatch):
    cfg = TrainConfig(tasks=("woz.en", "rnnlg.rest"), data_dir=data_dir, model_dir_root=str(tmp_path),
                      model_name="tiny-gpt2", seq_train_type="finetune", dynamic_epochs=True, quiet=True)
    seen = []

    def fake_train_task(model, tok, ctx, strategy, precision, max_size, identity):
        seen.append((ctx.tasks[0], len(ctx.train_examples), max_size))
        return {}

    monkeypatch.setattr(sequence, "train_task", fake_train_task)
    sequence.train_sequence(cfg)
    assert seen == [("woz.en", 300, 1500), ("rnnlg.rest", 1500, 1500)]  # woz then trains 1500 * 9 // 300 -> 9


@pytest.mark.parametrize("kind", ["multitask", "multilm"])
def test_joint_types_ignore_dynamic_epochs_as_the_original(tmp_path, kind):
    """The original sets ``n_train_epochs = {joined tasks: n}`` for multitask / multilm before
    it looks at ``--dynamic_epochs``: the joint stage trains ``n`` epochs whatever the sizes."""
    from l2kd.loop.checks import config_warnings

    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.hotel"), data_dir=str(tmp_path), model_dir_root=str(tmp_path),
                      seq_train_type=kind, dynamic_epochs=True, n_train_epochs=9, max_n_epochs=9)
    assert n_epochs_for(cfg, 6000, 3000) == 9  # the joint stage is the largest: dynamic would give 4
    assert n_epochs_for(dataclasses.replace(cfg, seq_train_type="lll"), 300, 3000) == 9
    assert n_epochs_for(dataclasses.replace(cfg, seq_train_type="lll", n_train_epochs=2), 1000, 3000) == 6
    assert any("--dynamic_epochs has no effect" in w and kind in w for w in config_warnings(cfg))
