"""The study command: its plan (methods, orders, regulariser strengths) and a tiny run end to end."""
import argparse
import json
import os

import pytest

from l2kd.cli import study
from l2kd.diagnostics import DIAGNOSTICS
from l2kd.layout import TASK_RECORD, run_dir_of, task_dir


def _args(tmp_path, **kw) -> argparse.Namespace:
    args = study.build_parser().parse_args(["--out", str(tmp_path)])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_orders_reverse_the_sequence():
    assert study.ordered_tasks(["a", "b", "c"], "forward") == ("a", "b", "c")
    assert study.ordered_tasks(["a", "b", "c"], "reverse") == ("c", "b", "a")
    with pytest.raises(ValueError, match="sideways"):
        study.ordered_tasks(["a"], "sideways")


def test_method_configs(tmp_path):
    args = _args(tmp_path, mas_strong_reg_lambda=123.0)
    ewc, strong = study.method_config("ewc", "reverse", 2, args), study.method_config("mas_strong", "forward", 1, args)
    assert (ewc.seq_train_type, ewc.reg_lambda, ewc.seed) == ("ewc", 1.0, 2)
    assert ewc.tasks == ("rnnlg.tv", "rnnlg.hotel", "rnnlg.rest")
    assert (strong.seq_train_type, strong.reg_lambda) == ("mas", 123.0)
    assert study.method_config("ewc_strong", "forward", 1, args).reg_lambda == study.STRONG_REG_LAMBDA["ewc"]
    long = study.method_config("lll+word_kd@long_teacher", "forward", 1, args)
    assert long.distil and long.teacher_n_train_epochs == args.long_teacher_epochs != args.epochs
    # longer-trained teachers live apart from the others, which a run with other epochs must not reuse
    assert long.teacher_root == os.path.join(str(tmp_path), "forward", f"teachers-{args.long_teacher_epochs}ep")
    soft = study.method_config("lll+seq_kd_soft", "forward", 1, args)
    hard = study.method_config("lll+seq_kd", "forward", 1, args)
    assert (soft.distil, soft.seq_distil, hard.distil, hard.seq_distil) == (True, True, False, True)
    # one teacher folder per order, shared by the distilled methods; separate run roots per method
    assert soft.teacher_root == hard.teacher_root == os.path.join(str(tmp_path), "forward", "teachers")
    assert run_dir_of(soft) != run_dir_of(hard)
    assert study.method_config("gem", "forward", 1, args).gen_lm_sample_percentage == args.gem_pct
    t1, t2 = study.method_config("lll+word_kd@T1", "forward", 1, args), study.method_config("lll+word_kd", "forward", 1, args)
    assert (t1.temperature_kd, t2.temperature_kd, t1.distil) == (1.0, args.temperature_kd, True)
    assert t1.teacher_root == t2.teacher_root and run_dir_of(t1) != run_dir_of(t2)
    w = study.method_config("lll+word_kd@weighted", "forward", 1, args)
    assert (w.distil, w.distil_weighting, t2.distil_weighting) == (True, True, False)
    assert w.teacher_root == t2.teacher_root and run_dir_of(w) != run_dir_of(t2)
    q = study.method_config("lll+word_kd@qa_only", "forward", 1, args)
    assert (q.distil, q.distil_qa_only, q.distil_weighting, t2.distil_qa_only) == (True, True, False, False)
    assert q.teacher_root == t2.teacher_root and run_dir_of(q) != run_dir_of(t2)
    qw = study.method_config("lll+word_kd@qa_only_weighted", "forward", 1, args)
    assert (qw.distil, qw.distil_qa_only, qw.distil_weighting) == (True, True, True)
    assert qw.teacher_root == t2.teacher_root and len({run_dir_of(qw), run_dir_of(q), run_dir_of(w)}) == 3


