"""The form of a run's test answers and replayed pseudo-samples (l2kd.cli.study_answers), and the
study's record and table of them."""
import json
import os

import pytest

from l2kd.cli import study, study_answers, study_summary
from l2kd.evaluate import write_qa_csv
from l2kd.layout import run_dir_of, task_dir
from l2kd.replay import write_lm_csv

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


def _squad(path, qas):
    data = [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": 0} for a in answers]}
        for i, (q, answers) in enumerate(qas)]}]}]
    with open(path, "w") as f:
        json.dump({"data": data}, f)


def _data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _squad(data / "e2enlg_to_squad-train-v2.0.json", [("what is the natural language form?", ["A cheap place."])] * 4)
    _squad(data / "woz.en_to_squad-train-v2.0.json", [("what is the change in state?", ["food: basque;"]),
                                                      ("what is the change in state?", ["None"]),
                                                      ("what is the change in state?", [])])
    return str(data)


def test_replayed_samples_are_judged_by_the_form_of_the_task_they_imitate(tmp_path):
    data = _data(tmp_path)
    assert study_answers.training_forms(data, "woz.en") == {"slots", "none", "empty"}
    assert study_answers.training_forms(data, "rnnlg.tv") == set()  # no file
    run = tmp_path / "run"
    for t in ("e2enlg", "woz.en"):
        (run / t).mkdir(parents=True)
    write_lm_csv(str(run / "e2enlg" / "lm.csv"), [
        "__gen__ x what is the natural language form? __ans__ A sentence.",
        "__gen__ x what is the natural language form? __ans__ None",
        "__gen__ prose without an answer"])
    write_lm_csv(str(run / "woz.en" / "lm.csv"), [
        "__gen__ x what is the natural language form? __ans__ food: a;",
        "__gen__ i want food what is the change in state? __ans__ None",
        "__gen__ i want food what is the change in state? __ans__ I want food.",
        "__gen__ what is it? __ans__ y"])
    forms = study_answers.replay_forms(lambda t: str(run / t), ["e2enlg", "woz.en", "rnnlg.rest"], data)
    assert forms == {"woz.en": {"e2enlg": {"n": 2, "off_form": 1}},
                     "rnnlg.rest": {"e2enlg": {"n": 1, "off_form": 1}, "woz.en": {"n": 2, "off_form": 1}}}


def test_the_study_reads_the_forms_back_for_a_recorded_cell_and_tabulates_them(tmp_path):
    args = study.parse_args(["--out", str(tmp_path), "--tasks", "e2enlg", "woz.en", "--train", "4",
                             "--data_dir", _data(tmp_path)])
    cfg = study.method_config("lll", "forward", 1, args)
    rdir = run_dir_of(cfg)
    _test_files(task_dir(rdir, "lll", "e2enlg"), ["A.", "B.", "None"], ["None"] * 4)
    _test_files(task_dir(rdir, "lll", "woz.en"), ["food: a;"] * 3, ["a sentence"] * 4)
    write_lm_csv(os.path.join(task_dir(rdir, "lll", "e2enlg"), "lm.csv"),
                 ["__gen__ x what is the natural language form? __ans__ None",
                  "__gen__ y what is the natural language form? __ans__ Y is nice."])
    old = {"method": "lll", "order": "forward", "seed": 1, "run_dir": rdir, "tasks": ["e2enlg", "woz.en"],
           "matrix": [[1.0, 0.0], [0.5, 1.0]], "average": 0.75, "teacher": {}, "train_seconds": 1.0,
           "test_seconds": 1.0, "replay": {"woz.en": {"generated": 2, "parsed": 2}}}
    cell = study.with_read_back(dict(old), args)
    assert cell["answer_forms"]["e2enlg"]["e2enlg"]["off_form"] == 1
    assert cell["answer_forms"]["woz.en"]["woz.en"]["off_form"] == 4
    assert cell["replay_forms"] == {"woz.en": {"e2enlg": {"n": 2, "off_form": 1}}}
    assert cell["replay_mix"] == {"woz.en": {"e2enlg": 2, "other": 0}}
    # a run that replayed nothing has no replayed forms
    assert study.with_read_back({**old, "replay": {}}, args)["replay_forms"] == {}
    # a recorded reading is kept; a cell whose folder is gone is left as it was
    assert study.with_read_back({**old, "answer_forms": {"x": {}}}, args)["answer_forms"] == {"x": {}}
    assert "answer_forms" not in study.with_read_back({**old, "run_dir": str(tmp_path / "gone")}, args)
    table = study_summary.markdown(study_summary.summarize([cell, {**old, "seed": 2}]))
    table = table.split("Test answers off form")[1]
    assert "each cell: e2enlg / woz.en, of 3 / 4 answers" in table
    assert "| lll | 1 | 1 / 0 | 3 / 4 | before woz.en: e2enlg 1 / 2 |" in table
    assert "| lll | 2 |" not in table  # a seed that recorded no forms gets no row
