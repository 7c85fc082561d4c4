"""The paper chain (scripts/paper/run_nlg.sh) in its small mode: train, test, then the paper table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "paper", "run_nlg.sh")


def test_nlg_chain_small_mode(tmp_path, data_dir):
    (tmp_path / "env").write_text(f"DATA_DIR={data_dir}\nMODEL_ROOT_DIR={tmp_path / 'models'}\n")
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ, SMALL="1", EPOCHS="1", METHODS="lamol", PYTHON=sys.executable, OMP_NUM_THREADS="2",
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["bash", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.load(open(tmp_path / "models" / "tables" / "nlg" / "report.json"))
    rows = report["rows"] if isinstance(report, dict) and "rows" in report else report
    assert len(rows) == 2  # the order and its reverse, one seed each
    assert "lll" in r.stdout and "e2enlg" in r.stdout