def test_lm_lambda_reaches_every_run_and_keys_the_finished_cells(tmp_path):
    args = _args(tmp_path)
    assert args.lm_lambda == 0.25 and study.method_config("lll", "forward", 1, args).lm_lambda == 0.25
    args = study.build_parser().parse_args(["--out", str(tmp_path), "--lm_lambda", "1"])
    assert study.method_config("lll+word_kd", "forward", 1, args).lm_lambda == 1.0
    old = dict(study.cell_key(_args(tmp_path)))
    del old["lm_lambda"]  # recorded before the flag existed: the default
    cell = {"order": "forward", "method": "lll", "seed": 1, "key": old}
    with open(os.path.join(str(tmp_path), "study.json"), "w") as f:
        json.dump({"cells": [cell]}, f)
    assert ("forward", "lll", 1) in study.finished_cells(_args(tmp_path))
    assert study.finished_cells(args) == {}  # another LM weight: run again


def test_an_invocation_with_fewer_runs_keeps_the_others_records(tmp_path):
    """study.json is what a later invocation resumes from: writing it for a subset of methods
    keeps the runs the subset did not plan, and runs recorded under other settings stay apart."""
    args = _args(tmp_path)
    key = study.cell_key(args)
    cell = lambda m, seed, k=key: {"order": "forward", "method": m, "seed": seed, "key": dict(k),  # noqa: E731
                                   "matrix": [[1.0]], "average": 1.0, "tasks": ["rnnlg.rest"], "train_seconds": 1.0,
                                   "test_seconds": 1.0, "replay": {}, "parse_rate": None, "teacher": {}}
    stale = cell("lll", 1, {**key, "lr": 1.0})
    study.write_study(args, [cell("lll", 1), cell("finetune", 1), cell("lll", 2)], [stale])
    done, other = study.recorded_cells(args)
    assert set(done) == {("forward", "lll", 1), ("forward", "finetune", 1), ("forward", "lll", 2)}
    assert other == [stale]
    plan = [("forward", "lll+word_kd@weighted", 1)]
    new = cell("lll+word_kd@weighted", 1)
    kept = study.cells_to_write([new], done, plan)
    assert kept[0] is new and {(c["method"], c["seed"]) for c in kept} == {
        ("lll+word_kd@weighted", 1), ("lll", 1), ("finetune", 1), ("lll", 2)}
    study.write_study(args, kept, other)
    again, other2 = study.recorded_cells(args)
    assert len(again) == 4 and other2 == [stale]
    changed = _args(tmp_path, lr=1.0)  # the stale run's settings: it is reused, the others become "other"
    same, rest = study.recorded_cells(changed)
    assert list(same) == [("forward", "lll", 1)] and len(rest) == 4


def test_teacher_diagnostics_read_from_task_records(tmp_path):
    cfg = study.method_config("lll+word_kd", "forward", 1, _args(tmp_path))
    first = task_dir(run_dir_of(cfg), cfg.seq_train_type, cfg.tasks[0])
    os.makedirs(first)
    with open(os.path.join(first, TASK_RECORD), "w") as f:
        json.dump({"teacher": cfg.tasks[0], DIAGNOSTICS: {"teacher_score": 12.5}}, f)
    assert study.teacher_diagnostics(cfg) == {cfg.tasks[0]: {"teacher_score": 12.5}}


def test_wall_time_table_means_per_method():
    cells = [{"method": "lll", "order": "forward", "train_seconds": 10, "test_seconds": 2},
             {"method": "lll", "order": "forward", "train_seconds": 20, "test_seconds": 4}]
    last = study.wall_time_table(cells).splitlines()[-1].split()
    assert last == ["lll", "forward", "2", "18"]


def test_tiny_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    rc = study.main(["--out", str(out), "--methods", "finetune", "ewc_strong", "--seeds", "1", "--orders",
                     "reverse", "--tasks", "rnnlg.rest", "rnnlg.hotel", "--train", "8", "--test", "4",
                     "--epochs", "1", "--quiet", "--no-plots"])
    assert rc == 0
    summary = json.loads((out / "study.json").read_text())
    assert [(c["method"], c["order"]) for c in summary["cells"]] == [("finetune", "reverse"), ("ewc_strong", "reverse")]
    for c in summary["cells"]:
        assert len(c["matrix"]) == 2 and c["train_seconds"] > 0
    report = json.loads((out / "report.json").read_text())
    assert {r["strategy"] for r in report["runs"]} == {"finetune", "ewc"}
    assert all(r["tasks"] == ["rnnlg.hotel", "rnnlg.rest"] for r in report["runs"])
    assert os.listdir(out / "data")  # the copy Seq-KD writes its decoded files into, not the package data



