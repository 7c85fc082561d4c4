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
