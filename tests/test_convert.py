"""Raw-data converters (l2kd/data/convert.py) on tiny fixtures in the raw release formats."""
import json
import os

import pytest

from l2kd.data import BUNDLED_TASKS, bundled_data_dir
from l2kd.data.convert import (
    NLG_QUESTION,
    WOZ_QUESTION,
    convert_e2e,
    convert_rnnlg,
    convert_woz,
    main,
    read_rnnlg_json,
)
from l2kd.data.squad import DataError, load_answers_file, load_squad_file
from l2kd.data.tasks import task_file

BANNER = "#####\n#  Copyright Cambridge Dialogue Systems Group, 2016 #\n#####\n"


def _rnnlg(src, domain, split, rows):
    d = src / "rnnlg" / domain
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.json").write_text(BANNER + json.dumps(rows, indent=4), encoding="utf-8")


@pytest.fixture
def raw(tmp_path):
    src = tmp_path / "raw"
    for dom in ("restaurant", "hotel", "tv", "laptop"):
        _rnnlg(src, dom, "train", [[f"inform(name='{dom} a')", "ref a1", "ref a2"], ["goodbye()", "bye 1", "bye 2"]])
        _rnnlg(src, dom, "test", [[f"inform(name='{dom} t')", "t1", "t2"]])
    e2e = src / "e2e"
    e2e.mkdir(parents=True)
    (e2e / "devset.csv").write_text('mr,ref\n"name[A], area[x]","A is in x."\n"name[A], area[x]","In x, A."\n'
                                    '"name[B]","B, ""quoted""."\n', encoding="utf-8")
    (e2e / "testset_w_refs.csv").write_text('"mr","ref"\n"name[C]","C one."\n"name[D]","D."\n"name[C]","C two."\n',
                                            encoding="utf-8")
    woz = src / "woz"
    woz.mkdir(parents=True)

    def turn(transcript, acts, belief):
        return {"transcript": transcript, "system_acts": acts, "belief_state": belief, "turn_label": [],
                "system_transcript": "", "asr": []}

    inform = lambda s, v: {"slots": [[s, v]], "act": "inform"}  # noqa: E731
    request = lambda v: {"slots": [["slot", v]], "act": "request"}  # noqa: E731
    dialogues = [
        {"dialogue": [
            turn("cheap  thai please", [], [inform("food", "thai"), inform("price range", "cheap")]),
            turn("and the phone?", [["food", "thai"], "area"], [inform("food", "thai"), inform("price range", "cheap"), request("phone")]),
            turn("actually korean", [], [inform("food", "korean"), inform("price range", "cheap")]),
        ]},
        {"dialogue": [turn("thanks", [], [])]},
    ]
    for split in ("train", "validate", "test"):
        (woz / f"woz_{split}_en.json").write_text(json.dumps(dialogues), encoding="utf-8")
    return str(src)


def test_read_rnnlg_skips_banner(raw):
    rows = read_rnnlg_json(os.path.join(raw, "rnnlg", "hotel", "train.json"))
    assert rows[0] == ["inform(name='hotel a')", "ref a1", "ref a2"]


def test_rnnlg(raw, tmp_path):
    out = str(tmp_path / "out")
    counts = convert_rnnlg(raw, out, log=lambda m: None, check_counts=False)
    assert counts["rnnlg.rest"] == {"train": 4, "test": 1}  # one example per (act, ref)
    assert counts["rnnlg.laptop"] == {"train": 2, "test": 1}  # laptop: one per act, first ref
    tr = load_squad_file(task_file(out, "rnnlg.rest", "train"), "rnnlg.rest")
    assert [(e.context, e.answers) for e in tr[:2]] == [("inform(name='restaurant a')", ["ref a1"]),
                                                         ("inform(name='restaurant a')", ["ref a2"])]
    assert tr[0].question == NLG_QUESTION
    lap = load_squad_file(task_file(out, "rnnlg.laptop", "train"), "rnnlg.laptop")
    assert [e.answers for e in lap] == [["ref a1"], ["bye 1"]]
    te = load_squad_file(task_file(out, "rnnlg.tv", "test"), "rnnlg.tv")
    assert te[0].answers == ["t1", "t2"]


def test_rnnlg_full_counts_checked(raw, tmp_path):
    # without --limit-*, sizes must match the real release: the tiny fixture does not
    with pytest.raises(DataError, match="expected 6228"):
        convert_rnnlg(raw, str(tmp_path / "o"), tasks=["rnnlg.rest"], log=lambda m: None)


def test_e2e(raw, tmp_path):
    out = str(tmp_path / "out")
    convert_e2e(raw, out, limit_train=10, limit_test=10, log=lambda m: None)
    tr = load_squad_file(task_file(out, "e2enlg", "train"), "e2enlg")
    assert [(e.context, e.answers) for e in tr] == [("name[A], area[x]", ["A is in x."]),
                                                    ("name[A], area[x]", ["In x, A."]),
                                                    ("name[B]", ['B, "quoted".'])]
    te = load_squad_file(task_file(out, "e2enlg", "test"), "e2enlg")
    assert [(e.context, e.answers) for e in te] == [("name[C]", ["C one.", "C two."]), ("name[D]", ["D."])]


def test_woz(raw, tmp_path):
    out = str(tmp_path / "out")
    convert_woz(raw, out, limit_train=100, limit_test=100, log=lambda m: None)
    te = load_squad_file(task_file(out, "woz.en", "test"), "woz.en")
    assert [e.context for e in te] == ["cheap thai please", "food: thai, area -- and the phone?",
                                       "actually korean", "thanks"]
    assert {e.question for e in te} == {WOZ_QUESTION}
    assert [e.answers[0] for e in te] == ["food: thai, price range: cheap;", "; phone", "food: korean;", "None"]
    assert [e.qa_id for e in te] == ["0", "1", "2", "3"]
    ans = load_answers_file(os.path.join(out, "woz.en_answers.json"))
    assert ans == [["en_0_0", "food: thai, price range: cheap;"], ["en_0_1", "; phone"],
                   ["en_0_2", "food: korean;"], ["en_1_0", "None"]]
    assert len(load_squad_file(task_file(out, "woz.en", "eval"), "woz.en")) == 4


def test_limits_and_determinism(raw, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        assert main(["all", "--src", raw, "--out", out, "--limit-train", "2", "--limit-test", "1"]) == 0
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for f in os.listdir(a):
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
    assert len(load_squad_file(task_file(a, "rnnlg.tv", "train"), "rnnlg.tv")) == 2
    assert len(load_answers_file(os.path.join(a, "woz.en_answers.json"))) == 1


def test_cli_reports_missing_source(tmp_path, capsys):
    assert main(["e2e", "--src", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--limit-train", "1"]) == 1
    assert "devset.csv" in capsys.readouterr().err


def test_bundled_counts():
    d = bundled_data_dir()
    for task, splits in BUNDLED_TASKS.items():
        for split, n in splits.items():
            assert len(load_squad_file(task_file(d, task, split), task)) == n
    lap = load_squad_file(task_file(d, "rnnlg.laptop", "test"), "rnnlg.laptop")
    assert all(len(e.answers) == 2 for e in lap)  # every RNNLG test act has 2 references
    total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert total < 4 * 2 ** 20