# ----------------------------------------------------------------------------- probes, presets, resume

import math  # noqa: E402
import sys  # noqa: E402

from l2kd.cli import study_probes, study_summary  # noqa: E402


def test_choose_sequence_takes_the_most_forgetting_measured_chain():
    res = [{"first": a, "second": b, "forgetting": f} for a, b, f in
           [("a", "b", 5.0), ("b", "c", 1.0), ("c", "a", 9.0), ("b", "a", -2.0), ("a", "c", 3.0)]]
    # chains: a-b-c 3.0, b-c-a 5.0, c-a-b 7.0, b-a-c 0.5, c-a-c not distinct
    assert study_probes.choose_sequence(res) == (("c", "a", "b"), 7.0)
    with pytest.raises(ValueError, match="no chain of 3"):
        study_probes.choose_sequence(res[:1])


def test_epochs_for_parse_rate_reads_the_end_of_the_probed_schedule():
    """Only the model at the end of the probed schedule says what that many epochs reach: an
    earlier epoch was read before the learning rate decayed."""
    probe = {"epochs": 3, "results": [{"epoch": "1", "parse_rate": 0.0}, {"epoch": "3", "parse_rate": 0.6},
                                      {"epoch": "2", "parse_rate": 0.9}]}
    assert study_probes.epochs_for_parse_rate(probe) == 3
    assert study_probes.epochs_for_parse_rate(probe, target=0.7) is None  # epoch 2's 0.9 does not count
    probe["results"][1]["parse_rate"] = 0.1
    assert study_probes.epochs_for_parse_rate(probe) is None
    del probe["epochs"]  # an older file: the last probed epoch is the schedule's end
    assert study_probes.probed_schedule(probe) == 3
    assert study_probes.epochs_for_parse_rate({"epochs": 4, "results": probe["results"]}) is None  # end not probed


def test_auto_epochs_warns_when_the_probed_schedule_ends_below_target(tmp_path, capsys):
    probe = {"model_name": "m", "task": "rnnlg.rest", "train": 8, "lr": 1e-3, "batch": 8, "epochs": 2,
             "results": [{"epoch": "1", "parse_rate": 0.9}, {"epoch": "2", "parse_rate": 0.2}]}
    with open(os.path.join(str(tmp_path), study_probes.PARSE_FILE), "w") as f:
        json.dump(probe, f)
    args = study.parse_args(["--out", str(tmp_path), "--epochs", "auto", "--tasks", "e2enlg", "woz.en"])
    study.resolve_tasks_and_epochs(args)
    out = capsys.readouterr().out
    assert args.epochs == 2 and "WARNING" in out and "replay will be weak" in out
    assert "the probe learnt rnnlg.rest, the sequence starts with e2enlg" in out


def test_parse_pairs_rejects_malformed():
    assert study_probes.parse_pairs(["a:b"]) == [("a", "b")]
    for bad in ("ab", "a:a", ":b"):
        with pytest.raises(ValueError, match="FIRST:SECOND"):
            study_probes.parse_pairs([bad])


