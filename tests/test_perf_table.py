"""The README's performance table is what benchmarks/perf_table.py makes of the committed results."""
from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_table_matches_committed_results(load_benchmark):
    pt = load_benchmark("perf_table")
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


def test_rows_come_from_the_newest_file_that_has_them(load_benchmark, tmp_path):
    pt = load_benchmark("perf_table")
    full = [{"impl": "eager", "N": 2048, "dtype": "float32", "mask": "100%", "median_ms": 100.0},
            {"impl": "fused", "N": 2048, "dtype": "float32", "mask": "100%", "median_ms": 20.0, "floor_ms": 10.0}]
    _write(tmp_path / "kd_loss-cpu-20260101-000000.json", "kd_loss", full, commit="old")
    # a newer quick run without N=2048 must not hide the older full figures
    _write(tmp_path / "kd_loss-cpu-20260102-000000.json", "kd_loss",
           [{"impl": "eager", "N": 512, "dtype": "float32", "mask": "100%", "median_ms": 1.0}])
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    row = next(ln for ln in table.splitlines() if ln.startswith("| kd_loss fwd+bwd, N=2048, V=50257, fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # no peer figures in these files: the torch.compile column is empty, no Liger / CCE columns
    assert cells[1:] == ["100 ms", "", "20 ms", "5.0x faster", "", "10 ms", "2.00x"]
    assert "| Liger |" not in table and "| CCE |" not in table
    assert "kd_loss-cpu-20260101-000000.json" in table and "20260102" not in table
    assert "no results yet for:" in table and "top_k_sample" in table.split("no results yet for:")[1]
    # a newer full run wins
    faster = [dict(full[0]), dict(full[1], median_ms=10.0)]
    _write(tmp_path / "kd_loss-cpu-20260103-000000.json", "kd_loss", faster)
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    assert "| 100 ms |  | 10 ms | 10.0x faster |" in table


def test_replace_block_and_bad_inputs(load_benchmark, tmp_path):
    pt = load_benchmark("perf_table")
    text = f"intro\n{pt.BEGIN}\nold\n{pt.END}\nrest\n"
    assert pt.replace_block(text, "NEW", "R") == f"intro\n{pt.BEGIN}\nNEW\n{pt.END}\nrest\n"
    with pytest.raises(SystemExit, match="no '<!-- perf-table:begin -->'"):
        pt.replace_block("no markers", "NEW", "R.md")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="broken.json: not a readable benchmark JSON"):
        pt.load_results(str(tmp_path))


def test_peer_columns_ratios_and_reasons(load_benchmark, tmp_path):
    pt = load_benchmark("perf_table")
    case = {"N": 2048, "dtype": "float32", "mask": "100%"}
    recs = [dict(case, impl="eager", median_ms=100.0), dict(case, impl="fused", median_ms=20.0, floor_ms=10.0),
            dict(case, impl="torch_compile", median_ms=50.0),
            dict(case, impl="liger", skipped="liger_kernel runs on CUDA only"),
            dict(case, impl="cce", skipped="cut-cross-entropy computes cross-entropy")]
    bf = {"N": 2048, "dtype": "bfloat16", "mask": "100%"}
    recs += [dict(bf, impl="eager", median_ms=90.0), dict(bf, impl="fused", median_ms=30.0, floor_ms=10.0),
             dict(bf, impl="torch_compile", skipped="torch.compile failed: no compiler")]
    _write(tmp_path / "kd_loss-cpu-20260101-000000.json", "kd_loss", recs)
    top = {"B": 64, "top_p": 0.0, "dtype": "float32", "ref_ms": 9.0, "fused_ms": 3.0, "floor_ms": 1.0}
    _write(tmp_path / "top_k_sample-cpu-20260101-000000.json", "top_k_sample",
           [dict(top, compile_ms=2.0), dict(top, top_p=0.9, compile_error="torch.compile failed: boom")])
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    header = table.splitlines()[0]
    assert "| torch.compile |" in header and "Liger" not in header and "CCE" not in header

    def cells(prefix):
        row = next(ln for ln in table.splitlines() if ln.startswith("| " + prefix))
        return [c.strip() for c in row.strip("|").split("|")][1:]

    assert cells("kd_loss fwd+bwd, N=2048, V=50257, fp32") == [
        "100 ms", "50 ms", "20 ms", "5.0x faster", "2.5x faster than torch.compile", "10 ms", "2.00x"]
    assert cells("kd_loss fwd+bwd, N=2048, V=50257, bf16")[:3] == ["90 ms", "not run", "30 ms"]
    # a peer faster than l2kd is reported as such, not hidden
    assert cells("top_k_sample, B=64")[1:5] == ["2 ms", "3 ms", "3.0x faster", "1.5x slower than torch.compile"]
    assert cells("top_k_sample + top-p 0.9")[1] == "not run"
    assert "torch.compile failed: no compiler" in table and "torch.compile failed: boom" in table
    assert "Liger: liger_kernel runs on CUDA only" in table
    # a timed Liger figure brings its column
    recs[3] = dict(case, impl="liger", median_ms=10.0)
    _write(tmp_path / "kd_loss-cpu-20260102-000000.json", "kd_loss", recs)
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))
    assert "| Liger |" in table.splitlines()[0]
    assert "2.0x slower than Liger" in table


def test_kd_loss_floor_is_the_larger_of_bytes_and_arithmetic(load_benchmark, tmp_path):
    pt = load_benchmark("perf_table")
    case = {"N": 2048, "dtype": "float32", "mask": "100%"}
    recs = [dict(case, impl="eager", median_ms=100.0),
            dict(case, impl="fused", median_ms=20.0, floor_ms=5.0, compute_floor_ms=16.0)]
    bf = {"N": 2048, "dtype": "bfloat16", "mask": "100%"}
    recs += [dict(bf, impl="eager", median_ms=90.0),
             dict(bf, impl="fused", median_ms=30.0, floor_ms=10.0, compute_floor_ms=float("nan"))]
    path = tmp_path / "kd_loss-cpu-20260101-000000.json"
    with open(path, "w") as f:
        json.dump({"op": "kd_loss", "environment": {"device_type": "cpu", "threads": 2, "commit": "abc",
                                                    "uncommitted_changes": True},
                   "config": {"read_gbps": 40.0, "write_gbps": 36.0, "bandwidth_source": "measured: test"},
                   "records": recs}, f)
    table = pt.build_table(pt.load_results(str(tmp_path)), str(tmp_path))

    def tail(prefix):
        row = next(ln for ln in table.splitlines() if ln.startswith("| " + prefix))
        return [c.strip() for c in row.strip("|").split("|")][-2:]

    assert tail("kd_loss fwd+bwd, N=2048, V=50257, fp32") == ["16 ms", "1.25x"]  # arithmetic-bound
    assert tail("kd_loss fwd+bwd, N=2048, V=50257, bf16") == ["10 ms", "3.00x"]  # no compute floor: bytes
    assert "commit abc + uncommitted changes, floor at 40.0 GB/s read / 36.0 GB/s write (measured)" in table
