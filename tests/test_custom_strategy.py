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


# A method declared in one file (here, this test): its traits decide the run folder, the stage
# plan, the batch budget and the flag checks, with no edit anywhere in l2kd.
CUSTOM = '''
from l2kd.config import StrategyTraits
from l2kd.strategies import Strategy


class LllLookalike(Strategy):
    """A sequential method whose name merely contains "lll": nothing of lll's may stick to it."""
    name = "lll_x"


class JointPull(Strategy):
    """A joint method (one stage of every task) with a budget share of its own."""
    name = "joint_pull"
    traits = StrategyTraits(joint=True, memory_factor=0.2, accepts=frozenset({"multitask_specific"}),
                            refusals=(("unbound", "one joint stage has no boundaries"),))
'''


@pytest.fixture()
def custom_file(tmp_path):
    path = tmp_path / "my_methods.py"
    path.write_text(CUSTOM)
    return str(path)


def test_custom_traits_decide_folder_stages_budget_and_checks(custom_file, tmp_path, monkeypatch, tok_ids):
    from l2kd import TrainConfig
    from l2kd.config import ConfigError
    from l2kd.layout import plan_stages, run_dir_of, task_dir
    from l2kd.loop.checks import config_warnings
    from l2kd.strategies import StepSetup, load_custom_strategy
    from l2kd.strategies import base as strategy_base

    lookalike = load_custom_strategy(f"{custom_file}:LllLookalike")
    joint = load_custom_strategy(f"{custom_file}:JointPull")
    kw = dict(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=".", model_dir_root=str(tmp_path), model_name="tiny-gpt2")

    x = TrainConfig(seq_train_type="lll_x", gen_lm_sample_percentage=0.2, **kw)
    assert run_dir_of(x).endswith(os.path.join("lll_x", "rnnlg.rest_rnnlg.tv_seed_42"))  # no replay share
    assert plan_stages(x) == [["rnnlg.rest"], ["rnnlg.tv"]]
    assert any("has no effect with --seq_train_type lll_x" in w for w in config_warnings(x))  # it replays nothing
    with pytest.raises(ConfigError, match="--real_sample only applies to --seq_train_type lll$"):
        TrainConfig(seq_train_type="lll_x", real_sample=True, **kw)

    j = TrainConfig(seq_train_type="joint_pull", multitask_specific=True, upsample_data=(1, 2), **kw)
    rdir = run_dir_of(j)
    assert plan_stages(j) == [["rnnlg.rest", "rnnlg.tv"]] and task_dir(rdir, j.seq_train_type, "rnnlg.rest") == rdir
    with pytest.raises(ConfigError, match="--distil/--seq_distil are not supported with --seq_train_type joint_pull"):
        TrainConfig(seq_train_type="joint_pull", distil=True, **kw)
    with pytest.raises(ConfigError, match="--unbound 2 with --seq_train_type joint_pull: one joint stage"):
        TrainConfig(seq_train_type="joint_pull", unbound=2, **kw)
    with pytest.raises(ConfigError, match="--multitask_specific only applies"):
        TrainConfig(seq_train_type="lll_x", multitask_specific=True, **kw)

    factors = []
    monkeypatch.setattr(strategy_base, "budget_for_device",
                        lambda device, factor, cpu_tokens: factors.append(factor) or 1000.0 * factor)
    tok, ids = tok_ids
    setups = [StepSetup.build(c, len(tok), ids, torch.device("cpu"), s.traits)
              for c, s in ((j, joint), (x, lookalike))]
    assert factors == [0.2, 0.58]  # lll_x: a plain sequential method's share, not lll's 0.35
    assert setups[0].batch_budget == pytest.approx(200.0)
    assert joint.traits.joint and not lookalike.traits.replays


def test_a_custom_joint_strategy_trains_into_the_run_folder(custom_file, tmp_path, data_dir):
    from l2kd import TrainConfig, train_sequence
    from l2kd.strategies import load_custom_strategy

    strat = load_custom_strategy(f"{custom_file}:JointPull")
    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=data_dir, model_dir_root=str(tmp_path),
                      model_name="tiny-gpt2", seq_train_type=strat.name, learning_rate=1e-3, train_batch_size=8,
                      n_train_epochs=1, max_train_examples=8, quiet=True)
    summary = train_sequence(cfg, strat)
    rdir = os.path.join(str(tmp_path), "tiny-gpt2", "joint_pull", "rnnlg.rest_rnnlg.tv_seed_42")
    assert summary["run_dir"] == rdir and os.path.isfile(os.path.join(rdir, "model-finish"))
    assert list(summary["tasks"]) == ["rnnlg.rest+rnnlg.tv"] and summary["strategy"]["traits"]["joint"]


def test_a_report_may_not_overwrite_the_loops_keys(tmp_path, data_dir):
    from l2kd import TrainConfig, train_sequence
    from l2kd.strategies import Strategy

    class Boastful(Strategy):
        def after_task(self, ctx, model):
            return {"steps": 10**6, "note": "fine"}

    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=data_dir, model_dir_root=str(tmp_path), model_name="tiny-gpt2",
                      seq_train_type="finetune", learning_rate=1e-3, train_batch_size=8, n_train_epochs=1,
                      max_train_examples=8, quiet=True)
    with pytest.raises(ValueError, match="reports steps, which the loop writes"):
        train_sequence(cfg, Boastful())