def test_base_preset_gives_defaults_that_flags_override(tmp_path):
    args = study.parse_args(["--base", "smollm2-135m", "--out", str(tmp_path), "--lr", "5e-4"])
    preset = study.BASE_PRESETS["smollm2-135m"]
    assert args.model_name == "smollm2-135m" and args.lr == 5e-4 and args.train == preset["train"]
    assert args.methods == preset["methods"] and args.prune_models and args.orders == ["forward"]
    assert study.parse_args(["--out", str(tmp_path)]).model_name == study.PRETRAINED
    assert args.lm_lambda == 1.0 and study.parse_args(["--out", str(tmp_path)]).lm_lambda == 0.25
    # bf16 on CPU in the preset (off with --no-bf16_cpu, and by default), reaching every run
    study.resolve_tasks_and_epochs(args)  # the preset's teacher epochs "1x" -> a number
    assert args.epochs == 6 and args.teacher_epochs == 6
    assert args.bf16_cpu and study.method_config("lll", "forward", 1, args).bf16_cpu
    assert not study.parse_args(["--base", "smollm2-135m", "--out", str(tmp_path), "--no-bf16_cpu"]).bf16_cpu
    assert not study.parse_args(["--out", str(tmp_path)]).bf16_cpu
    assert study.method_config("lll", "forward", 1, args).device == "auto"


def test_auto_epochs_and_the_parse_probe_refuse_a_probe_of_another_lm_weight(tmp_path):
    """A parse-rate probe measured at one LM weight says nothing about another: --epochs auto and
    a resumed probe refuse it instead of reusing it."""
    old = {"model_name": "m", "task": "rnnlg.rest", "train": 8, "lr": 1e-3, "batch": 8,  # no lm_lambda: 0.25
           "results": [{"epoch": "1", "parse_rate": 0.9, "steps": 1, "generated": 1, "parsed": 1}]}
    with open(os.path.join(str(tmp_path), study_probes.PARSE_FILE), "w") as f:
        json.dump(old, f)
    args = study.parse_args(["--out", str(tmp_path), "--epochs", "auto", "--lm_lambda", "1"])
    with pytest.raises(SystemExit, match="measured with --lm_lambda 0.25"):
        study.resolve_tasks_and_epochs(args)
    args = study.parse_args(["--out", str(tmp_path), "--epochs", "auto", "--bf16_cpu"])
    with pytest.raises(SystemExit, match="measured with --bf16_cpu 0"):
        study.resolve_tasks_and_epochs(args)
    args = study.parse_args(["--out", str(tmp_path), "--epochs", "auto"])
    study.resolve_tasks_and_epochs(args)
    assert args.epochs == 1
    args = study.parse_args(["--out", str(tmp_path), "--model_name", "m", "--train", "8", "--lm_lambda", "1"])
    with pytest.raises(SystemExit, match="other settings \\(lm_lambda\\)"):
        study_probes.parse_rate_probe(args, "rnnlg.rest", 1, 1)


def test_teacher_epochs_give_the_teachers_a_folder_of_their_own(tmp_path):
    args = _args(tmp_path, teacher_epochs=5)
    kd, lll = study.method_config("lll+word_kd", "forward", 1, args), study.method_config("lll", "forward", 1, args)
    assert kd.teacher_n_train_epochs == 5 and kd.teacher_root.endswith("teachers-5ep")
    assert not lll.teacher_n_train_epochs
    assert study.teacher_epochs("2x", 3) == 6 and study.teacher_epochs("5", 3) == 5
    with pytest.raises(SystemExit, match="teacher_epochs"):
        study.teacher_epochs("two", 3)


