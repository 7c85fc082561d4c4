"""The form of a run's test answers (l2kd.cli.study_answers), and the study's record and table of it."""
import os

import pytest

from l2kd.cli import study, study_answers, study_summary
from l2kd.evaluate import write_qa_csv
from l2kd.layout import run_dir_of, task_dir

NLG = [["There is a cheap place.", "A cheap place."]] * 3
WOZ = [["food: basque; phone"], ["None"], ["; address"], ["price range: cheap, area: east;"]]


@pytest.mark.parametrize("text, form", [
    ("The Punter is a cheap coffee shop.", "sentence"),
    ("food: basque; good formeal: dinner", "slots"),
    ("price range: cheap, area: east; phone", "slots"),
    ("; address", "slots"),
    ("None", "none"),
    ("  None ", "none"),
    ("none of them", "sentence"),
    ("", "empty"),
    ("   ", "empty"),
    (":) nice", "sentence"),
])
def test_answer_form(text, form):
    assert study_answers.answer_form(text) == form


def test_a_form_is_the_tasks_when_a_tenth_of_its_references_take_it():
    assert study_answers.reference_forms(NLG) == {"sentence"}
    assert study_answers.reference_forms(WOZ) == {"slots", "none"}
    # one sentence among eleven slot lists is under a tenth: not the task's form
    assert study_answers.reference_forms([["food: x;"]] * 10 + [["a sentence"]]) == {"slots"}
    assert study_answers.reference_forms([["food: x;"]] * 9 + [["a sentence"]]) == {"slots", "sentence"}
    assert study_answers.reference_forms([]) == set()


def test_qa_files_are_read_back_and_a_bad_row_names_the_file_and_line(tmp_path):
    path = str(tmp_path / "qa_woz.en_3.csv")
    write_qa_csv(path, WOZ, ["food: basque;", "None", "", "a, \"quoted\"\nsentence"])
    golds, preds = study_answers.read_qa_csv(path)
    assert golds == WOZ and preds == ["food: basque;", "None", "", "a, \"quoted\"\nsentence"]
    with open(path, "a") as f:
        f.write("not json,x\n")
    with pytest.raises(ValueError, match=r"qa_woz.en_3.csv, line 6"):
        study_answers.read_qa_csv(path)


def test_the_latest_epochs_file_of_the_task_is_read(tmp_path):
    for name in ("qa_rnnlg.rest_2.csv", "qa_rnnlg.rest_10.csv", "qa_rnnlg.rest_x.csv", "qa_rnnlg.rest_11.txt",
                 "qa_rnnlg.rest.tv_12.csv"):
        (tmp_path / name).write_text("y,pred\n")
    assert study_answers.latest_qa_csv(str(tmp_path), "rnnlg.rest") == str(tmp_path / "qa_rnnlg.rest_10.csv")
    assert study_answers.latest_qa_csv(str(tmp_path), "woz.en") is None
    assert study_answers.latest_qa_csv(str(tmp_path / "missing"), "woz.en") is None


def _test_files(folder, nlg_preds, woz_preds):
    os.makedirs(folder, exist_ok=True)
    write_qa_csv(os.path.join(folder, "qa_e2enlg_1.csv"), NLG, nlg_preds)
    write_qa_csv(os.path.join(folder, "qa_woz.en_1.csv"), WOZ, woz_preds)


def test_forms_are_counted_per_stage_and_test_task(tmp_path):
    run = str(tmp_path / "run")
    _test_files(os.path.join(run, "e2enlg"), ["A place.", "B place.", "C place."], ["x y", "None", "", "food: a;"])
    _test_files(os.path.join(run, "woz.en"), ["None", "food: a;", "A place."], ["None", "; phone", "food: b;", "z"])
    forms = study_answers.answer_forms(run, "lll", ["e2enlg", "woz.en"])
    assert forms["e2enlg"]["e2enlg"] == {"n": 3, "off_form": 0, "sentence": 3, "slots": 0, "none": 0, "empty": 0}
    # woz.en's references are slot lists and None: a sentence and an empty answer are off form
    assert forms["e2enlg"]["woz.en"] == {"n": 4, "off_form": 2, "sentence": 1, "slots": 1, "none": 1, "empty": 1}
    assert forms["woz.en"]["e2enlg"] == {"n": 3, "off_form": 2, "sentence": 1, "slots": 1, "none": 1, "empty": 0}
    assert forms["woz.en"]["woz.en"]["off_form"] == 1
    # a joint run is one stage in the run folder itself
    _test_files(str(tmp_path / "joint"), ["A.", "None", "B."], ["None"] * 4)
    joint = study_answers.answer_forms(str(tmp_path / "joint"), "multitask", ["e2enlg", "woz.en"])
    assert list(joint) == ["e2enlg+woz.en"] and joint["e2enlg+woz.en"]["e2enlg"]["off_form"] == 1
    # an untested stage is left out
    assert study_answers.answer_forms(str(tmp_path / "none"), "lll", ["e2enlg", "woz.en"]) == {}


def test_the_study_reads_the_forms_back_for_a_recorded_cell_and_tabulates_them(tmp_path):
    args = study.parse_args(["--out", str(tmp_path), "--tasks", "e2enlg", "woz.en", "--train", "4"])
    cfg = study.method_config("lll", "forward", 1, args)
    rdir = run_dir_of(cfg)
    _test_files(task_dir(rdir, "lll", "e2enlg"), ["A.", "B.", "None"], ["None"] * 4)
    _test_files(task_dir(rdir, "lll", "woz.en"), ["food: a;"] * 3, ["a sentence"] * 4)
    old = {"method": "lll", "order": "forward", "seed": 1, "run_dir": rdir, "tasks": ["e2enlg", "woz.en"],
           "matrix": [[1.0, 0.0], [0.5, 1.0]], "average": 0.75, "teacher": {}, "train_seconds": 1.0,
           "test_seconds": 1.0, "replay": {}}
    cell = study.with_read_back(dict(old), args)
    assert cell["answer_forms"]["e2enlg"]["e2enlg"]["off_form"] == 1
    assert cell["answer_forms"]["woz.en"]["woz.en"]["off_form"] == 4
    # a recorded reading is kept; a cell whose folder is gone is left as it was
    assert study.with_read_back({**old, "answer_forms": {"x": {}}}, args)["answer_forms"] == {"x": {}}
    assert "answer_forms" not in study.with_read_back({**old, "run_dir": str(tmp_path / "gone")}, args)
    table = study_summary.markdown(study_summary.summarize([cell, {**old, "seed": 2}])).split("Test answers off form")[1]
    assert "each cell: e2enlg / woz.en, of 3 / 4 answers" in table
    assert "| lll | 1 | 1 / 0 | 3 / 4 |" in table
    assert "| lll | 2 |" not in table  # a seed that recorded no forms gets no row
