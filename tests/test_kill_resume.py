"""SIGKILL a tiny 3-task run at several points, restart it with the same command: the final
models and metrics equal an uninterrupted run's, and no finished task is redone or lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow
TASKS = ["rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"]


def _argv(data_dir, root):
    return ["--data_dir", data_dir, "--model_dir_root", str(root), "--model_name", "tiny-gpt2", "--tasks", *TASKS,
            "--seq_train_type", "lll", "--gen_lm_sample_percentage", "0.25", "--n_train_epochs", "2",
            "--train_batch_size", "4", "--max_train_examples", "16", "--max_gen_len", "12", "--learning_rate", "1e-3",
            "--max_test_examples", "4", "--top_k_qa", "1", "--checkpoint_steps", "1", "--quiet", "--seed", "5"]


def _run(mod, argv, kill_after=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", mod, *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        return True
    try:
        p.wait(timeout=kill_after)
        return True  # finished before the kill
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return False


def _final(root):
    run = os.path.join(root, "tiny-gpt2", "lll", "_".join(TASKS) + "_0.25_5")
    states = {t: torch.load(os.path.join(run, t, "model-finish"), weights_only=True) for t in TASKS}
    metrics = {t: json.load(open(os.path.join(run, t, "metrics.json"))) for t in TASKS}
    return states, metrics


def test_sigkill_anywhere_then_resume_is_identical(tmp_path, data_dir):
    ref = tmp_path / "ref"
    _run("l2kd.train", _argv(data_dir, ref))
    _run("l2kd.test", _argv(data_dir, ref))
    want_states, want_metrics = _final(ref)

    root = tmp_path / "killed"
    kills = 0
    for delay in (9.0, 4.0, 5.0, 6.0, 7.0):  # several kills at different points of one run
        if _run("l2kd.train", _argv(data_dir, root), kill_after=delay):
            break
        kills += 1
    _run("l2kd.train", _argv(data_dir, root))  # finish
    _run("l2kd.test", _argv(data_dir, root))
    got_states, got_metrics = _final(root)
    assert kills >= 1
    for t in TASKS:
        assert all(torch.equal(want_states[t][k], got_states[t][k]) for k in want_states[t]), t
    assert got_metrics == want_metrics
    run = os.path.join(root, "tiny-gpt2", "lll", "_".join(TASKS) + "_0.25_5")
    assert not any(f.startswith(".tmp") for d, _, fs in os.walk(run) for f in fs)
    assert not any(os.path.exists(os.path.join(run, t, "checkpoint.pt")) for t in TASKS)