def test_summary_rows_and_verdict():
    m = [[30.0, 5.0], [20.0, 40.0]]
    cells = [{"method": "finetune", "order": "forward", "seed": s, "tasks": ["a", "b"], "matrix": m,
              "average": 30.0 + s, "backward_transfer": -10.0, "forgetting": 10.0, "parse_rate": None,
              "teacher": {}, "train_seconds": 1.0, "test_seconds": 1.0} for s in (1, 2)]
    cells.append({"method": "lll", "order": "forward", "seed": 1, "tasks": ["a", "b"], "matrix": m, "average": 35.0,
                  "parse_rate": 0.25, "teacher": {}, "train_seconds": 2.0, "test_seconds": 1.0})
    cells.append({"method": "lll+word_kd", "order": "forward", "seed": 1, "tasks": ["a", "b"], "matrix": m,
                  "average": 40.0, "parse_rate": 0.5, "train_seconds": 2.0, "test_seconds": 1.0,
                  "teacher": {"a": {"teacher_score": 33.0, "soft_targets": {"entropy_fraction": 0.5}},
                              "b": {"teacher_score": 44.0, "soft_targets": {"entropy_fraction": 0.7}}}})
    rows = study_summary.summarize(cells)
    ft = rows[0]
    assert ft["average"]["mean"] == 31.5 and ft["average"]["n"] == 2 and ft["just_learnt"]["mean"] == 35.0
    assert rows[2]["teacher_scores"] == {"a": 33.0, "b": 44.0}
    md = study_summary.markdown(rows)
    assert "| lll | 1 |" in md and "25.0%" in md and "33.0 / 44.0 | 60% |" in md
    # compared on the seed all three ran (finetune's seed 2 is left out of the comparison)
    assert "holds on seed 1: best distilled lll+word_kd 40.0, lll 35.0, finetune 31.0" in md


def test_verdict_compares_methods_on_the_seeds_they_share():
    """A variant run on fewer seeds is compared with LAMOL and finetune on its own seeds: a hard
    seed it did not run must not decide the order."""
    def cell(method, seed, avg):
        return {"method": method, "order": "forward", "seed": seed, "tasks": ["a"], "matrix": [[avg]],
                "average": avg, "teacher": {}, "train_seconds": 1.0, "test_seconds": 1.0}
    cells = [cell("lll", 1, 50.0), cell("lll", 2, 48.0), cell("lll", 3, 20.0),
             cell("finetune", 1, 35.0), cell("finetune", 2, 42.0), cell("finetune", 3, 35.0),
             cell("lll+word_kd", 1, 42.0), cell("lll+word_kd", 2, 45.0), cell("lll+word_kd", 3, 5.0),
             cell("lll+word_kd@weighted", 1, 42.5), cell("lll+word_kd@weighted", 2, 44.5)]
    v = study_summary.verdict(study_summary.summarize(cells), "forward")
    # over all their seeds the weighted variant (43.5, seeds 1-2) would beat LAMOL (39.3, seeds 1-3)
    assert "does NOT hold on seeds 1, 2: best distilled lll+word_kd@weighted 43.5, lll 49.0, finetune 38.5" in v
    assert v.endswith("per seed, it holds on none of seeds 1, 2, 3")
    cells.append(cell("lll+seq_kd_soft", 3, 30.0))  # ahead of LAMOL on seed 3, which finetune wins
    v = study_summary.verdict(study_summary.summarize(cells), "forward")
    assert "does NOT hold on seed 3: best distilled lll+seq_kd_soft 30.0, lll 20.0, finetune 35.0" in v
    cells[-1] = cell("lll+seq_kd_soft", 3, 40.0)
    cells[5] = cell("finetune", 3, 15.0)
    v = study_summary.verdict(study_summary.summarize(cells), "forward")
    assert "holds on seed 3: best distilled lll+seq_kd_soft 40.0, lll 20.0, finetune 15.0" in v
    assert v.endswith("per seed, it holds on seed 3 (lll+seq_kd_soft 40.0 > lll 20.0 > finetune 15.0)")
    assert "not enough" in study_summary.verdict(study_summary.summarize(cells[:6]), "forward")


def test_summary_stage_table_means_the_seeds_matrices_and_replay():
    def cell(method, seed, m, replay=None):
        return {"method": method, "order": "forward", "seed": seed, "tasks": ["a", "b"], "matrix": m,
                "average": 1.0, "teacher": {}, "train_seconds": 1.0, "test_seconds": 1.0, "replay": replay}
    cells = [cell("lll", 1, [[30.0, 5.0], [20.0, 40.0]], {"b": {"generated": 32, "parsed": 10}}),
             cell("lll", 2, [[40.0, 7.0], [10.0, 50.0]], {"b": {"generated": 32, "parsed": 21}}),
             cell("multitask", 1, [[60.0, 70.0]])]
    rows = study_summary.summarize(cells)
    assert rows[0]["stages"] == [[35.0, 6.0], [15.0, 45.0]]
    assert rows[0]["replay"] == {"b": {"parsed": 15.5, "generated": 32.0}}
    assert rows[1]["stages"] is None  # multitask has one row: no stages
    md = study_summary.markdown(rows)
    assert "| method | seeds | after a | after b | parsed |" in md
    assert "| lll | 2 | 35.0 / 6.0 | 15.0 / 45.0 | b 15.5 / 32 |" in md
    assert "| multitask | 60.0" not in md.split("Score after each stage")[1]
    # seeds whose matrices differ in shape are not averaged
    assert study_summary.stage_matrix([cells[0], cell("lll", 3, [[1.0]])]) is None


