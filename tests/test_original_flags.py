"""The original flags that arrange the training data, debug a run or pick a test file
(``--upsample_data``, ``--round_robin``, ``--multitask_specific``, ``--debug``, ``--extra_e2e``):
each does what the original does with it (docs/original.md section 9)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from l2kd.batching import train_batches
from l2kd.config import ConfigError, SamplingConfig, TrainConfig
from l2kd.data.loading import load_task_examples, load_task_paragraphs
from l2kd.data.multitask import arrange_stage, round_robin, shuffles_batches, task_specific_gen
from l2kd.data.qa_format import Encoded
from l2kd.data.squad import QAExample, write_squad_file
from l2kd.evaluate import eval_file, evaluate_run
from l2kd.loop import train_sequence
from l2kd.run_identity import learning_config
from l2kd.settings import config_from_args, parse_args


def _para(task: str, i: int, n: int = 1):
    return [Encoded(cq=[i], answer=[k], gen_id=7, task=task, qa_id=f"{task}-{i}-{k}") for k in range(n)]


def _tasks():
    return [[_para("a", i) for i in range(3)], [_para("b", i, n=2) for i in range(2)]]


# ----------------------------------------------------------------------------- arrangement
def test_upsample_repeats_each_task_list_in_task_order():
    out = arrange_stage(_tasks(), np.random.default_rng(0), rates=(2, 1))
    assert [(e.task, e.cq[0]) for e in out] == [("a", 0), ("a", 1), ("a", 2)] * 2 + [("b", 0)] * 2 + [("b", 1)] * 2


def test_upsample_rate_count_must_match_the_tasks():
    with pytest.raises(ValueError, match="--upsample_data"):
        arrange_stage(_tasks(), np.random.default_rng(0), rates=(1, 2, 3))


def test_round_robin_interleaves_shuffled_tasks_and_keeps_paragraphs_whole():
    per_task = [[_para("a", i) for i in range(4)], [_para("b", i, n=2) for i in range(2)]]
    paras = round_robin(per_task, np.random.default_rng(3))
    assert [p[0].task for p in paras] == ["a", "b", "a", "b", "a", "a"]  # b runs out after two turns
    assert sorted(p[0].cq[0] for p in paras if p[0].task == "a") == [0, 1, 2, 3]
    assert all(len(p) == 2 and p[0].cq == p[1].cq for p in paras if p[0].task == "b")
    # the seeded shuffle changes the order within a task, not its content
    orders = {tuple(p[0].cq[0] for p in round_robin(per_task, np.random.default_rng(s)) if p[0].task == "a")
              for s in range(8)}
    assert len(orders) > 1


def test_debug_keeps_the_first_ten_paragraphs_of_the_stage():
    per_task = [[_para("a", i) for i in range(8)], [_para("b", i, n=2) for i in range(8)]]
    out = arrange_stage(per_task, np.random.default_rng(0), debug=True)
    assert [(e.task, e.cq[0]) for e in out] == [("a", i) for i in range(8)] + [("b", 0)] * 2 + [("b", 1)] * 2


def test_multitask_specific_offsets_the_gen_id_by_the_task_index():
    out = task_specific_gen(_tasks(), base_gen_id=100)
    assert {e.gen_id for p in out[0] for e in p} == {100} and {e.gen_id for p in out[1] for e in p} == {101}


def test_paragraphs_of_a_file_stay_grouped(tmp_path, tok_ids):
    tok, ids = tok_ids
    path = str(tmp_path / "x.json")
    qas = [[{"question": q, "answers": [{"text": a}], "id": i} for q, a, i in row]
           for row in ([("q", "a", 1), ("r", "b", 2)], [("s", "c", 3)])]
    doc = {"data": [{"paragraphs": [{"context": "c one", "qas": qas[0]}, {"context": "c two", "qas": qas[1]}]}]}
    with open(path, "w") as f:
        json.dump(doc, f)
    groups = load_task_paragraphs("", "rnnlg.rest", "train", tok, ids, 64, path=path)
    assert [[e.qa_id for e in g] for g in groups] == [["1", "2"], ["3"]]
    assert [e.qa_id for e in load_task_examples("", "rnnlg.rest", "train", tok, ids, 64, path=path, paragraphs=1)] == [
        "1", "2"]


@pytest.mark.parametrize("debug, rr, fixed, shuffles", [
    (False, False, True, True), (False, True, True, False), (False, True, False, True), (True, False, False, False),
    (True, False, True, False),
])
def test_which_runs_shuffle_their_batches(debug, rr, fixed, shuffles):
    assert shuffles_batches(debug, rr, fixed) is shuffles


def test_unshuffled_batches_follow_the_data_order():
    data = [Encoded(cq=[1] * (i % 3 + 1), answer=[2], gen_id=3, task="a") for i in range(10)]
    rng = np.random.default_rng(0)
    assert train_batches(data, rng, 4, 1e9, 100, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [i for b in train_batches(data, rng, 0, 1e9, 3, shuffle=False) for i in b] == list(range(10))
    assert train_batches(data, rng, 4, 1e9, 100) != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ----------------------------------------------------------------------------- flags and config
def _base(tmp_path, *extra):
    return ["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path), *extra]


def test_flags_map_into_the_config(tmp_path):
    args = parse_args(_base(tmp_path, "--seq_train_type", "multitask", "--tasks", "e2enlg", "rnnlg.rest",
                            "--upsample_data", "1_3", "--round_robin", "--multitask_specific", "--extra_e2e"))
    cfg = config_from_args(args)
    assert (cfg.upsample_data, cfg.round_robin, cfg.multitask_specific, cfg.extra_e2e) == ((1, 3), True, True, True)
    assert "extra_e2e" not in learning_config(cfg)  # a test-time choice
    assert learning_config(cfg)["upsample_data"] == [1, 3] and learning_config(cfg)["round_robin"] is True


def test_debug_logs_every_step_and_is_part_of_the_identity(tmp_path):
    cfg = config_from_args(parse_args(_base(tmp_path, "--debug", "--logging_steps", "50")))
    assert cfg.debug and cfg.logging_steps == 1 and learning_config(cfg)["debug"] is True


@pytest.mark.parametrize("extra, msg", [
    (["--upsample_data", "1_x"], "--upsample_data: expected integers"),
    (["--seq_train_type", "multitask", "--tasks", "sst", "srl", "--upsample_data", "1_2_3"],
     "--upsample_data: 3 rate(s) given, multitask needs one rate per task"),
    (["--tasks", "sst", "srl", "--upsample_data", "1_2"], "--upsample_data: 2 rate(s) given, lll needs one rate"),
    (["--seq_train_type", "multitask", "--tasks", "sst", "srl", "--upsample_data", "0_2"], "must be >= 1"),
    (["--multitask_specific"], "--multitask_specific only applies"),
])
def test_refused_with_the_flag_named(tmp_path, capsys, extra, msg):
    with pytest.raises(SystemExit):
        parse_args(_base(tmp_path, *extra))
    assert msg in capsys.readouterr().err


def test_multitask_specific_task_limit():
    tasks = ("e2enlg", "rnnlg.rest", "rnnlg.tv", "rnnlg.hotel", "rnnlg.laptop", "sst")
    with pytest.raises(ConfigError, match="--multitask_specific: at most 5 tasks"):
        TrainConfig(tasks=tasks, data_dir=".", model_dir_root=".", seq_train_type="multitask", multitask_specific=True)


# ----------------------------------------------------------------------------- tiny runs
def _cfg(root, data_dir, **kw):
    base = dict(tasks=("e2enlg", "rnnlg.rest"), data_dir=data_dir, model_dir_root=str(root), model_name="tiny-gpt2",
                seq_train_type="multitask", learning_rate=1e-3, train_batch_size=8, n_train_epochs=1,
                max_train_examples=16, max_test_examples=4, qa_sampling=SamplingConfig(top_k=1), quiet=True, seed=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data_with_extra(tmp_path_factory):
    from l2kd.data import bundled_data_dir

    d = tmp_path_factory.mktemp("data")
    for f in os.listdir(bundled_data_dir()):
        if f.endswith(".json"):
            shutil.copy(os.path.join(bundled_data_dir(), f), d / f)
    extra = [QAExample("name [x] food [y]", "what is it?", [f"the answer {i}"], str(i)) for i in range(3)]
    write_squad_file(str(d / "e2enlg_to_squad-extra-v2.0.json"), extra)
    return str(d)


def test_multitask_specific_round_robin_upsampled_run_and_extra_e2e_test(tmp_path, data_with_extra):
    import torch

    cfg = _cfg(tmp_path, data_with_extra, multitask_specific=True, round_robin=True, upsample_data=(1, 2),
               extra_e2e=True)
    summary = train_sequence(cfg)
    rdir = summary["run_dir"]
    assert summary["tasks"]["e2enlg+rnnlg.rest"]["examples"] == 16 + 2 * 16
    vocab = json.load(open(os.path.join(rdir, "config.json")))["vocab_size"]
    state = torch.load(os.path.join(rdir, "model-finish"), weights_only=True)
    assert state["transformer.wte.weight"].shape[0] == vocab == 50257 + 4 + 4  # ans pad unk gen + 4 rows
    result = evaluate_run(cfg)
    with open(os.path.join(rdir, "qa_e2enlg_1.csv")) as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 3 and all("the answer" in r for r in rows)  # the extra file, not the 4 test examples
    assert result["test_settings"]["extra_e2e"] is True
    # the same flags but the gold test file
    evaluate_run(_cfg(tmp_path, data_with_extra, multitask_specific=True, round_robin=True, upsample_data=(1, 2)))
    with open(os.path.join(rdir, "qa_e2enlg_1.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 4


def test_extra_e2e_missing_file_is_a_clear_error(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, extra_e2e=True)
    assert eval_file(cfg, "rnnlg.rest") is None
    with pytest.raises(FileNotFoundError, match="--extra_e2e: .*e2enlg_to_squad-extra-v2.0.json not found"):
        eval_file(cfg, "e2enlg")


def test_debug_run_ten_examples_one_pseudo_sample_per_task(tmp_path, data_dir, capsys):
    cfg = _cfg(tmp_path, data_dir, seq_train_type="lll", tasks=("rnnlg.rest", "rnnlg.tv", "rnnlg.hotel"),
               max_train_examples=0, max_test_examples=0, debug=True, logging_steps=1, max_gen_len=12,
               gen_lm_sample_percentage=0.2)
    summary = train_sequence(cfg)
    tasks = summary["tasks"]
    assert [tasks[t]["examples"] - tasks[t]["replayed"] for t in cfg.tasks] == [10, 10, 10]
    assert [tasks[t]["replay"]["requested"] for t in ("rnnlg.tv", "rnnlg.hotel")] == [1, 2]
    evaluate_run(cfg)
    with open(os.path.join(summary["run_dir"], "rnnlg.tv", "qa_rnnlg.hotel_1.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 10
