"""l2kd.report: hand-made runs (two seeds of lll, one finetune, one multitask), the printed
comparison against hand-computed means / sample stds, report.json, the PNGs, and errors."""
from __future__ import annotations

import dataclasses
import json
import os
import struct

import pytest

from l2kd.config import TrainConfig
from l2kd.evaluate import matrix_report
from l2kd.cli.report import main
from l2kd.reporting import (DPI, ReportError, compare, curves_figsize, format_comparison, load_run, matrix_figsize, plot_matrix)

TASKS = ["rnnlg.rest", "rnnlg.tv", "rnnlg.hotel"]
# lll seed 1 / seed 2 and finetune seed 1; R[i][j] = score on task j after task i
R_LLL1 = [[50, 10, 20], [40, 60, 30], [30, 50, 70]]
R_LLL2 = [[60, 20, 10], [50, 70, 40], [40, 60, 80]]
R_FT = [[50, 0, 0], [10, 60, 0], [5, 20, 70]]
R_MT = [[40, 50, 60]]


def make_run(root, seq_train_type, seed, R, summary=True, with_config=True, **cfg_kw):
    name = "_".join(TASKS) + (f"_0.05_{seed}" if "lll" in seq_train_type else f"_seed_{seed}")
    rdir = os.path.join(str(root), "models", "tiny-gpt2", seq_train_type, name)
    os.makedirs(rdir)
    multitask = seq_train_type in ("multitask", "multilm")
    result = matrix_report(TASKS, [[float(v) for v in row] for row in R], multitask)
    if not summary:
        result = {"tasks": result["tasks"], "matrix": result["matrix"]}
    with open(os.path.join(rdir, "accuracy_matrix.json"), "w") as f:
        json.dump(result, f)
    if with_config:
        cfg = TrainConfig(tasks=tuple(TASKS), data_dir="data", model_dir_root=str(root), model_name="tiny-gpt2",
                          seq_train_type=seq_train_type, seed=seed, **cfg_kw)
        with open(os.path.join(rdir, "l2kd_run.json"), "w") as f:
            json.dump({"run_dir": rdir, "config": dataclasses.asdict(cfg), "tasks": {}}, f)
    return rdir


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def expected_px(size):
    return round(size[0] * DPI), round(size[1] * DPI)


def table_line(out, method):
    lines = [ln for ln in out.splitlines() if ln.startswith(method + " ")]
    assert len(lines) == 1, out
    return lines[0]


def test_compare_seeds_table_json_and_plots(tmp_path, capsys):
    runs = [make_run(tmp_path, "lll", 1, R_LLL1), make_run(tmp_path, "lll", 2, R_LLL2),
            make_run(tmp_path, "finetune", 1, R_FT)]
    out = tmp_path / "out"
    assert main(runs + ["--out", str(out)]) == 0
    text = capsys.readouterr().out

    # each run's matrix is printed (format_matrix), then the comparison
    assert text.count("score after each task") == 3
    # lll: finals (30,40) (50,60) (70,80); avg 50/60; BWT -15/-15; forgetting 15/15; FWT 20/30
    # sample std (ddof=1) of two values 10 apart = 7.07
    lll = table_line(text, "lll")
    cells = [c.strip() for c in lll.split("  ") if c.strip()]
    assert cells == ["lll", "2", "35.0 ± 7.1", "55.0 ± 7.1", "75.0 ± 7.1", "55.0 ± 7.1",
                     "-15.0 ± 0.0", "15.0 ± 0.0", "25.0 ± 7.1"]
    # finetune, one seed: mean only; BWT ((5-50)+(20-60))/2, forgetting (45+40)/2, FWT (0+0)/2
    ft = table_line(text, "finetune")
    cells = [c.strip() for c in ft.split("  ") if c.strip()]
    assert cells == ["finetune", "1", "5.0", "20.0", "70.0", "31.7", "-42.5", "42.5", "0.0"]

    rep = json.loads((out / "report.json").read_text())
    assert rep["std_ddof"] == 1
    assert [r["method"] for r in rep["rows"]] == ["lll", "finetune"]
    row = rep["rows"][0]
    assert row["n"] == 2 and row["seeds"] == [1, 2] and row["tasks"] == TASKS
    assert row["final"]["rnnlg.tv"]["mean"] == pytest.approx(55.0)
    assert row["final"]["rnnlg.tv"]["std"] == pytest.approx(50 ** 0.5)
    assert row["backward_transfer"]["mean"] == pytest.approx(-15.0)
    assert row["forward_transfer"] == pytest.approx({"mean": 25.0, "std": 50 ** 0.5, "n": 2})
    assert rep["rows"][1]["average"]["std"] is None
    assert [r["seed"] for r in rep["runs"]] == [1, 2, 1]
    md = (out / "report.md").read_text()
    assert "| lll | 2 | 35.0 ± 7.1 |" in md

    subdirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subdirs == ["finetune-" + os.path.basename(runs[2]), "lll-" + os.path.basename(runs[0]),
                       "lll-" + os.path.basename(runs[1])]
    for d in subdirs:
        assert png_size(out / d / "accuracy_matrix.png") == expected_px(matrix_figsize(3, 3))
        assert png_size(out / d / "task_scores.png") == expected_px(curves_figsize(3))
    import matplotlib.image

    img = matplotlib.image.imread(str(out / subdirs[0] / "accuracy_matrix.png"))
    w, h = expected_px(matrix_figsize(3, 3))
    assert img.shape[:2] == (h, w) and img.std() > 0  # a real picture, not a blank canvas


