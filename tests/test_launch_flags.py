"""The original's ``--n_gpus`` (l2kd launches its own data-parallel ranks), and the flags that
change nothing here and say so (``--lr_schedule``, ``--n_workers``); ``--unbound`` is tested in
test_unbound.py."""
from __future__ import annotations

import logging

import pytest

from l2kd import launch
from l2kd.cli import test as cli_test
from l2kd.cli import train as cli_train
from l2kd.settings import flag_notes, parse_args


def _base(tmp_path, *extra):
    return ["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path), *extra]


def test_lr_schedule_and_n_workers_say_they_change_nothing(tmp_path):
    assert flag_notes(parse_args(_base(tmp_path))) == []
    notes = flag_notes(parse_args(_base(tmp_path, "--lr_schedule", "warmup_cosine", "--n_workers", "8")))
    assert [lvl for lvl, _ in notes] == [logging.WARNING, logging.INFO]
    assert "never reads" in notes[0][1] and "--decay_style" in notes[0][1] and "results" in notes[1][1]


# ----------------------------------------------------------------------------- --n_gpus
@pytest.fixture()
def no_launcher_env(monkeypatch):
    for k in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(k, raising=False)


def test_n_gpus_launches_that_many_ranks_with_the_same_argv(tmp_path, monkeypatch, no_launcher_env):
    seen = []
    monkeypatch.setattr(launch, "gpu_count", lambda: 4)
    monkeypatch.setattr(launch, "run_launcher", lambda cmd: seen.append(cmd) or 3)
    argv = _base(tmp_path, "--n_gpus", "2", "--tasks", "sst")
    assert cli_train.main(argv) == 3  # the ranks' exit status
    (cmd,) = seen
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "l2kd.train", *argv]


def test_n_gpus_uses_the_gpus_there_are(monkeypatch, no_launcher_env):
    seen = []
    monkeypatch.setattr(launch, "gpu_count", lambda: 3)
    monkeypatch.setattr(launch, "run_launcher", lambda cmd: seen.append(cmd) or 0)
    assert launch.launch_if_needed(8, "l2kd.train", ["--x"]) == 0 and "--nproc_per_node=3" in seen[0]
    monkeypatch.setattr(launch, "gpu_count", lambda: 1)
    assert launch.launch_if_needed(8, "l2kd.train", ["--x"]) is None  # one GPU: this process trains


def test_a_rank_does_not_launch_again(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(launch, "run_launcher", lambda cmd: pytest.fail("launched from inside a rank"))
    assert launch.launch_if_needed(2, "l2kd.train", []) is None


def test_n_gpus_without_gpus_says_how_to_run_cpu_ranks(tmp_path, monkeypatch, capsys, no_launcher_env):
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    monkeypatch.setattr(launch, "run_launcher", lambda cmd: pytest.fail("launched without GPUs"))
    assert cli_train.main(_base(tmp_path, "--n_gpus", "2", "--tasks", "sst")) == 1
    err = capsys.readouterr().err
    assert "--n_gpus 2: no CUDA device" in err and "torchrun --nproc_per_node 2 -m l2kd.train" in err



def test_test_cli_accepts_n_gpus(tmp_path, monkeypatch, capsys, caplog, no_launcher_env):
    monkeypatch.setattr(launch, "run_launcher", lambda cmd: pytest.fail("the test command launched ranks"))
    with caplog.at_level(logging.WARNING, logger="l2kd"):
        assert cli_test.main(_base(tmp_path, "--n_gpus", "2", "--tasks", "sst", "--quiet")) == 1  # nothing trained
    assert "--n_gpus 2: l2kd.test evaluates on one device" in caplog.text
    assert "train first" in capsys.readouterr().err
