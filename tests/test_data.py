"""Task registry and LAMOL SQuAD-layout loading (l2kd/data/tasks.py, l2kd/data/squad.py)."""
import json
import os

import pytest

from l2kd.data import BUNDLED_TASKS, bundled_data_dir
from l2kd.data.squad import (
    DataError,
    DataFileNotFoundError,
    QAExample,
    load_answers_file,
    load_squad_file,
    order_by_qa_id,
    write_squad_file,
)
from l2kd.data.tasks import TASKS, get_task, task_file

ALL_TASKS = ("squad1 squad2 wikisql sst srl woz.en cnn_dailymail zre iwslt.en.de multinli.in.out schema "
             "e2enlg rnnlg.rest rnnlg.hotel rnnlg.tv rnnlg.laptop e2enlg2 ag yelp amazon dbpedia yahoo").split()


def test_registry_has_all_22_tasks():
    assert sorted(TASKS) == sorted(ALL_TASKS)
    assert len(TASKS) == 22


@pytest.mark.parametrize("task,metric", [
    ("squad1", "nf1"), ("squad2", "nf1"), ("srl", "nf1"), ("sst", "em"), ("schema", "em"),
    ("multinli.in.out", "em"), ("ag", "em"), ("yelp", "em"), ("amazon", "em"), ("dbpedia", "em"),
    ("yahoo", "em"), ("wikisql", "lfem"), ("woz.en", "joint_goal_em"), ("zre", "corpus_f1"),
    ("iwslt.en.de", "bleu"), ("cnn_dailymail", "avg_rouge"), ("e2enlg", "avg_rouge"),
    ("e2enlg2", "avg_rouge"), ("rnnlg.rest", "avg_rouge"), ("rnnlg.laptop", "avg_rouge"),
])
def test_registry_metrics(task, metric):
    assert get_task(task).metric == metric


def test_registry_sizes_and_answers():
    assert get_task("rnnlg.tv").train_size == 8442
    assert get_task("rnnlg.laptop").train_size == 7944
    assert get_task("wikisql").train_size == 6525 and get_task("wikisql").lamol_train_size == 56355
    assert get_task("e2enlg2").train_size is None
    assert get_task("wikisql").answers_file == "wikisql_answers.json"
    assert get_task("woz.en").answers_file == "woz.en_answers.json"
    assert get_task("sst").answers_file is None


def test_task_files():
    d = "D"
    assert task_file(d, "squad1", "train") == os.path.join(d, "squad-train-v1.1.json")
    assert task_file(d, "squad1", "eval") == os.path.join(d, "squad-dev-v1.1.json")
    assert task_file(d, "squad2", "test") == os.path.join(d, "squad-dev-v2.0.json")
    assert task_file(d, "sst", "eval") == os.path.join(d, "sst_to_squad-dev-v2.0.json")
    assert task_file(d, "sst", "test") == os.path.join(d, "sst_to_squad-test-v2.0.json")
    assert task_file(d, "woz.en", "eval").endswith("woz.en_to_squad-dev-v2.0.json")
    assert task_file(d, "multinli.in.out", "test").endswith("multinli.in.out_to_squad-dev-v2.0.json")
    assert task_file(d, "rnnlg.rest", "eval").endswith("rnnlg.rest_to_squad-test-v2.0.json")
    assert task_file(d, "cnn_dailymail", "eval").endswith("cnn_dailymail_to_squad-test-v2.0.json")
    assert task_file(d, "e2enlg", "distil").endswith("e2enlg_to_squad-distil-v2.0.json")


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError) as e:
        get_task("rnnlg.restaurant")
    assert "rnnlg.rest" in str(e.value) and "squad1" in str(e.value)


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


GOOD = {"data": [
    {"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"question": "Where is Paris?", "answers": [{"text": "France"}, {"text": "in France"}], "id": "q1"},
        {"question": "Who?", "answers": [], "id": "q2", "is_impossible": True},
    ]}]},
    {"paragraphs": [{"context": "Ünïcode ctx", "qas": [
        {"question": "ok?", "answers": [{"text": "ja"}], "id": 7},
    ]}]},
]}


def test_load_good_file(tmp_path):
    ex = load_squad_file(_write(tmp_path / "t.json", GOOD), "sst")
    assert [e.qa_id for e in ex] == ["q1", "q2", "7"]
    assert ex[0].answers == ["France", "in France"] and ex[0].context == "Paris is in France."
    assert ex[1].answers == []  # unanswerable -> empty answer
    assert ex[2].context == "Ünïcode ctx" and ex[2].task == "sst"


