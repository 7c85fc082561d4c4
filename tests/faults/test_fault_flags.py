"""Contradictory flags are not accepted silently: an impossible one is refused (naming the flag
and the file), one that only does less than it suggests is a warning when the run starts."""
from __future__ import annotations

import os

from faults_helpers import argv, run_dir, train
from l2kd.config import TrainConfig
from l2kd.loop.checks import config_warnings

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "custom_strategy.py")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=".", model_dir_root=".", **kw)


def test_skip_tasks_without_a_finished_model_is_refused(tmp_path, data_dir, capsys):
    root = tmp_path / "runs"
    code, err = train(argv(data_dir, root, "--skip_tasks", "rnnlg.rest"), capsys)
    want = os.path.join(run_dir(root), "rnnlg.rest", "model-finish")
    assert code == 1
    assert f"l2kd.train: error: --skip_tasks: nothing to load for a skipped task: {want} missing" in err
    assert not os.path.exists(os.path.join(run_dir(root), "rnnlg.tv"))  # stopped before training


def test_replay_share_without_replay_warns():
    (line,) = config_warnings(_cfg(seq_train_type="finetune", gen_lm_sample_percentage=0.5))
    assert "--gen_lm_sample_percentage 0.5 has no effect with --seq_train_type finetune" in line
    assert config_warnings(_cfg(seq_train_type="lll", gen_lm_sample_percentage=0.5)) == []
    assert config_warnings(_cfg(seq_train_type="gem", gen_lm_sample_percentage=0.5)) == []  # GEM's memory size
    assert config_warnings(_cfg(seq_train_type="finetune")) == []


def test_real_sample_with_word_kd_warns():
    (line,) = config_warnings(_cfg(seq_train_type="lll", real_sample=True, distil=True))
    assert line.startswith("--real_sample with --distil") and "only the current task is distilled" in line


def test_custom_strategy_replacing_seq_train_type_warns_in_the_log(tmp_path, data_dir, capsys):
    root = tmp_path / "runs"
    # --skip_tasks with nothing to skip stops the run right after the start-up warnings
    code, err = train(argv(data_dir, root, "--custom_strategy", f"{EXAMPLE}:L2Pull", "--skip_tasks", "rnnlg.rest",
                           kind="gem"), capsys)
    assert code == 1
    log = open(os.path.join(str(root), "tiny-gpt2", "l2_pull", "rnnlg.rest_rnnlg.tv_seed_5", "log_train.txt")).read()
    assert f"WARNING --custom_strategy {EXAMPLE}:L2Pull replaces --seq_train_type gem: the run trains 'l2_pull'" \
           in log
