"""``--unbound K`` as the original: every task's training questions concatenated in ``--tasks``
order, cut into ``ceil(N / ceil(N / K))`` chunks trained as the stages ``task_0, task_1, ...``,
every chunk model tested on the original tasks; the combinations the original cannot run are
refused with the flags named."""
from __future__ import annotations

import csv
import json
import os
import re

import pytest

from l2kd.config import ConfigError, SamplingConfig, TrainConfig
from l2kd.data import load_squad_file, task_file
from l2kd.data.unbound import (chunk_bounds, chunk_names, chunk_paragraphs, chunk_size, concatenated_training_data,
                               n_chunks, split_chunks)
from l2kd.layout import plan_stages, run_dir_of, task_dir
from l2kd.loop.checks import config_warnings
from l2kd.loop.task import n_epochs_for
from l2kd.run_identity import learning_config
from l2kd.settings import config_from_args, parse_args

TASKS = ("rnnlg.rest", "rnnlg.tv")


def _cfg(root, data_dir=".", **kw) -> TrainConfig:
    base = dict(tasks=TASKS, data_dir=data_dir, model_dir_root=str(root), model_name="tiny-gpt2", unbound=3)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("n, k, size, sizes", [
    (10, 3, 4, [4, 4, 2]),
    (10, 4, 3, [3, 3, 3, 1]),
    (10, 6, 2, [2, 2, 2, 2, 2]),  # fewer chunks than K: ceil(10 / 2) = 5
    (12, 5, 3, [3, 3, 3, 3]),  # ceil(12 / 3) = 4 < 5
    (7, 7, 1, [1] * 7),
    (5, 10, 1, [1] * 5),  # K > N: one question per chunk
    (9, 1, 9, [9]),
    (3001, 10, 301, [301] * 9 + [292]),
])
def test_chunk_size_and_count(n, k, size, sizes):
    assert chunk_size(n, k) == size
    assert n_chunks(n, k) == len(sizes)
    assert [b - a for a, b in chunk_bounds(n, k)] == sizes
    assert chunk_names(len(sizes))[0] == "task_0" and chunk_names(len(sizes))[-1] == f"task_{len(sizes) - 1}"


def test_no_questions_make_no_chunks_and_k_must_be_positive():
    assert n_chunks(0, 3) == 0 and chunk_bounds(0, 3) == [] and split_chunks([], 3) == []
    with pytest.raises(ValueError, match="--unbound"):
        chunk_size(10, 0)


def _original_chunks(datum, split_size):
    """The original's slicing loop, restated: slices of ceil(N / K) from the start, the last
    one taking the rest."""
    import math

    step = int(math.ceil(len(datum) / split_size))
    out = []
    for i in range(0, len(datum), step):
        out.append(datum[i:i + step] if i < len(datum) - step else datum[i:])
    return out


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 23, 100])
@pytest.mark.parametrize("k", [1, 2, 3, 7, 10, 30])
def test_chunks_are_consecutive_slices_as_the_original(n, k):
    items = list(range(n))
    chunks = split_chunks(items, k)
    assert chunks == _original_chunks(items, k)
    assert [x for c in chunks for x in c] == items  # nothing dropped, repeated or reordered


def test_training_data_is_concatenated_in_task_order(data_dir):
    pool = concatenated_training_data(data_dir, ("rnnlg.tv", "rnnlg.rest"), limit=3)
    tv = load_squad_file(task_file(data_dir, "rnnlg.tv", "train"), "rnnlg.tv")[:3]
    rest = load_squad_file(task_file(data_dir, "rnnlg.rest", "train"), "rnnlg.rest")[:3]
    assert [(e.task, e.qa_id, e.context) for e in pool] == [(e.task, e.qa_id, e.context) for e in tv + rest]
    assert len(concatenated_training_data(data_dir, TASKS)) == 1500 + 1500  # no limit: every question


