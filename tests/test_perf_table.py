"""The README's performance table is what benchmarks/perf_table.py makes of the committed results."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location("perf_table", os.path.join(ROOT, "benchmarks", "perf_table.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_matches_committed_results():
    pt = _module()
    ref_dir = os.path.join(ROOT, "benchmarks", "reference")
    table = pt.build_table(pt.load_results(ref_dir), ref_dir)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert pt.replace_block(readme, table, "README.md") == readme, (
        "README.md's performance table is stale: run "
        "`python benchmarks/perf_table.py --results benchmarks/reference --readme README.md`")
    assert "no results yet" not in table  # every row has committed figures


def _write(path, op, records, commit="abc"):
    with open(path, "w") as f:
        json.dump({"op": op, "environment": {"device_type": "cpu", "threads": 2, "commit": commit},
                   "records": records}, f)


def test_rows_come_from_the_newest_file_that_has_them(tmp_path):
    pt = _module()
    full = [{"impl": "eager", "N": 2048, "dtype": "float32", "mask": "100%", "median_ms": 100.0},
            {"impl": "fused", "N": 2048, "dtype": "float32", "mask": "100%", "median_ms": 20.0, "floor_ms": 10.0}]
    _write(tmp_path / "kd_loss-cpu-20260101-000000.json", "kd_loss", full, commit="old")
    # a newer quick run without N=2048 must not hide the older full figures
    _write(tmp_path / "kd_loss-cpu-20260102-000000.json", "kd_loss",
           [{"impl": "eager", "N": 512, "dtype": "float32", "mask": "100%", "median_ms": 1.0}])
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    row = next(ln for ln in table.splitlines() if ln.startswith("| kd_loss fwd+bwd, N=2048, V=50257, fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["100 ms", "20 ms", "5.0x faster", "10 ms", "2.00x"]
    assert "kd_loss-cpu-20260101-000000.json" in table and "20260102" not in table
    assert "no results yet for:" in table and "top_k_sample" in table.split("no results yet for:")[1]
    # a newer full run wins
    faster = [dict(full[0]), dict(full[1], median_ms=10.0)]
    _write(tmp_path / "kd_loss-cpu-20260103-000000.json", "kd_loss", faster)
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    assert "| 100 ms | 10 ms | 10.0x faster |" in table


def test_replace_block_and_bad_inputs(tmp_path):
    pt = _module()
    text = f"intro\n{pt.BEGIN}\nold\n{pt.END}\nrest\n"
    assert pt.replace_block(text, "NEW", "R") == f"intro\n{pt.BEGIN}\nNEW\n{pt.END}\nrest\n"
    with pytest.raises(SystemExit, match="no '<!-- perf-table:begin -->'"):
        pt.replace_block("no markers", "NEW", "R.md")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="broken.json: not a readable benchmark JSON"):
        pt.load_results(str(tmp_path))
