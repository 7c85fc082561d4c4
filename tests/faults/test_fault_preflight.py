"""A broken file of the last task stops the run before task 1 trains, naming the file:
training files and, with --seq_distil, the user's Seq-KD file beside the data."""
from __future__ import annotations

import glob
import os

from faults_helpers import argv, copy_data, run_dir, train


def _truncate_json(path: str) -> None:
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[:5000])


def _no_model_written(root) -> bool:
    return not glob.glob(os.path.join(str(root), "**", "model-*"), recursive=True)


def test_broken_seq_kd_file_of_the_last_task_stops_before_task_one(tmp_path, data_dir, capsys):
    data = copy_data(data_dir, tmp_path / "data")
    distil = os.path.join(data, "rnnlg.tv_to_squad-distil-v2.0.json")  # the user's, beside the data
    with open(os.path.join(data, "rnnlg.tv_to_squad-train-v2.0.json")) as src, open(distil, "w") as dst:
        dst.write(src.read())
    _truncate_json(distil)
    root = tmp_path / "runs"
    code, err = train(argv(data, root, "--seq_distil"), capsys)
    assert code == 1
    assert err.startswith("l2kd.train: error: ") and distil in err and "line 1" in err
    log = open(os.path.join(run_dir(root), "log_train.txt")).read()
    assert f"ERROR fatal: data file for task 'rnnlg.tv' {distil}" in log
    assert _no_model_written(root)  # no teacher and no task-1 model was trained


def test_broken_training_file_of_the_last_task_stops_before_task_one(tmp_path, data_dir, capsys):
    data = copy_data(data_dir, tmp_path / "data")
    bad = os.path.join(data, "rnnlg.tv_to_squad-train-v2.0.json")
    _truncate_json(bad)
    root = tmp_path / "runs"
    code, err = train(argv(data, root), capsys)
    assert code == 1 and err.startswith("l2kd.train: error: ") and err.count(bad) == 1
    assert _no_model_written(root)
