"""Damaged and crafted state files of a run folder: a truncated file is set aside (named, kept)
and its task trained again, a finished task is never silently replaced, and a file that would
run code when loaded is refused without running it."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from faults_helpers import argv, clone, finished_models, run_dir, train
from l2kd.checkpoint import UnreadableStateFile, UnsafeStateFile, load_state_file, save_state_file
from l2kd.data.qa_format import Encoded
from l2kd.layout import CHECKPOINT, MODEL_FINISH, RNG_STATE, STRATEGY_STATE, TASK_RECORD


class _RunsCode:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _craft(path: str, marker: str) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)


def _truncate(path: str) -> bytes:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return data[: len(data) // 2]


def _state(path: str) -> dict:
    return torch.load(path, weights_only=True)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", [CHECKPOINT, STRATEGY_STATE, RNG_STATE])
def test_crafted_pickle_is_refused_and_not_run(tmp_path, name):
    path, marker = str(tmp_path / name), str(tmp_path / "marker")
    _craft(path, marker)
    with pytest.raises(UnsafeStateFile) as e:
        load_state_file(path)
    assert str(e.value).startswith(f"{path}: refused") and "Nothing of it was executed" in str(e.value)
    assert not os.path.exists(marker)


def test_state_with_examples_and_numpy_round_trips_with_weights_only(tmp_path):
    import random

    import numpy as np

    ex = Encoded(cq=[1, 2, 50257], answer=[3], gen_id=50260, task="rnnlg.rest", golds=["x"], is_pseudo=True)
    rng = np.random.default_rng(3)
    state = {"extra": [ex], "memories": {"rnnlg.rest": [ex, ex]}, "numpy": np.random.get_state(),
             "python": random.getstate(), "loop_rng": rng.bit_generator.state, "plan": [[[0, 1], [2]]],
             "mean": np.float64(0.5), "t": torch.arange(3)}
    save_state_file(str(tmp_path / "s.pt"), state)
    back = load_state_file(str(tmp_path / "s.pt"))
    assert back["extra"] == [ex] and back["memories"]["rnnlg.rest"] == [ex, ex] and back["plan"] == [[[0, 1], [2]]]
    np.random.set_state(back["numpy"])  # accepted by numpy as is
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][1].dtype == np.uint32
    random.setstate(back["python"])
    assert back["loop_rng"] == state["loop_rng"] and back["mean"] == 0.5 and torch.equal(back["t"], state["t"])


def test_truncated_file_is_reported_as_such(tmp_path):
    path = str(tmp_path / CHECKPOINT)
    save_state_file(path, {"a": torch.ones(100)})
    _truncate(path)
    with pytest.raises(UnreadableStateFile, match=f"{path}: truncated or corrupt"):
        load_state_file(path)


@pytest.mark.slow
def test_truncated_model_finish_is_set_aside_and_its_task_retrained(finished_run, tmp_path, data_dir, capsys):
    root = clone(finished_run, tmp_path / "run")
    rdir = run_dir(root)
    before = finished_models(rdir)
    path = os.path.join(rdir, "rnnlg.tv", MODEL_FINISH)
    cut = _truncate(path)
    code, err = train(argv(data_dir, root), capsys)
    assert code == 0, err
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert f"{path}: truncated or corrupt" in log and "Finished task rnnlg.tv cannot be restored" in log
    assert "WARNING" in log.split(f"{path}: truncated or corrupt")[0].splitlines()[-1]
    (damaged,) = glob.glob(os.path.join(rdir, "rnnlg.tv", "damaged-*"))
    assert open(os.path.join(damaged, MODEL_FINISH), "rb").read() == cut  # kept, not deleted
    assert os.path.isfile(os.path.join(damaged, TASK_RECORD))
    after = finished_models(rdir)
    assert after["rnnlg.rest"] == before["rnnlg.rest"]  # the intact finished task is untouched
    # retrained to the very same weights (CPU, same seed): nothing was silently changed
    assert _same_tensors(_state(path), torch.load(os.path.join(run_dir(finished_run), "rnnlg.tv", MODEL_FINISH),
                                                  weights_only=True))


def _interrupted_in_task_two(data_dir, root, kind="finetune", extra=()):
    """Train until the second step of task 2 (checkpoint.pt written after step 1), then fail."""
    from l2kd.loop import train_sequence
    from l2kd.settings import config_from_args, parse_args
    from l2kd.strategies import make_strategy

    cfg = config_from_args(parse_args(argv(data_dir, root, "--checkpoint_steps", "1", *extra, kind=kind)))
    strategy = make_strategy(cfg)
    calls = {"n": 0}
    loss = strategy.loss

    def failing_loss(ctx, model, batch, weight):
        if ctx.index == 1:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("injected failure in task 2")
        return loss(ctx, model, batch, weight)

    strategy.loss = failing_loss
    with pytest.raises(RuntimeError, match="injected failure"):
        train_sequence(cfg, strategy)


@pytest.mark.slow
def test_truncated_checkpoint_restarts_its_task(finished_run, tmp_path, data_dir, capsys):
    root = tmp_path / "run"
    _interrupted_in_task_two(data_dir, root)
    rdir = run_dir(root)
    ck = os.path.join(rdir, "rnnlg.tv", CHECKPOINT)
    assert os.path.isfile(ck)
    before = finished_models(rdir)
    cut = _truncate(ck)
    code, err = train(argv(data_dir, root), capsys)
    assert code == 0, err
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert f"{ck}: truncated or corrupt" in log and "the task restarts from its beginning" in log
    (damaged,) = glob.glob(os.path.join(rdir, "rnnlg.tv", "damaged-*"))
    assert open(os.path.join(damaged, CHECKPOINT), "rb").read() == cut
    assert finished_models(rdir)["rnnlg.rest"] == before["rnnlg.rest"]
    want = torch.load(os.path.join(run_dir(finished_run), "rnnlg.tv", MODEL_FINISH), weights_only=True)
    assert _same_tensors(_state(os.path.join(rdir, "rnnlg.tv", MODEL_FINISH)), want)  # as an uninterrupted run
    assert not os.path.exists(ck)


@pytest.mark.slow
@pytest.mark.parametrize("name", [CHECKPOINT, STRATEGY_STATE, RNG_STATE])
def test_crafted_state_file_in_a_run_folder_stops_the_run(finished_run, tmp_path, data_dir, capsys, name):
    root = clone(finished_run, tmp_path / "run")
    rdir = run_dir(root)
    marker = str(tmp_path / "marker")
    if name == CHECKPOINT:  # an unfinished second task with a crafted resume state
        for f in (MODEL_FINISH, TASK_RECORD):
            os.remove(os.path.join(rdir, "rnnlg.tv", f))
        target = os.path.join(rdir, "rnnlg.tv", name)
    else:  # the finished first task's saved state
        target = os.path.join(rdir, "rnnlg.rest", name)
    _craft(target, marker)
    before = finished_models(rdir)
    code, err = train(argv(data_dir, root), capsys)
    assert code == 1
    assert f"l2kd.train: error: {target}: refused" in err and err.count(f"{target}: refused") == 1
    assert "Traceback" not in err
    assert f"fatal: {target}: refused" in open(os.path.join(rdir, "log_train.txt")).read()
    assert not os.path.exists(marker)
    assert finished_models(rdir) == before and os.path.isfile(target)  # nothing retrained or removed
