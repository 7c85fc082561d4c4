"""Attributing LAMOL's pseudo-samples to the earlier task they imitate (l2kd.cli.study_replay),
and the study's record and summary of it."""
import json
import os

from l2kd.cli import study, study_replay, study_summary
from l2kd.layout import run_dir_of, task_dir
from l2kd.replay import write_lm_csv


def _squad(path, questions):
    data = [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": str(i), "question": q, "answers": [{"text": "a", "answer_start": 0}]}
        for i, q in enumerate(questions)]}]}]
    with open(path, "w") as f:
        json.dump({"data": data}, f)


def test_attribute_matches_the_question_before_the_answer_marker():
    qs = {"e2enlg": {"what is the natural language form?"}, "woz.en": {"what is the change in state?"}}
    samples = [
        "__gen__ name[Aromi], area[riverside] what is the natural language form? __ans__ Aromi is by the river",
        "__gen__ i want cheap food.  What is the   Change in state? __ans__ price range: cheap;",
        "__gen__ what is the change in state? is not the end here __ans__ x",  # question not at the end
        "__gen__ what is the natural language form? but no answer marker",
        "__gen__ What is the natural language form? __ans__ a __ans__ what is the change in state?",
    ]
    assert study_replay.attribute(samples, qs) == {"e2enlg": 2, "woz.en": 1, "other": 2}
    # the longest matching question wins when one task's question ends another's
    assert study_replay.attribute(["x what is it? __ans__ y"], {"a": {"it?"}, "b": {"what is it?"}}) == \
        {"a": 0, "b": 1, "other": 0}


def test_training_questions_are_read_normalised_and_a_missing_file_gives_none(tmp_path):
    _squad(tmp_path / "rnnlg.rest_to_squad-train-v2.0.json", ["What is the  natural language form?"] * 3)
    assert study_replay.training_questions(str(tmp_path), "rnnlg.rest") == {"what is the natural language form?"}
    assert study_replay.training_questions(str(tmp_path), "rnnlg.tv") == set()


