"""A run is never silent and never writes where it should not: losses are logged in small
runs, --quiet hides bars only, generation shows progress, result files are readable by others,
a resumed task does not re-log its replay record, Seq-KD data stays out of the package."""
from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from faults_helpers import TASKS, argv, run_dir, train


def test_atomic_files_honour_the_umask(tmp_path):
    from l2kd.io_utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "a.json"), "{}")
        os.umask(0o077)
        atomic_write_text(str(tmp_path / "b.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600


def test_every_task_logs_its_loss_whatever_logging_steps(finished_run):
    from l2kd.loop.task import log_marks

    assert log_marks(2) == {1, 2} and log_marks(10) == {2, 5, 8, 10} and log_marks(0) == set()
    rdir = run_dir(finished_run)  # --logging_steps 1000 (the default), 2 steps per task
    recs = [json.loads(ln) for ln in open(os.path.join(rdir, "train_scalars.jsonl"))]
    for task in ("rnnlg.rest", "rnnlg.tv"):
        steps = [r["step"] for r in recs if r["task"] == task and "loss" in r]
        assert steps == [1, 2], task
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert "INFO [rnnlg.tv] step=2" in log  # --quiet: the INFO lines are still logged


def test_quiet_hides_bars_not_log_lines(monkeypatch):
    from l2kd.runtime import bar_options, setup_console_logging

    assert bar_options(True)["disable"] and not bar_options(False)["disable"]
    assert bar_options(False)["mininterval"] == 30.0  # stderr is not a terminal under pytest
    monkeypatch.setenv("RANK", "1")
    assert bar_options(False)["disable"]  # ranks other than 0 draw no bars
    setup_console_logging(False)
    (console,) = [h for h in logging.getLogger("l2kd").handlers if type(h) is logging.StreamHandler]
    assert console.level == logging.INFO


def test_test_bars_follow_the_refresh_rule(finished_run, monkeypatch):
    import l2kd.evaluate as ev
    from l2kd.settings import config_from_args, parse_args

    seen = []

    def recording_tqdm(it, **kw):
        seen.append(kw)
        return it

    monkeypatch.setattr(ev, "tqdm", recording_tqdm)
    ev.evaluate_run(config_from_args(parse_args(argv(_data(), finished_run))), quiet=False)
    assert seen and all(kw["mininterval"] == 30.0 and not kw["disable"] for kw in seen)
    assert len(seen) == len(TASKS)


def _data() -> str:
    from l2kd.data import bundled_data_dir

    return bundled_data_dir()


def test_test_all_prints_every_tested_epoch(capsys):
    from l2kd.evaluate import format_epoch_matrices

    result = {"tasks": ["a", "b"], "by_epoch": {"a": {"1": [10.0, 0.0], "2": [20.0, 0.0]},
                                                "b": {"1": [5.0, 30.0], "2": [6.0, 40.0]}}}
    text = format_epoch_matrices(result)
    assert "score of model-1 after each task" in text and "score of model-2 after each task" in text
    assert text.index("model-1") < text.index("model-2") and "40.0" in text.split("model-2")[1]


def test_generation_shows_progress(monkeypatch, tiny_model):
    import l2kd.generation as gen
    from l2kd.config import SamplingConfig

    seen = []

    class Bar:
        def __init__(self, **kw):
            seen.append(kw)

        def update(self, n):
            seen.append(n)

        def close(self):
            pass

    monkeypatch.setattr(gen, "tqdm", Bar)
    with gen.progress("pseudo-samples", quiet=False):
        gen.generate(tiny_model, [[1], [2], [3]], [2, 2, 2], 0, 5, SamplingConfig(top_k=1), batch_size=2)
    assert seen[0]["desc"] == "pseudo-samples" and seen[0]["total"] == 3 and not seen[0]["disable"]
    assert seen[1:] == [2, 1]
    seen.clear()
    gen.generate(tiny_model, [[1]], [2], 0, 5, SamplingConfig(top_k=1))
    assert seen[0]["disable"]  # outside a progress block (e.g. tests) no bar


def test_seq_kd_data_is_never_written_into_the_package(tmp_path):
    from l2kd.config import TrainConfig
    from l2kd.distillation import distil_file_path

    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=_data(), model_dir_root=str(tmp_path), seq_distil=True)
    assert distil_file_path(cfg, "rnnlg.rest", str(tmp_path / "teacher")) == str(
        tmp_path / "teacher" / "rnnlg.rest_to_squad-distil-v2.0.json")
    other = TrainConfig(tasks=("rnnlg.rest",), data_dir=str(tmp_path), model_dir_root=str(tmp_path), seq_distil=True)
    assert distil_file_path(other, "rnnlg.rest", "/t") == str(tmp_path / "rnnlg.rest_to_squad-distil-v2.0.json")


@pytest.mark.slow
def test_resumed_task_does_not_relog_its_replay_record_and_generation_is_logged(tmp_path, data_dir, capsys):
    from test_fault_state_files import _interrupted_in_task_two

    root = tmp_path / "runs"
    extra = ("--gen_lm_sample_percentage", "0.25", "--max_gen_len", "12")
    _interrupted_in_task_two(data_dir, root, kind="lll", extra=extra)
    code, err = train(argv(data_dir, root, "--checkpoint_steps", "1", *extra, kind="lll"), capsys)
    assert code == 0, err
    rdir = os.path.join(str(root), "tiny-gpt2", "lll", "rnnlg.rest_rnnlg.tv_0.25_5")
    recs = [json.loads(ln) for ln in open(os.path.join(rdir, "train_scalars.jsonl"))]
    assert [r["task"] for r in recs if r.get("event") == "replay"] == ["rnnlg.tv"]
    log = open(os.path.join(rdir, "log_train.txt")).read()
    assert "generating 4 pseudo-samples of rnnlg.rest" in log and "resuming from" in log
