"""Training scalars: the JSONL file always, TensorBoard when the optional extra is installed."""
from __future__ import annotations

import json
import math

import pytest

from l2kd import scalars as scalars_mod
from l2kd.scalars import ScalarLog


def _records(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f]


def test_jsonl_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(scalars_mod, "_tensorboard_writer", lambda logdir: None)
    log = ScalarLog(str(tmp_path))
    assert not log.tensorboard
    log.write({"task": "rnnlg.rest", "step": 0, "event": "replay", "generated": 6, "parsed": 4, "dropped": 2})
    log.write({"task": "rnnlg.rest", "step": 2, "loss": 3.5, "lr": 1e-3})
    log.close()
    recs = _records(tmp_path / "train_scalars.jsonl")
    assert recs[0]["parsed"] == 4 and recs[1] == {"task": "rnnlg.rest", "step": 2, "loss": 3.5, "lr": 1e-3}
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_gets_the_same_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ScalarLog(str(tmp_path)).close()
    assert not (tmp_path / "tensorboard").exists()  # nothing logged, no event file
    log = ScalarLog(str(tmp_path))
    assert log.tensorboard
    log.write({"task": "rnnlg.tv", "step": 0, "event": "replay", "generated": 6, "parsed": 5, "dropped": 1})
    for step in (1, 2, 3):
        log.write({"task": "rnnlg.tv", "step": step, "epoch": 1, "loss": 4.0 / step, "grad_norm": float("nan"),
                   "lr": 1e-3 * step})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"rnnlg.tv/loss", "rnnlg.tv/lr", "rnnlg.tv/epoch", "rnnlg.tv/replay/parsed"} <= tags
    assert "rnnlg.tv/grad_norm" not in tags  # non-finite values stay out of TensorBoard (they are in the JSONL)
    loss = acc.Scalars("rnnlg.tv/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert all(math.isclose(e.value, 4.0 / e.step, rel_tol=1e-6) for e in loss)
    assert acc.Scalars("rnnlg.tv/replay/parsed")[0].value == 5
    assert len(_records(tmp_path / "train_scalars.jsonl")) == 4