def test_replay_mix_reads_each_previous_task_folders_lm_csv(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _squad(data / "rnnlg.rest_to_squad-train-v2.0.json", ["what is the natural language form?"])
    _squad(data / "woz.en_to_squad-train-v2.0.json", ["what is the change in state?"])
    run = tmp_path / "run"
    for t in ("rnnlg.rest", "woz.en"):
        (run / t).mkdir(parents=True)
    write_lm_csv(str(run / "rnnlg.rest" / "lm.csv"), ["__gen__ x what is the natural language form? __ans__ y"])
    write_lm_csv(str(run / "woz.en" / "lm.csv"), ["__gen__ a what is the change in state? __ans__ b",
                                                  "__gen__ c what is the change in state? __ans__ d",
                                                  "__gen__ x what is the natural language form? __ans__ y",
                                                  "__gen__ prose"])
    mix = study_replay.replay_mix(lambda t: str(run / t), ["rnnlg.rest", "woz.en", "e2enlg"], str(data))
    assert mix == {"woz.en": {"rnnlg.rest": 1, "other": 0},
                   "e2enlg": {"rnnlg.rest": 1, "woz.en": 2, "other": 1}}
    os.remove(run / "rnnlg.rest" / "lm.csv")  # a task whose samples are gone is left out
    assert list(study_replay.replay_mix(lambda t: str(run / t), ["rnnlg.rest", "woz.en", "e2enlg"], str(data))) \
        == ["e2enlg"]


def test_study_cells_record_the_mix_only_for_runs_that_replayed(tmp_path):
    args = study.parse_args(["--out", str(tmp_path), "--tasks", "rnnlg.rest", "rnnlg.hotel", "--train", "4"])
    cfg = study.method_config("lll", "forward", 1, args)
    rdir = run_dir_of(cfg)
    first = task_dir(rdir, cfg.seq_train_type, cfg.tasks[0])
    os.makedirs(first)
    write_lm_csv(os.path.join(first, "lm.csv"), ["__gen__ inform(name=x) what is the natural language form? "
                                                 "__ans__ x is nice", "__gen__ nothing"])
    assert study.run_replay_mix(rdir, cfg, {}) == {}
    assert study.run_replay_mix(rdir, cfg, {"rnnlg.hotel": {"generated": 2, "parsed": 1}}) == \
        {"rnnlg.hotel": {"rnnlg.rest": 1, "other": 1}}
    # a cell recorded before the study read the mix back gets it on resume; a recorded one is kept
    old = {"method": "lll", "order": "forward", "seed": 1, "run_dir": rdir,
           "replay": {"rnnlg.hotel": {"generated": 2, "parsed": 1}}}
    assert study.with_read_back(dict(old), args)["replay_mix"] == {"rnnlg.hotel": {"rnnlg.rest": 1, "other": 1}}
    assert study.with_read_back({**old, "replay_mix": {"x": {}}}, args)["replay_mix"] == {"x": {}}


def test_summary_means_the_mix_over_seeds_and_shows_it_in_the_stage_table():
    def cell(seed, mix):
        return {"method": "lll", "order": "forward", "seed": seed, "tasks": ["a", "b", "c"],
                "matrix": [[1.0] * 3] * 3, "average": 1.0, "teacher": {}, "train_seconds": 1.0, "test_seconds": 1.0,
                "replay": {"c": {"generated": 4, "parsed": 3}}, "replay_mix": mix}
    rows = study_summary.summarize([cell(1, {"c": {"a": 1, "b": 3, "other": 0}}), cell(2, {"c": {"a": 2, "b": 0}})])
    assert rows[0]["replay_mix"] == {"c": {"a": 1.5, "b": 1.5, "other": 0.0}}
    assert "| before c: a 1.5, b 1.5, other 0 |" in study_summary.markdown(rows)


def test_the_teachers_own_samples_are_counted_against_their_task(tmp_path):
    """The study keeps the counts of a teacher's own pseudo-samples (not their texts), with those
    whose question is one of the teacher's task's training questions."""
    from l2kd.diagnostics import DIAGNOSTICS
    from l2kd.layout import TASK_RECORD

    os.makedirs(tmp_path / "data")
    _squad(tmp_path / "data" / "rnnlg.rest_to_squad-train-v2.0.json", ["what is the natural language form?"])
    args = study.parse_args(["--out", str(tmp_path / "out"), "--tasks", "rnnlg.rest", "rnnlg.hotel",
                             "--data_dir", str(tmp_path / "data")])
    cfg = study.method_config("lll+word_kd", "forward", 1, args)
    first = task_dir(run_dir_of(cfg), cfg.seq_train_type, "rnnlg.rest")
    os.makedirs(first)
    texts = ["__gen__ inform(x) What is the natural language form? __ans__ x", "__gen__ what is it? __ans__ y",
             "__gen__ no marker"]
    with open(os.path.join(first, TASK_RECORD), "w") as f:
        json.dump({DIAGNOSTICS: {"teacher_score": 50.0, "teacher_pseudo": {"generated": 3, "parsed": 2,
                                                                             "texts": texts}}}, f)
    got = study.teacher_diagnostics(cfg)["rnnlg.rest"]
    assert got == {"teacher_score": 50.0, "teacher_pseudo": {"generated": 3, "parsed": 2, "own_task": 1}}


def test_summary_shows_the_teachers_own_samples_only_when_recorded():
    def cell(seed, teacher):
        return {"method": "lll+word_kd", "order": "forward", "seed": seed, "tasks": ["a", "b"],
                "matrix": [[1.0] * 2] * 2, "average": 1.0, "teacher": teacher, "train_seconds": 1.0,
                "test_seconds": 1.0}
    own = {"a": {"teacher_pseudo": {"generated": 4, "parsed": 3, "own_task": 2}},
           "b": {"teacher_pseudo": {"generated": 4, "parsed": 1, "own_task": 0}}}
    rows = study_summary.summarize([cell(1, own), cell(2, {"a": {"teacher_pseudo": {"generated": 4, "parsed": 4,
                                                                                     "own_task": 4}}}),
                                    cell(3, {"a": {"teacher_score": 1}})])  # recorded before the teachers' samples
    assert rows[0]["teacher_samples"] == {"a": {"generated": 4.0, "parsed": 3.5, "own_task": 3.0},
                                          "b": {"generated": 4.0, "parsed": 1.0, "own_task": 0.0}}
    md = study_summary.markdown(rows)
    assert "The teachers' own pseudo-samples" in md and "| lll+word_kd | 1, 2 | 3.5 / 3 / 4 | 1 / 0 / 4 |" in md
    without = study_summary.summarize([cell(1, {"a": {"teacher_score": 1}})])
    assert "teachers' own" not in study_summary.markdown(without)
