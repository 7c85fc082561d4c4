"""The GPU side-by-side harness (benchmarks/parity/gpu_side_by_side.py) and its shim for the
original, on CPU: the dry run, the GPU query stand-in, the start-up hooks, data_attrs.json."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(ROOT, "benchmarks", "parity")
SHIM = os.path.join(PARITY, "shim")


@pytest.fixture
def harness():
    sys.path.insert(0, PARITY)
    try:
        spec = importlib.util.spec_from_file_location("gpu_side_by_side", os.path.join(PARITY, "gpu_side_by_side.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(PARITY)


def _fake_original(tmp_path):
    orig = tmp_path / "L2KD"
    orig.mkdir()
    for name in ("train.py", "test.py", "settings.py"):
        (orig / name).write_text("")
    attrs = {t: {s: {"data_size": 6000, "max_a_len": 100} for s in ("train", "eval", "test")}
             for t in ("rnnlg.rest", "rnnlg.hotel", "rnnlg.tv")}
    (orig / "data_attrs.json").write_text(json.dumps(attrs))
    return orig


def test_dry_run_prints_every_step_and_makes_the_data(harness, tmp_path, capsys):
    orig = _fake_original(tmp_path)
    rc = harness.main(["--home", str(tmp_path / "h"), "--orig", str(orig), "--orig-python", sys.executable,
                       "--train", "5", "--test", "3", "--l2kd-amp", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "would stop" not in out
    lines = {line.split(":")[0]: line for line in out.splitlines() if ": cd " in line}
    assert set(lines) == {"init", "orig_train", "l2kd_train", "orig_test", "l2kd_test", "l2kd_train_amp", "l2kd_test_amp"}
    assert f"PYTHONPATH={SHIM}" in lines["orig_train"] and "--fp32" in lines["orig_train"]
    assert "-m l2kd.train" in lines["l2kd_train"] and "--device cuda" in lines["l2kd_train"]
    assert "--fp32" in lines["l2kd_train"] and "--fp32" not in lines["l2kd_train_amp"]
    with open(tmp_path / "h" / "data" / "rnnlg.rest_to_squad-train-v2.0.json") as f:
        assert len(json.load(f)["data"]) == 5
    assert json.loads((orig / "data_attrs.json").read_text())["rnnlg.rest"]["train"]["data_size"] == 6000  # untouched


def test_missing_checkout_is_named(harness, tmp_path, capsys):
    rc = harness.main(["--home", str(tmp_path), "--orig", str(tmp_path / "none"), "--orig-python", sys.executable])
    assert rc == 2 and "no train.py" in capsys.readouterr().err


def test_data_attrs_get_the_cut_sizes_and_keep_the_full_file(harness, tmp_path):
    orig = _fake_original(tmp_path)
    harness.set_data_attrs(str(orig), {"rnnlg.rest": {"train": 400, "test": 60}})
    harness.set_data_attrs(str(orig), {"rnnlg.rest": {"train": 300, "test": 50}})  # from the full file again
    attrs = json.loads((orig / "data_attrs.json").read_text())
    assert attrs["rnnlg.rest"]["train"]["data_size"] == 300 and attrs["rnnlg.rest"]["test"]["data_size"] == 50
    assert attrs["rnnlg.rest"]["eval"]["data_size"] == 50 and attrs["rnnlg.tv"]["train"]["data_size"] == 6000
    assert json.loads((orig / "data_attrs.json.full").read_text())["rnnlg.rest"]["train"]["data_size"] == 6000


def _run_with_shim(code, extra_path, env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SHIM, *extra_path]), **(env or {})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_gpu_query_stand_in_reports_no_device_without_cuda():
    out = _run_with_shim("import GPUtil; print(GPUtil.getAvailable(maxLoad=0.05, maxMemory=0.05, limit=1), "
                         "GPUtil.getGPUs())", [])
    assert out == "[] []"


def test_start_up_hooks_redirect_gpt2_and_silence_perl_rouge(tmp_path):
    pkg = tmp_path / "pytorch_transformers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "class PreTrainedModel:\n    @classmethod\n    def from_pretrained(cls, source, *a, **k):\n"
        "        return (cls.__name__, source)\n"
        "class PretrainedConfig(PreTrainedModel):\n    pass\n"
        "class GPT2LMHeadModel(PreTrainedModel):\n    pass\n")
    (tmp_path / "metrics.py").write_text("from pyrouge import Rouge155\nfrom sacrebleu import corpus_bleu\nimport rouge\n"
                                         "from text.torchtext.datasets.generic import Query\n"
                                         "def computeROUGE(greedy, answer):\n    raise RuntimeError('perl')\n")
    out = _run_with_shim("import pytorch_transformers as p, metrics; "
                         "print(p.GPT2LMHeadModel.from_pretrained('gpt2'), p.PretrainedConfig.from_pretrained('x'), "
                         "sorted(metrics.computeROUGE([], [])))", [str(tmp_path)], {"PARITY_INIT_DIR": "/init"})
    assert out == ("('GPT2LMHeadModel', '/init') ('PretrainedConfig', 'x') "
                   "['rouge_1_f_score', 'rouge_2_f_score', 'rouge_l_f_score']")


def test_memory_peak_and_tables(harness):
    seq = iter([1000.0, 1500.0, 1200.0] + [1100.0] * 1000)
    with harness.MemoryPeak(probe=lambda: next(seq), every_s=0.001) as mem:
        import time

        time.sleep(0.05)
    assert mem.peak == 500.0
    assert harness.MemoryPeak(probe=lambda: None).peak is None
    R = harness.matrix({"rnnlg.rest": {"rnnlg.rest": {"avg_rouge": 40.0}, "rnnlg.hotel": {"avg_rouge": 30.0}}})
    assert R == [[40.0, 30.0], [None, None]]
    text = harness.format_matrix("t", [[40.0, 30.0], [35.0, 45.0]])
    assert "| rnnlg.hotel | 35.00 | 45.00 |" in text and "final average: 40.00" in text
    ok = lambda w: {"rc": 0, "wall_s": w}  # noqa: E731
    assert harness.ratios({"orig_train": ok(44.0), "l2kd_train": ok(11.0), "orig_test": ok(17.0),
                           "l2kd_test": {"rc": 1, "wall_s": 1.0}}) == {"train_wall_orig_over_l2kd": 4.0}
