"""A user strategy in its own file runs through the API and through the CLI."""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.slow
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "custom_strategy.py")


def test_custom_strategy_api_and_cli(tmp_path, data_dir):
    from l2kd import TrainConfig, train_sequence
    from l2kd import test as test_cli
    from l2kd import train as train_cli
    from l2kd.strategies import load_custom_strategy

    strat = load_custom_strategy(f"{EXAMPLE}:L2Pull")
    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=data_dir, model_dir_root=str(tmp_path / "api"),
                      model_name="tiny-gpt2", seq_train_type=strat.name, learning_rate=1e-3, train_batch_size=8,
                      n_train_epochs=1, max_train_examples=8, quiet=True)
    summary = train_sequence(cfg, strat)
    assert summary["run_dir"].endswith(os.path.join("l2_pull", "rnnlg.rest_rnnlg.tv_seed_42"))
    assert set(strat.anchor) and all(torch.isfinite(v).all() for v in strat.anchor.values())

    argv = ["--data_dir", data_dir, "--model_dir_root", str(tmp_path / "cli"), "--model_name", "tiny-gpt2",
            "--custom_strategy", f"{EXAMPLE}:L2Pull", "--tasks", "rnnlg.rest", "rnnlg.tv", "--n_train_epochs", "1",
            "--train_batch_size", "8", "--max_train_examples", "8", "--max_test_examples", "4", "--top_k_qa", "1",
            "--quiet"]
    assert train_cli.main(argv) == 0 and test_cli.main(argv) == 0
    rdir = tmp_path / "cli" / "tiny-gpt2" / "l2_pull" / "rnnlg.rest_rnnlg.tv_seed_42"
    assert (rdir / "rnnlg.tv" / "strategy_state.pt").is_file() and (rdir / "accuracy_matrix.json").is_file()


def test_bad_custom_strategy_spec():
    from l2kd.strategies import load_custom_strategy

    with pytest.raises(ValueError, match="FILE.py:Class"):
        load_custom_strategy("nocolon")
    with pytest.raises(FileNotFoundError):
        load_custom_strategy("/nonexistent/x.py:A")
    with pytest.raises(ValueError, match="not a l2kd.strategies.Strategy"):
        load_custom_strategy(f"{EXAMPLE}:torch")