def test_is_impossible_wins_over_answers(tmp_path):
    doc = {"data": [{"paragraphs": [{"context": "c", "qas": [
        {"question": "q", "answers": [{"text": "x"}], "id": 0, "is_impossible": True}]}]}]}
    assert load_squad_file(_write(tmp_path / "t.json", doc), "squad2")[0].answers == []


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"data": [\n  {"paragraphs": [\n', encoding="utf-8")  # truncated
    with pytest.raises(DataError) as e:
        load_squad_file(str(p), "sst")
    msg = str(e.value)
    assert "bad.json" in msg and "line" in msg and "column" in msg


def test_missing_key_names_entry(tmp_path):
    doc = json.loads(json.dumps(GOOD))
    del doc["data"][1]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(DataError) as e:
        load_squad_file(_write(tmp_path / "m.json", doc), "sst")
    msg = str(e.value)
    assert "m.json" in msg and "data[1]" in msg and "question" in msg and "id 7" in msg


def test_wrong_types(tmp_path):
    doc = json.loads(json.dumps(GOOD))
    doc["data"][0]["paragraphs"][0]["context"] = 5
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.context"):
        load_squad_file(_write(tmp_path / "w.json", doc), "sst")
    with pytest.raises(DataError, match="missing key 'data'"):
        load_squad_file(_write(tmp_path / "w2.json", {"version": 1}), "sst")
    doc = json.loads(json.dumps(GOOD))
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"txt": "x"}]
    with pytest.raises(DataError, match=r"answers\[0\]"):
        load_squad_file(_write(tmp_path / "w3.json", doc), "sst")


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope" / "sst_to_squad-train-v2.0.json")
    with pytest.raises(FileNotFoundError) as e:
        load_squad_file(p, "sst")
    assert isinstance(e.value, DataFileNotFoundError) and isinstance(e.value, DataError)
    assert p in str(e.value)


def test_empty_file_and_empty_data(tmp_path):
    p = tmp_path / "empty.json"
    p.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_squad_file(str(p), "sst")
    with pytest.raises(DataError, match="empty"):
        load_squad_file(_write(tmp_path / "e2.json", {"data": []}), "sst")
    with pytest.raises(DataError, match="no question"):
        load_squad_file(_write(tmp_path / "e3.json", {"data": [{"paragraphs": [{"context": "c", "qas": []}]}]}), "sst")


def test_write_read_round_trip(tmp_path):
    ex = [QAExample("ctx ü", "q?", ["a", "b"], "0", "e2enlg"), QAExample("c2", "q2", [], "1", "e2enlg"),
          QAExample("c3", "q3", ["x"], "id-3", "e2enlg")]
    p = str(tmp_path / "sub" / "out.json")
    write_squad_file(p, ex)
    back = load_squad_file(p, "e2enlg")
    assert back == ex
    assert not [f for f in os.listdir(tmp_path / "sub") if f != "out.json"]  # no temp file left
    assert json.load(open(p))["data"][0]["paragraphs"][0]["qas"][0]["id"] == 0  # numeric ids as ints


def test_order_by_qa_id():
    ex = [QAExample("c", "q", [], i, "woz.en") for i in ["10", "2", "0"]]
    assert order_by_qa_id(ex) == [2, 1, 0]


def test_answers_file_validation(tmp_path):
    woz = [["en_0_0", "food: thai;"], ["en_0_1", "None"]]
    assert load_answers_file(_write(tmp_path / "woz.en_answers.json", woz)) == woz
    with pytest.raises(DataError, match="entry 1"):
        load_answers_file(_write(tmp_path / "a.json", [["en_0_0", "x"], ["en_0_1"]]))
    wiki = [{"sql": {"sel": 0, "agg": 0, "conds": [[1, 0, "x"]]}, "table": {"header": ["a", "b"]}, "answer": "select a from table"}]
    assert load_answers_file(_write(tmp_path / "wikisql_answers.json", wiki)) == wiki
    bad = [dict(wiki[0], sql={"sel": 0})]
    with pytest.raises(DataError, match="entry 0.sql"):
        load_answers_file(_write(tmp_path / "b.json", bad))


def test_bundled_data_loads_with_expected_counts():
    d = bundled_data_dir()
    assert os.path.isfile(os.path.join(d, "ATTRIBUTION.md"))
    for task, splits in BUNDLED_TASKS.items():
        for split, n in splits.items():
            ex = load_squad_file(task_file(d, task, split), task)
            assert len(ex) == n, (task, split)
            assert all(e.answers for e in ex)
    # woz.en eval split is dev; its answers file pairs with the test split
    ans = load_answers_file(os.path.join(d, "woz.en_answers.json"))
    test = load_squad_file(task_file(d, "woz.en", "test"), "woz.en")
    assert len(ans) == len(test) and [a[1] for a in ans] == [e.answers[0] for e in test]
    assert len(load_squad_file(task_file(d, "woz.en", "eval"), "woz.en")) == 100
