"""The WOZ converter on the real WOZ 2.0 files (shipped gzipped in tests/fixtures, see ATTRIBUTION)."""
from __future__ import annotations

import gzip
import os
import shutil

from l2kd.data.convert import convert_woz
from l2kd.data.squad import load_answers_file, load_squad_file
from l2kd.metrics import compute_metrics

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "woz")


def test_woz_counts_and_dialogue_metric_on_real_files(tmp_path):
    src = tmp_path / "raw"
    (src / "woz").mkdir(parents=True)
    for name in (n for n in os.listdir(FIXTURES) if n.endswith(".json.gz")):
        with gzip.open(os.path.join(FIXTURES, name), "rb") as f, open(src / "woz" / name[:-3], "wb") as g:
            shutil.copyfileobj(f, g)
    counts = convert_woz(str(src), str(tmp_path / "out"), log=lambda *a: None)["woz.en"]
    assert counts["train"] == 2536 and counts["test"] == 1646  # LAMOL's woz.en sizes
    test = load_squad_file(str(tmp_path / "out" / "woz.en_to_squad-test-v2.0.json"), "woz.en")
    answers = load_answers_file(str(tmp_path / "out" / "woz.en_answers.json"))
    assert len(test) == len(answers) == 1646
    # gold answers score 100 joint goal; an all-"None" prediction scores lower
    gold = [ex.answers[0] for ex in test]
    perfect = compute_metrics("woz.en", gold, [ex.answers for ex in test], answers)
    assert perfect["joint_goal_em"] == 100.0
    blank = compute_metrics("woz.en", ["None"] * len(test), [ex.answers for ex in test], answers)
    assert blank["joint_goal_em"] < 50.0
