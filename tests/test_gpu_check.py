"""scripts/gpu_check.sh --dry-run: every step of the GPU check on CPU at toy sizes, so a change that
breaks the GPU check (a benchmark's flags, the build, the summary) fails here, not on the GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from l2kd.ops import has_compiled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = ("kd_loss", "top_k_sample", "gem_project", "gem_step", "kd_throughput")


def _dry_run(out, *flags: str, timeout: int = 600) -> None:
    """``gpu_check.sh --dry-run FLAGS --out OUT`` with this interpreter; asserts it passed."""
    env = {**os.environ, "PYTHON": sys.executable, "PATH": os.environ.get("PATH", "")}
    env.pop("L2KD_BENCH_RESULTS", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run", *flags, "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not has_compiled("gem_project"), reason="l2kd._C is not built (the dry run self-checks it)")
def test_dry_run_runs_every_step_and_writes_one_archive(tmp_path):
    out = tmp_path / "check"
    _dry_run(out)
    archive = tmp_path / "check.tar.gz"
    assert archive.exists()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        summary = tar.extractfile("check/gpu_check_summary.txt").read().decode()
    for part in ("packages", "build", "selfcheck", "registered", "tests", "perf_table") + tuple(
            f"bench_{b}" for b in BENCHMARKS[:4]) + ("kd_throughput",):
        assert f"check/{part}.log" in names, part
    for op in BENCHMARKS:
        assert any(n.startswith(f"check/json/{op}-cpu-") and n.endswith(".json") for n in names), op
    assert "DRY RUN" in summary and "all parts passed" in summary
    assert "GPU:      none (dry run)" in summary
    assert "torch:" in summary and "CUDA:" in summary
    assert "compiler: extension built by" in summary and "torch built with" in summary
    assert len(summary.splitlines()) <= 40  # one screen


def test_unknown_argument_is_refused():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--bogus"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument: --bogus" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not has_compiled("gem_project"), reason="l2kd._C is not built (the dry run self-checks it)")
def test_speed_dry_run_writes_the_e2e_rows_eager_and_compiled(tmp_path):
    out = tmp_path / "speed"
    _dry_run(out, "--speed", timeout=900)
    with tarfile.open(tmp_path / "speed.tar.gz") as tar:
        names = tar.getnames()
    assert "speed/e2e.log" in names and "speed/e2e_compiled.log" in names
    assert "speed/tests.log" not in names  # --speed replaces the op tests and benchmarks
    rows = [n for n in names if n.startswith("speed/json/e2e-cpu-") and n.endswith(".json")]
    assert len(rows) == 2, names
    modes = sorted(json.load(open(out / "json" / os.path.basename(n)))["config"]["torch_compile"] for n in rows)
    assert modes == ["off", "reduce-overhead"]
