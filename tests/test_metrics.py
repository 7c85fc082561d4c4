"""Task metrics and accuracy-matrix summaries (l2kd/metrics.py), hand-checked values."""
import math

import numpy as np
import pytest

from l2kd import metrics as M


def test_normalize_answer():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.normalize_answer("An apple a day") == "apple day"
    assert M.normalize_answer("Ünïcode Straße.") == "ünïcode straße"
    assert M.normalize_answer("") == ""


def test_em_f1_per_example():
    assert M.exact_match("Paris", "Paris") == 1.0 and M.exact_match("paris", "Paris") == 0.0
    assert M.f1("a b c", "b c d") == pytest.approx(2 / 3)
    assert M.f1("b b", "b") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert M.f1("", "") == 0.0  # the original's rule
    assert M.max_over_golds(M.f1, "a b", ["x", "a b", "a"]) == 1.0


def test_em_nf1_nem_scores():
    preds, golds = ["Paris", "the paris", ""], [["Paris"], ["Paris", "France"], ["x"]]
    assert M.em_score(preds, golds) == pytest.approx(100 / 3)
    assert M.nem_score(preds, golds) == pytest.approx(200 / 3)
    assert M.nf1_score(preds, golds) == pytest.approx(200 / 3)
    # empty prediction vs empty / missing gold: nem counts it, nf1 does not (as the original)
    assert M.nem_score([""], [[""]]) == 100.0 and M.nf1_score([""], [[]]) == 0.0
    assert M.em_score(["münchen"], [["münchen"]]) == 100.0
    with pytest.raises(ValueError, match="no examples"):
        M.em_score([], [])
    with pytest.raises(ValueError, match="2 predictions"):
        M.em_score(["a", "b"], [["a"]])


def test_rouge_hand_checked():
    r = M.rouge_scores(["the cat sat on mat"], [["the cat sat"]])
    assert r["rouge1"] == pytest.approx(75.0)  # P 3/5, R 1
    assert r["rouge2"] == pytest.approx(200 / 3)  # P 2/4, R 1
    assert r["rougeL"] == pytest.approx(75.0)
    assert r["avg_rouge"] == pytest.approx((75 + 200 / 3 + 75) / 3)
    # several references: the best one counts
    assert M.rouge_scores(["a b c"], [["x y z", "a b c"]])["avg_rouge"] == pytest.approx(100.0)
    # empty prediction, stemming (no download needed), mean over examples
    assert M.rouge_scores([""], [["the cat"]])["avg_rouge"] == 0.0
    assert M.rouge_scores(["cats running"], [["cat runs"]])["rouge1"] == pytest.approx(100.0)
    assert M.rouge_scores(["a b", "x"], [["a b"], ["y"]])["rouge1"] == pytest.approx(50.0)


def test_bleu():
    assert M.bleu_score(["The cat sat on the mat ."], [["the cat sat on the mat ."]]) == pytest.approx(100.0)
    assert M.bleu_score([""], [["the cat sat on the mat"]]) == 0.0
    # different numbers of references per example are accepted
    s = M.bleu_score(["the cat sat on the mat", "a b c d e"], [["the cat sat on the mat"], ["x", "a b c d e"]])
    assert s == pytest.approx(100.0)


def test_corpus_f1():
    preds = ["unanswerable", "John Smith", "x", "the Paris."]
    golds = [["unanswerable"], ["john smith"], ["unanswerable"], ["Paris"]]
    r = M.corpus_f1(preds, golds)
    # tp 2 (john smith, paris), system positives 3, real positives 2
    assert r["precision"] == pytest.approx(200 / 3) and r["recall"] == pytest.approx(100.0)
    assert r["corpus_f1"] == pytest.approx(80.0)
    assert M.corpus_f1(["a"], [["b"]]) == {"corpus_f1": 0.0, "precision": 0.0, "recall": 0.0}


TABLE = {"header": ["Player", "No.", "Nationality", "Position", "Years in Toronto", "School/Club Team"]}


def _wiki(sel, agg, conds, answer):
    return {"sql": {"sel": sel, "agg": agg, "conds": conds}, "table": TABLE, "answer": answer}


def test_to_logical_form():
    lf = M.to_logical_form("select position from table where school/club team = butler cc (ks)", TABLE)
    assert lf == {"sel": 3, "agg": 0, "conds": [[5, 0, "butlercc(ks)"]]}
    lf = M.to_logical_form("select count no. from table where years in toronto = 1996-97", TABLE)
    assert lf == {"sel": 1, "agg": 3, "conds": [[4, 0, "1996-97"]]}
    lf = M.to_logical_form("select nationality from table where player = terrence ross and position = guard", TABLE)
    assert lf == {"sel": 2, "agg": 0, "conds": [[0, 0, "terrenceross"], [3, 0, "guard"]]}
    assert M.to_logical_form("select player from table", TABLE) == {"sel": 0, "agg": 0, "conds": []}