def test_single_run_defaults_to_run_dir(tmp_path, capsys):
    rdir = make_run(tmp_path, "lll", 7, R_LLL1, distil=True)
    assert main([rdir]) == 0
    assert "lll+word_kd" in capsys.readouterr().out
    for name in ("accuracy_matrix.png", "task_scores.png", "report.json", "report.md"):
        assert os.path.isfile(os.path.join(rdir, name)), name


def test_several_runs_no_plots_write_to_cwd(tmp_path, monkeypatch, capsys):
    runs = [make_run(tmp_path, "lll", 1, R_LLL1), make_run(tmp_path, "finetune", 1, R_FT)]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(runs + ["--no-plots"]) == 0
    assert sorted(os.listdir(work)) == ["report.json", "report.md"]
    assert not any(f.endswith(".png") for r in runs for f in os.listdir(r))


def test_multitask_one_row(tmp_path, capsys):
    rdir = make_run(tmp_path, "multitask", 3, R_MT)
    rec = load_run(rdir)
    assert rec.multitask and rec.strategy == "multitask" and rec.seed == 3
    assert rec.average == pytest.approx(50.0)
    assert rec.backward_transfer is None and rec.forgetting is None and rec.forward_transfer is None
    out = tmp_path / "out"
    assert main([rdir, "--out", str(out)]) == 0
    cells = [c.strip() for c in table_line(capsys.readouterr().out, "multitask").split("  ") if c.strip()]
    assert cells == ["multitask", "1", "40.0", "50.0", "60.0", "50.0", "-", "-", "-"]
    assert png_size(out / "accuracy_matrix.png") == expected_px(matrix_figsize(1, 3))
    assert png_size(out / "task_scores.png") == expected_px(curves_figsize(3))
    rep = json.loads((out / "report.json").read_text())
    assert rep["rows"][0]["backward_transfer"] == {"mean": None, "std": None, "n": 0}


def test_without_summary_files_uses_layout_and_recomputes(tmp_path):
    rdir = make_run(tmp_path, "lll", 5, R_LLL2, summary=False, with_config=False)
    rec = load_run(rdir)
    assert rec.strategy == "lll" and rec.seed == 5 and rec.config is None
    assert rec.average == pytest.approx(60.0)
    assert rec.backward_transfer == pytest.approx(-15.0)
    assert rec.forgetting == pytest.approx(15.0)
    assert rec.forward_transfer == pytest.approx(30.0)
    ft = load_run(make_run(tmp_path, "finetune", 9, R_FT, with_config=False))
    assert (ft.strategy, ft.seed) == ("finetune", 9)


def test_config_variants_are_separate_methods(tmp_path):
    a = load_run(make_run(tmp_path, "lll", 1, R_LLL1))
    b = load_run(make_run(tmp_path / "b", "lll", 2, R_LLL2, gen_lm_sample_percentage=0.2))
    c = load_run(make_run(tmp_path / "c", "lll", 3, R_LLL2, gen_lm_sample_percentage=0.2, device="cpu"))
    rows = compare([a, b, c])
    assert [(r["method"], r["n"]) for r in rows] == [("lll (gen_lm_sample_percentage=0.05)", 1),
                                                     ("lll (gen_lm_sample_percentage=0.2)", 2)]
    assert "lll (gen_lm_sample_percentage=0.2)" in format_comparison(rows)


def test_missing_run_dir(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert main([missing]) == 1
    assert missing in capsys.readouterr().err
    with pytest.raises(ReportError, match="nope"):
        load_run(missing)


def test_missing_or_malformed_matrix(tmp_path, capsys):
    rdir = tmp_path / "run"
    rdir.mkdir()
    path = str(rdir / "accuracy_matrix.json")
    assert main([str(rdir)]) == 1
    err = capsys.readouterr().err
    assert path in err and "python -m l2kd.test" in err
    for bad in ("{not json", json.dumps({"tasks": TASKS, "matrix": [[1, 2]]}), json.dumps({"tasks": TASKS}),
                json.dumps([1, 2])):
        (rdir / "accuracy_matrix.json").write_text(bad)
        with pytest.raises(ReportError) as info:
            load_run(str(rdir))
        assert path in str(info.value) and "python -m l2kd.test" in str(info.value)


def test_plot_matrix_partial_run(tmp_path):
    rdir = tmp_path / "partial"
    rdir.mkdir()
    (rdir / "accuracy_matrix.json").write_text(json.dumps(matrix_report(TASKS, [[50.0, 1.0, 2.0], [40.0, 60.0, 3.0]])))
    rec = load_run(str(rdir))
    assert rec.backward_transfer is None and len(rec.matrix) == 2
    plot_matrix(rec, str(tmp_path / "m.png"))
    assert png_size(tmp_path / "m.png") == expected_px(matrix_figsize(2, 3))