def test_a_chunk_is_one_data_set_named_after_its_stage(data_dir, base_tok):
    import copy

    from l2kd.tokenizer import add_special_tokens

    tok = copy.deepcopy(base_tok)
    ids = add_special_tokens(tok, ["task_0", "task_1"], add_task_tokens=True, use_sep=False)
    pool = concatenated_training_data(data_dir, TASKS, limit=5)
    chunk = split_chunks(pool, 3)[1]  # the 5th question of rnnlg.rest, then the first 3 of rnnlg.tv
    assert [(e.task, e.qa_id) for e in chunk] == [("rnnlg.rest", pool[4].qa_id)] + [
        ("rnnlg.tv", e.qa_id) for e in pool[5:8]]
    paragraphs = chunk_paragraphs(chunk, "task_1", tok, ids, 128)
    assert [len(p) for p in paragraphs] == [1, 1, 1, 1]  # every question a paragraph of its own
    encoded = [p[0] for p in paragraphs]
    assert {e.task for e in encoded} == {"task_1"} and {e.gen_id for e in encoded} == {ids.gen["task_1"]}
    assert tok.convert_ids_to_tokens(ids.gen["task_1"]) == "__task_1__"
    assert [e.qa_id for e in encoded] == [e.qa_id for e in chunk]


# ----------------------------------------------------------------------------- stage plan
def test_stage_plan_names_and_folders(tmp_path):
    cfg = _cfg(tmp_path, seq_train_type="lll")
    assert plan_stages(cfg, 10) == [["task_0"], ["task_1"], ["task_2"]]
    assert plan_stages(_cfg(tmp_path, unbound=6), 10) == [[f"task_{i}"] for i in range(5)]
    assert plan_stages(_cfg(tmp_path, unbound=0), 10) == [["rnnlg.rest"], ["rnnlg.tv"]]  # n is not read
    assert plan_stages(_cfg(tmp_path, unbound=0, seq_train_type="multitask"), 0) == [list(TASKS)]
    rdir = run_dir_of(cfg)  # the run folder is named after the original tasks, as the original
    assert rdir == os.path.join(str(tmp_path), "tiny-gpt2", "lll", "rnnlg.rest_rnnlg.tv_0.05_42")
    assert task_dir(rdir, cfg.seq_train_type, "task_1") == os.path.join(rdir, "task_1")
    with pytest.raises(ValueError, match="no training examples"):
        plan_stages(cfg, 0)


def test_dynamic_epochs_do_not_apply_to_chunks(tmp_path):
    cfg = _cfg(tmp_path, dynamic_epochs=True, n_train_epochs=2, max_n_epochs=9)
    assert n_epochs_for(cfg, 10, 1000) == 2  # without --unbound: min(9, 1000 * 2 // 10) = 9
    assert n_epochs_for(_cfg(tmp_path, unbound=0, dynamic_epochs=True, n_train_epochs=2), 10, 1000) == 9
    assert any("--dynamic_epochs has no effect with --unbound 3" in w for w in config_warnings(cfg))
    assert not any("unbound" in w for w in config_warnings(_cfg(tmp_path)))


