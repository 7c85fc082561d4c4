"""Two gloo processes under torchrun: a tiny two-task lll run finishes with the same layout as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _files(root):
    out = set()
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.startswith(".tmp"):
                continue
            if f.startswith("events.out.tfevents."):  # TensorBoard names files by time, host and pid
                f = "events.out.tfevents.*"
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out


def test_two_process_gloo_run_matches_single_process_layout(tmp_path, data_dir):
    args = ["--data_dir", data_dir, "--model_name", "tiny-gpt2", "--seq_train_type", "lll",
            "--tasks", "rnnlg.rest", "rnnlg.tv", "--gen_lm_sample_percentage", "0.25", "--n_train_epochs", "1",
            "--train_batch_size", "8", "--max_train_examples", "16", "--max_gen_len", "12", "--learning_rate",
            "1e-3", "--max_test_examples", "4", "--top_k_qa", "1", "--quiet", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n, root in ((2, tmp_path / "two"), (1, tmp_path / "one")):
        for mod in ("l2kd.train", "l2kd.test"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", mod, "--model_dir_root", str(root)] + args
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    run = tmp_path / "two" / "tiny-gpt2" / "lll" / "rnnlg.rest_rnnlg.tv_0.25_42"
    summary = json.load(open(run / "l2kd_run.json"))
    assert summary["tasks"]["rnnlg.tv"]["replay"]["generated"] == 4
    assert len(json.load(open(run / "accuracy_matrix.json"))["matrix"]) == 2