def test_wikisql_lfem_and_em():
    extra = [
        _wiki(3, 0, [[5, 0, "Butler CC (KS)"]], "SELECT Position FROM table WHERE School/Club Team = Butler CC (KS)"),
        _wiki(1, 3, [[4, 0, "1996-97"]], "SELECT COUNT No. FROM table WHERE Years in Toronto = 1996-97"),
        _wiki(0, 0, [], "SELECT Player FROM table"),
        _wiki(2, 0, [[0, 0, "Terrence Ross"]], "SELECT Nationality FROM table WHERE Player = Terrence Ross"),
    ]
    preds = [
        "select position from table where school/club team = butler cc (ks)",  # right, also em
        "select count no from table where years in toronto = 1996-97",  # right form, em wrong
        "select foo from table where bar",  # unparsable -> wrong
        "select nationality from table where player = terrence rose",  # wrong value
    ]
    m = M.compute_metrics("wikisql", preds, [["ignored"]] * 4, extra)
    assert m["lfem"] == pytest.approx(50.0)
    assert m["em"] == pytest.approx(25.0)  # against the lowercased gold query
    assert list(m) == ["lfem", "em", "nf1", "nem"]
    assert extra[0]["sql"]["conds"][0][2] == "Butler CC (KS)"  # gold not mutated
    with pytest.raises(ValueError, match="answers-file"):
        M.compute_metrics("wikisql", preds, [["x"]] * 4)


def test_woz_dialogue():
    answers = [["en_0_0", "food: thai, price range: cheap;"], ["en_0_1", "; phone"],
               ["en_0_2", "food: korean;"], ["en_1_0", "None"], ["en_1_1", "area: north;"]]
    preds = ["price range: cheap, food: thai;",  # same informs, other order: all right
             "; address",  # request wrong, state still right
             "food: korean;",  # right
             "area: north;",  # new dialogue: state wrong, goal wrong, request right
             ";"]  # state {area: north} == gold {area: north}: joint right, goal wrong
    r = M.dialogue_scores(preds, answers)
    assert r["joint_goal_em"] == pytest.approx(80.0)
    # requests as the original parses them: "x;" -> [''], "None" / ";" -> [], "; phone" -> ['phone'];
    # right on turns 1 and 3 only (['address'] != ['phone'], [''] != [], [] != [''])
    assert r["turn_request_em"] == pytest.approx(40.0)
    assert r["turn_goal_em"] == pytest.approx(60.0)  # turns 1, 2 ({} == {}), 3
    assert r["avg_dialogue"] == pytest.approx(60.0)
    m = M.compute_metrics("woz.en", preds, [[a[1]] for a in answers], answers)
    assert m["joint_goal_em"] == r["joint_goal_em"] and m["em"] == pytest.approx(20.0)
    assert M.task_score("woz.en", m) == pytest.approx(80.0)


def test_compute_metrics_keys_per_task():
    p, g = ["the cat sat"], [["the cat sat"]]
    assert set(M.compute_metrics("sst", p, g)) == {"em", "nf1", "nem"}
    assert set(M.compute_metrics("iwslt.en.de", p, g)) == {"em", "nf1", "nem", "bleu"}
    assert set(M.compute_metrics("zre", p, g)) == {"em", "nf1", "nem", "corpus_f1", "precision", "recall"}
    r = M.compute_metrics("rnnlg.rest", p, g)
    assert set(r) == {"em", "nf1", "nem", "rouge1", "rouge2", "rougeL", "avg_rouge"}
    assert all(v == pytest.approx(100.0) for v in r.values())
    assert M.task_score("rnnlg.rest", r) == pytest.approx(100.0)
    assert M.task_score("squad2", M.compute_metrics("squad2", ["b"], [["a", "b"]])) == 100.0
    with pytest.raises(KeyError):
        M.task_score("wikisql", r)


R = [[80.0, 10.0, 5.0],
     [60.0, 70.0, 20.0],
     [50.0, 40.0, 90.0]]


def test_matrix_functions_3x3():
    assert M.average_score(R) == pytest.approx(60.0)
    assert M.backward_transfer(R) == pytest.approx(-30.0)  # ((50-80) + (40-70)) / 2
    assert M.forgetting(R) == pytest.approx(30.0)  # (max(80,60)-50 + max(10,70)-40) / 2
    assert M.forward_transfer(R) == pytest.approx(15.0)  # (10 + 20) / 2
    assert M.forward_transfer(np.array(R), baseline=[0, 5, 10]) == pytest.approx(7.5)
    s = M.summarize_matrix(R)
    assert s["average_score"] == pytest.approx(60.0) and s["forgetting"] == pytest.approx(30.0)


def test_matrix_nan_and_edge_cases():
    Rn = [[80.0, math.nan, math.nan], [math.nan, 70.0, math.nan], [50.0, 40.0, 90.0]]
    assert M.forgetting(Rn) == pytest.approx(30.0)  # (80-50 + 70-40) / 2
    assert math.isnan(M.forward_transfer(Rn))
    assert M.average_score([[70.0]]) == 70.0
    assert math.isnan(M.backward_transfer([[70.0]])) and math.isnan(M.forgetting([[70.0]]))
    # rows after a partial run: T x N with N > T reads the first T columns
    assert M.average_score([[80.0, 1.0], [60.0, 70.0]]) == pytest.approx(65.0)
    with pytest.raises(ValueError):
        M.average_score([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