def test_prune_keeps_records_and_teacher_finish(tmp_path):
    for name in ("model-1", "model-2", "model-finish", "model.safetensors", "config.json", "metrics.json"):
        (tmp_path / name).write_bytes(b"x" * 10)
    assert study_probes.prune_run(str(tmp_path), keep_finish=True) == 30
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.json", "model-finish"]
    study_probes.prune_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.json"]


@pytest.fixture(scope="module")
def qwen2_base(tmp_path_factory):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_models import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("base") / "qwen2"), "qwen2", tied=False)


def test_probes_then_auto_study_on_a_llama_family_base_resumes(tmp_path, qwen2_base, monkeypatch):
    """The whole SmolLM2 procedure on a tiny random Qwen2: both probes, the study with the
    sequence and epochs they chose, pruning, and a restart that runs nothing again."""
    out = str(tmp_path / "st")
    common = ["--out", out, "--model_name", qwen2_base, "--train", "6", "--test", "3", "--lr", "1e-3", "--batch",
              "4", "--max_gen_len", "12", "--quiet", "--prune_models", "--no-plots"]
    assert study.main(common + ["--probe", "forgetting", "--probe_pairs", "rnnlg.tv:rnnlg.rest",
                                "rnnlg.rest:rnnlg.hotel", "--epochs", "1"]) == 0
    probe = json.load(open(os.path.join(out, study_probes.FORGETTING_FILE)))
    assert [r["pair"] for r in probe["results"]] == ["rnnlg.tv:rnnlg.rest", "rnnlg.rest:rnnlg.hotel"]
    for r in probe["results"]:
        assert math.isclose(r["forgetting"], r["first_after_first"] - r["first_after_second"])
    assert study.main(common + ["--probe", "parse_rate", "--probe_task", "rnnlg.tv", "--probe_epochs", "2",
                                "--probe_samples", "4"]) == 0
    parse = json.load(open(os.path.join(out, study_probes.PARSE_FILE)))
    assert sorted(r["epoch"] for r in parse["results"]) == ["1", "2"]
    assert all(r["generated"] == 4 and 0 <= r["parsed"] <= 4 for r in parse["results"])
    run = common + ["--tasks", "auto", "--epochs", "auto", "--seeds", "1", "--orders", "forward", "--methods",
                    "finetune", "lll", "lll+word_kd", "--teacher_epochs", "2"]
    assert study.main(run) == 0
    summary = json.load(open(os.path.join(out, "study.json")))
    assert [c["tasks"] for c in summary["cells"]] == [["rnnlg.tv", "rnnlg.rest", "rnnlg.hotel"]] * 3
    lll = summary["cells"][1]
    assert lll["replay"]["rnnlg.rest"]["generated"] == 2 and lll["parse_rate"] is not None
    assert set(summary["cells"][2]["teacher"]) == {"rnnlg.tv", "rnnlg.rest", "rnnlg.hotel"}
    md = open(os.path.join(out, "summary.md")).read()
    assert "| lll | 1 |" in md and "parse rate" in md
    weights = [f for d, _, fs in os.walk(out) for f in fs if f.startswith("model")]
    assert weights and set(weights) == {"model-finish"}  # only the teachers' model-finish stay
    monkeypatch.setattr(study, "run_cell", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert study.main(run) == 0
