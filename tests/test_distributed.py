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


def test_two_gloo_ranks_compute_the_same_training_as_one_process(tmp_path, data_dir):
    """Loss normalised by the global token count: 2 ranks == 1 process up to summation order."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from l2kd.tokenizer import load_base_tokenizer

    model_dir = tmp_path / "tiny-nodrop"  # dropout off: the ranks' masks would differ from one process's
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=2, n_head=2, n_embd=64, n_positions=256, resid_pdrop=0.0,
                               embd_pdrop=0.0, attn_pdrop=0.0)).save_pretrained(model_dir)
    load_base_tokenizer("tiny-gpt2").save_pretrained(model_dir)
    args = ["--data_dir", data_dir, "--model_name", str(model_dir), "--seq_train_type", "lll",
            "--tasks", "rnnlg.rest", "rnnlg.tv", "--gen_lm_sample_percentage", "0.5", "--n_train_epochs", "2",
            "--train_batch_size", "8", "--max_train_examples", "16", "--max_gen_len", "16", "--learning_rate",
            "1e-3", "--quiet", "--device", "cpu", "--seed", "7"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for n in (2, 1):
        root = tmp_path / f"n{n}"
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []
        r = subprocess.run([sys.executable, *launch, "-m", "l2kd.train", "--model_dir_root", str(root)] + args,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = root / "tiny-nodrop" / "lll" / "rnnlg.rest_rnnlg.tv_0.5_7"
    for task in ("rnnlg.rest", "rnnlg.tv"):
        a = torch.load(runs[1] / task / "model-finish", weights_only=True)
        b = torch.load(runs[2] / task / "model-finish", weights_only=True)
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, (task, worst)
    assert (runs[1] / "rnnlg.rest" / "lm.csv").read_text() == (runs[2] / "rnnlg.rest" / "lm.csv").read_text()
    one = json.load(open(runs[1] / "l2kd_run.json"))["tasks"]
    two = json.load(open(runs[2] / "l2kd_run.json"))["tasks"]
    for task in one:
        assert abs(one[task]["final_loss"] - two[task]["final_loss"]) < 1e-4