def test_unbound_is_part_of_the_learning_configuration(tmp_path):
    assert learning_config(_cfg(tmp_path))["unbound"] == 3
    # off, it is left out, so folders learnt before the flag was supported stay reusable
    assert "unbound" not in learning_config(_cfg(tmp_path, unbound=0))


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kw, msg", [
    (dict(seq_train_type="multitask"), "--unbound 3 with --seq_train_type multitask"),
    (dict(seq_train_type="multilm"), "--unbound 3 with --seq_train_type multilm"),
    (dict(seq_train_type="gem"), "--unbound 3 with --seq_train_type gem"),
    (dict(distil=True), "--unbound 3 with --distil"),
    (dict(seq_distil=True), "--unbound 3 with --seq_distil"),
    (dict(seq_distil=True, ref1=True), "task_<i>-ref1.json"),
    (dict(unbound=-2), "--unbound: must be >= 0"),
    (dict(skip_tasks=("rnnlg.rest",)), "--skip_tasks: rnnlg.rest not a chunk of --unbound 3"),
    (dict(skip_tasks=("task_3",)), "--skip_tasks: task_3 not a chunk"),
])
def test_refused_combinations_name_the_flags(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        _cfg(tmp_path, **kw)


@pytest.mark.parametrize("kw", [dict(seq_train_type="finetune"), dict(seq_train_type="ewc"),
                                dict(seq_train_type="mas"), dict(real_sample=True), dict(skip_tasks=("task_0",)),
                                dict(upsample_data=(2,), round_robin=True), dict(debug=True)])
def test_what_the_original_runs_is_accepted(tmp_path, kw):
    assert _cfg(tmp_path, **kw).unbound == 3


def test_command_line_accepts_unbound_and_refuses_a_combination(tmp_path, capsys):
    base = ["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path), "--tasks", *TASKS]
    assert config_from_args(parse_args(base + ["--unbound", "4"])).unbound == 4
    with pytest.raises(SystemExit):
        parse_args(base + ["--unbound", "4", "--seq_train_type", "gem"])
    assert "--unbound 4 with --seq_train_type gem" in capsys.readouterr().err


def test_skipping_a_chunk_the_run_does_not_have(tmp_path, data_dir):
    from l2kd.loop import train_sequence

    # 10 questions, K = 6: chunks of 2, so task_0 .. task_4 and no task_5
    cfg = _cfg(tmp_path, data_dir, unbound=6, max_train_examples=5, skip_tasks=("task_5",), quiet=True)
    with pytest.raises(ConfigError, match="--skip_tasks: task_5 not a stage of this run"):
        train_sequence(cfg)


def test_a_strategy_with_its_own_training_file_cannot_run_unbound(tmp_path, data_dir):
    from l2kd.loop import train_sequence
    from l2kd.strategies import Strategy

    class OwnFile(Strategy):
        name = "finetune"

        def training_data(self, ctx, task):
            return "/somewhere/else.json"

    cfg = _cfg(tmp_path, data_dir, seq_train_type="finetune", max_train_examples=5, quiet=True)
    with pytest.raises(ConfigError, match="--unbound: strategy finetune trains task_0 on /somewhere/else.json"):
        train_sequence(cfg, OwnFile())


# ----------------------------------------------------------------------------- a tiny run
ARGV = ["--model_name", "tiny-gpt2", "--seq_train_type", "lll", "--tasks", *TASKS, "--unbound", "3",
        "--add_task_tokens", "--gen_lm_sample_percentage", "1.0", "--learning_rate", "1e-3",
        "--train_batch_size", "4", "--n_train_epochs", "1", "--max_train_examples", "5", "--max_test_examples", "2",
        "--max_gen_len", "16", "--top_k_qa", "1", "--seed", "7", "--quiet"]


@pytest.fixture(scope="module")
def unbound_run(tmp_path_factory):
    """``python -m l2kd.train`` then ``python -m l2kd.test`` with ``--unbound 3`` on 2 x 5 questions:
    chunks of ceil(10 / 3) = 4, so task_0 (4 of rnnlg.rest), task_1 (1 + 3), task_2 (2 of rnnlg.tv)."""
    from l2kd.cli import test as test_cli
    from l2kd.cli import train as train_cli
    from l2kd.data import bundled_data_dir

    root = tmp_path_factory.mktemp("unbound")
    argv = ["--data_dir", bundled_data_dir(), "--model_dir_root", str(root)] + ARGV
    assert train_cli.main(argv) == 0
    assert test_cli.main(argv) == 0
    cfg = config_from_args(parse_args(argv))
    return cfg, run_dir_of(cfg)


def _record(rdir, stage):
    with open(os.path.join(rdir, stage, "l2kd_task.json")) as f:
        return json.load(f)


def test_run_trains_one_folder_per_chunk(unbound_run):
    cfg, rdir = unbound_run
    assert rdir.endswith(os.path.join("tiny-gpt2", "lll", "rnnlg.rest_rnnlg.tv_1.0_7"))
    assert sorted(d for d in os.listdir(rdir) if os.path.isdir(os.path.join(rdir, d)) and d != "tensorboard") == [
        "task_0", "task_1", "task_2"]  # no folder of the original tasks
    for stage in ("task_0", "task_1", "task_2"):
        for f in ("model-1", "model-finish", "config.json", "l2kd_task.json", "metrics.json"):
            assert os.path.isfile(os.path.join(rdir, stage, f)), (stage, f)
    chunks = [_record(rdir, s)["unbound"] for s in ("task_0", "task_1", "task_2")]
    assert [(c["start"], c["end"]) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
    assert [c["per_task"] for c in chunks] == [{"rnnlg.rest": 4}, {"rnnlg.rest": 1, "rnnlg.tv": 3}, {"rnnlg.tv": 2}]
    examples = [_record(rdir, s)["examples"] - _record(rdir, s)["replayed"] for s in ("task_0", "task_1", "task_2")]
    assert examples == [4, 4, 2]
    # a generation token per chunk (--add_task_tokens): __task_0__ .. __task_2__, none per task
    vocab = json.load(open(os.path.join(rdir, "task_2", "config.json")))["vocab_size"]
    assert vocab == 50257 + 3 + 3  # __ans__ __pad__ __unk__ + one per chunk
    with open(os.path.join(rdir, "task_2", "tokenizer.json")) as f:
        added = {t["content"] for t in json.load(f)["added_tokens"]}
    assert {"__task_0__", "__task_1__", "__task_2__"} <= added and "__rnnlg.rest__" not in added


def test_lamol_replays_pseudo_samples_of_the_earlier_chunks(unbound_run):
    _, rdir = unbound_run

    def rows(stage):
        with open(os.path.join(rdir, stage, "lm.csv")) as f:
            return [r[0] for r in list(csv.reader(f))[1:]]

    # before task_1: ceil(1.0 * 4) = 4 samples of task_0, in task_0's folder
    assert len(rows("task_0")) == 4 and all(r.startswith(" __task_0__") for r in rows("task_0"))
    # before task_2: ceil(1.0 * 2) = 2 split over two chunks, in task_1's folder
    assert sorted(r.lstrip()[:len("__task_0__")] for r in rows("task_1")) == ["__task_0__", "__task_1__"]
    assert not os.path.exists(os.path.join(rdir, "task_2", "lm.csv"))
    assert _record(rdir, "task_2")["replay"]["requested"] == 2


def test_every_chunk_model_is_tested_on_the_original_tasks(unbound_run):
    from l2kd.evaluate import format_matrix
    from l2kd.reporting import load_run

    _, rdir = unbound_run
    for stage in ("task_0", "task_1", "task_2"):
        metrics = json.load(open(os.path.join(rdir, stage, "metrics.json")))
        assert len(metrics) == 1 and set(metrics[0]) == set(TASKS)
        for task in TASKS:
            with open(os.path.join(rdir, stage, f"qa_{task}_1.csv")) as f:
                assert len(list(csv.reader(f))) == 1 + 2
    result = json.load(open(os.path.join(rdir, "accuracy_matrix.json")))
    assert result["tasks"] == list(TASKS) and result["stages"] == ["task_0", "task_1", "task_2"]
    assert len(result["matrix"]) == 3 and all(len(row) == 2 for row in result["matrix"])
    assert "backward_transfer" not in result and "forgetting" not in result  # rows are chunks, not tasks
    assert [line.split()[0] for line in format_matrix(result).splitlines()[1:4]] == ["task_0", "task_1", "task_2"]
    record = load_run(rdir)  # python -m l2kd.report reads it: more rows than tasks, labelled by chunk
    assert record.stages == ["task_0", "task_1", "task_2"] and not record.multitask
    assert record.backward_transfer is None
    from l2kd.reporting import _row_labels

    assert _row_labels(record) == ["after task_0", "after task_1", "after task_2"]


def test_the_finished_run_is_reused_not_retrained(unbound_run):
    from l2kd.loop import train_sequence

    cfg, rdir = unbound_run
    finish = {s: os.stat(os.path.join(rdir, s, "model-finish")).st_mtime_ns for s in ("task_0", "task_1", "task_2")}
    again = train_sequence(cfg)
    assert list(again["tasks"]) == ["task_0", "task_1", "task_2"]
    assert [again["tasks"][s]["seconds"] for s in finish] == [_record(rdir, s)["seconds"] for s in finish]
    assert {s: os.stat(os.path.join(rdir, s, "model-finish")).st_mtime_ns for s in finish} == finish
    with open(os.path.join(rdir, "log_train.txt")) as f:
        assert f.read().count("model-finish found in") >= 3


def test_other_chunks_in_the_same_folder_are_refused(unbound_run):
    import dataclasses

    from l2kd.loop import train_sequence
    from l2kd.run_identity import IdentityMismatch

    cfg, _ = unbound_run
    # K = 2 over the same 10 questions: task_0 / task_1 of 5 each, but the folders hold K = 3's chunks
    with pytest.raises(IdentityMismatch, match="unbound: 3 -> 2"):
        train_sequence(dataclasses.replace(cfg, unbound=2))


def test_report_groups_a_run_recorded_before_the_flag_with_unbound_off():
    from l2kd.reporting import RunRecord, compare

    def run(seed, **config):
        return RunRecord(run_dir=f"/runs/{seed}", tasks=list(TASKS), matrix=[[10.0, 0.0], [5.0, 20.0]],
                         strategy="lll", seed=seed, multitask=False,
                         config={"seq_train_type": "lll", "seed": seed, "learning_rate": 1e-3, **config})

    assert [r["n"] for r in compare([run(1), run(2, unbound=0)])] == [2]  # one method, two seeds
    rows = compare([run(1), run(2, unbound=0), run(3, unbound=3)])
    assert [r["n"] for r in rows] == [2, 1] and "unbound=3" in rows[1]["method"]
