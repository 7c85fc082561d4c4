"""A tiny two-task LAMOL run on the bundled data: output layout, replay, metrics, CLI."""
from __future__ import annotations

import csv
import json
import math
import os

import pytest

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.evaluate import evaluate_run
from l2kd.loop import train_sequence

pytestmark = pytest.mark.slow


def _cfg(root, data_dir, **kw):
    base = dict(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=data_dir, model_dir_root=str(root),
                model_name="tiny-gpt2", seq_train_type="lll", gen_lm_sample_percentage=0.25, learning_rate=1e-3,
                train_batch_size=8, n_train_epochs=2, max_train_examples=24, max_test_examples=6, max_gen_len=24,
                qa_sampling=SamplingConfig(top_k=1), quiet=True, logging_steps=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_lll_two_tasks_layout_and_metrics(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir)
    summary = train_sequence(cfg)
    rdir = os.path.join(tmp_path, "tiny-gpt2", "lll", "rnnlg.rest_rnnlg.tv_0.25_3")
    assert summary["run_dir"] == rdir
    for t in cfg.tasks:
        td = os.path.join(rdir, t)
        for f in ("model-1", "model-2", "model-finish", "config.json", "l2kd_task.json"):
            assert os.path.isfile(os.path.join(td, f)), (t, f)
    # pseudo-samples of task 1 were generated before task 2 and written in task 1's folder
    with open(os.path.join(rdir, "rnnlg.rest", "lm.csv")) as f:
        rows = list(csv.reader(f))
    # decoded as the original writes it: pytorch-transformers 1.2.0 puts a space before added tokens
    assert rows[0] == ["gen"] and len(rows) - 1 == 6 and all(r[0].startswith(" __gen__") for r in rows[1:])
    replay = summary["tasks"]["rnnlg.tv"]["replay"]
    assert replay["generated"] == 6 and replay["parsed"] + replay["dropped"] == 6
    assert summary["tasks"]["rnnlg.tv"]["replayed"] == replay["parsed"]
    assert os.path.isfile(os.path.join(rdir, "log_train.txt"))
    scal = [json.loads(ln) for ln in open(os.path.join(rdir, "train_scalars.jsonl"))]
    steps = [r for r in scal if "event" not in r]
    assert steps and all("lm_loss" in r and r["tokens_per_s"] > 0 and r["grad_norm"] >= 0 for r in steps)
    assert all(math.isfinite(v) for r in steps for v in r.values() if isinstance(v, float))
    assert {r["task"] for r in steps} == set(cfg.tasks)
    try:  # the optional TensorBoard extra (installed with the test extra) mirrors the same scalars
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        EventAccumulator = None
    if EventAccumulator is not None:
        acc = EventAccumulator(os.path.join(rdir, "tensorboard"))
        acc.Reload()
        assert {f"{t}/loss" for t in cfg.tasks} | {"rnnlg.tv/replay/generated"} <= set(acc.Tags()["scalars"])
    replay_rec = [r for r in scal if r.get("event") == "replay"]
    assert len(replay_rec) == 1 and replay_rec[0]["generated"] == 6

    result = evaluate_run(cfg, quiet=True)
    assert len(result["matrix"]) == 2 and all(len(r) == 2 for r in result["matrix"])
    assert all(0.0 <= v <= 100.0 for r in result["matrix"] for v in r)
    for t in cfg.tasks:
        m = json.load(open(os.path.join(rdir, t, "metrics.json")))
        assert isinstance(m, list) and len(m) == 1 and set(m[0]) == set(cfg.tasks)
        assert {"em", "nf1", "nem", "avg_rouge"} <= set(m[0]["rnnlg.tv"])
        with open(os.path.join(rdir, t, "qa_rnnlg.rest_2.csv")) as f:
            assert len(list(csv.reader(f))) == 1 + 6
    assert "backward_transfer" in result and os.path.isfile(os.path.join(rdir, "accuracy_matrix.json"))

    # a second run with the same flags reuses the finished tasks and lm.csv (no retraining)
    again = train_sequence(cfg)
    assert again["tasks"]["rnnlg.tv"]["seconds"] == summary["tasks"]["rnnlg.tv"]["seconds"]


def test_cli_original_command_line(tmp_path, data_dir):
    from l2kd import test as test_cli
    from l2kd import train as train_cli

    argv = ["--data_dir", data_dir, "--model_dir_root", str(tmp_path), "--model_name", "tiny-gpt2",
            "--seq_train_type", "finetune", "--tasks", "rnnlg.hotel", "--n_train_epochs", "1",
            "--train_batch_size", "8", "--max_train_examples", "16", "--max_test_examples", "4", "--top_k_qa", "1",
            "--quiet"]
    assert train_cli.main(argv) == 0
    assert test_cli.main(argv) == 0
    td = os.path.join(tmp_path, "tiny-gpt2", "finetune", "rnnlg.hotel_seed_42", "rnnlg.hotel")
    assert os.path.isfile(os.path.join(td, "metrics.json")) and os.path.isfile(os.path.join(td, "qa_rnnlg.hotel_1.csv"))
    assert not os.path.exists(os.path.join(td, "lm.csv"))  # finetune never replays


def test_multitask_writes_into_run_dir_and_real_sample(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, seq_train_type="multitask", n_train_epochs=1, max_train_examples=8)
    summary = train_sequence(cfg)
    rdir = os.path.join(tmp_path, "tiny-gpt2", "multitask", "rnnlg.rest_rnnlg.tv_seed_3")
    assert summary["run_dir"] == rdir and os.path.isfile(os.path.join(rdir, "model-finish"))
    assert summary["tasks"]["rnnlg.rest+rnnlg.tv"]["examples"] == 16
    res = evaluate_run(cfg, quiet=True)
    assert len(res["matrix"]) == 1 and "backward_transfer" not in res

    cfg = _cfg(tmp_path, data_dir, real_sample=True, n_train_epochs=1, max_train_examples=8)
    summary = train_sequence(cfg)
    rep = summary["tasks"]["rnnlg.tv"]["replay"]
    assert rep["source"] == "real" and rep["parsed"] == 2  # ceil(0.25 * 8) // 1 real examples replayed


def test_local_model_directory(tmp_path, data_dir, base_tok):
    """--model_name <dir>: weights and tokenizer from a local directory (as a user's GPT-2 download)."""
    from l2kd.model import load_base_model

    d = tmp_path / "my-gpt2"
    load_base_model("tiny-gpt2", 0).save_pretrained(d)
    base_tok.save_pretrained(d)
    cfg = _cfg(tmp_path / "out", data_dir, model_name=str(d), tasks=("rnnlg.rest",), n_train_epochs=1,
               max_train_examples=8)
    summary = train_sequence(cfg)
    assert summary["run_dir"] == os.path.join(tmp_path, "out", "my-gpt2", "lll", "rnnlg.rest_0.25_3")


def test_task_folder_loads_with_plain_transformers(tmp_path, data_dir):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    cfg = _cfg(tmp_path, data_dir, tasks=("rnnlg.rest",), n_train_epochs=1, max_train_examples=8)
    summary = train_sequence(cfg)
    td = os.path.join(summary["run_dir"], "rnnlg.rest")
    model = GPT2LMHeadModel.from_pretrained(td)
    tok = AutoTokenizer.from_pretrained(td)
    assert tok.convert_tokens_to_ids("__ans__") == 50257 and tok.convert_tokens_to_ids("__gen__") == 50260
    state = torch.load(os.path.join(td, "model-finish"), weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_resume_after_first_task_is_bit_identical(tmp_path, data_dir):
    """Kill after task 1 (simulated: delete task 2's folder and lm.csv), rerun: same task-2 model."""
    import shutil

    import torch

    def run(root):
        cfg = _cfg(root, data_dir, n_train_epochs=1, max_train_examples=16, max_gen_len=12)
        return train_sequence(cfg)["run_dir"]

    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    shutil.rmtree(os.path.join(b, "rnnlg.tv"))
    os.remove(os.path.join(b, "rnnlg.rest", "lm.csv"))
    run(tmp_path / "b")
    sa = torch.load(os.path.join(a, "rnnlg.tv", "model-finish"), weights_only=True)
    sb = torch.load(os.path.join(b, "rnnlg.tv", "model-finish"), weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert open(os.path.join(a, "rnnlg.rest", "lm.csv")).read() == open(os.path.join(b, "rnnlg.rest", "lm.csv")).read()


def test_nan_loss_stops_cleanly_and_keeps_finished_tasks(tmp_path, data_dir):
    from l2kd.strategies import Strategy

    class NaNOnSecondTask(Strategy):
        def loss(self, ctx, model, batch, weight):
            loss, logs = super().loss(ctx, model, batch, weight)
            return (loss * float("nan") if ctx.index == 1 else loss), logs

    cfg = _cfg(tmp_path, data_dir, seq_train_type="finetune", n_train_epochs=4, max_train_examples=16)
    with pytest.raises(FloatingPointError, match="consecutive non-finite"):
        train_sequence(cfg, NaNOnSecondTask())
    rdir = os.path.join(tmp_path, "tiny-gpt2", "finetune", "rnnlg.rest_rnnlg.tv_seed_3")
    assert os.path.isfile(os.path.join(rdir, "rnnlg.rest", "model-finish"))
    assert not os.path.exists(os.path.join(rdir, "rnnlg.tv", "model-finish"))


# A broken file of a later task: tests/faults/test_fault_preflight.py (the run stops before task 1 trains).
