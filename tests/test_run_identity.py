"""A run folder knows what it learnt: mismatched reuse is refused, the same command resumes,
a second process is locked out, configs validate themselves, test settings sit beside scores."""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest
import torch

from l2kd.config import ConfigError, SamplingConfig, TrainConfig
from l2kd.evaluate import evaluate_run
from l2kd.layout import LOCK
from l2kd.loop import train_sequence
from l2kd.run_identity import IdentityMismatch, RunLock, RunLocked, differences, learning_config
from l2kd.settings import parse_args

TASKS = ("rnnlg.rest", "rnnlg.tv")


def _cfg(root, data_dir, **kw):
    base = dict(tasks=TASKS, data_dir=data_dir, model_dir_root=str(root), model_name="tiny-gpt2",
                seq_train_type="finetune", learning_rate=1e-3, train_batch_size=8, n_train_epochs=1,
                max_train_examples=16, max_test_examples=4, qa_sampling=SamplingConfig(top_k=1), quiet=True, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def _rdir(root, kind="finetune"):
    return os.path.join(str(root), "tiny-gpt2", kind, "rnnlg.rest_rnnlg.tv_seed_5")


def _models(rdir):
    return {p: open(p, "rb").read() for p in sorted(glob.glob(os.path.join(rdir, "*", "model-finish")))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from l2kd.data import bundled_data_dir

    root = tmp_path_factory.mktemp("identity")
    cfg = _cfg(root, bundled_data_dir())
    train_sequence(cfg)
    return root, cfg


def test_learning_config_leaves_out_runtime_keys(tmp_path):
    cfg = _cfg(tmp_path, str(tmp_path))
    ident = learning_config(cfg)
    assert "learning_rate" in ident and "tasks" in ident and "lm_sampling" in ident
    for k in ("device", "quiet", "logging_steps", "max_test_examples", "qa_sampling", "use_kernels"):
        assert k not in ident
    other = learning_config(dataclasses.replace(cfg, learning_rate=5e-4, device="cpu", quiet=False))
    assert differences(ident, other) == ["learning_rate: 0.001 -> 0.0005"]


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"learning_rate": 5e-4}, {"max_train_examples": 24}, {"lm_lambda": 0.5}])
def test_reuse_with_other_learning_flags_is_refused(trained, change):
    root, cfg = trained
    rdir = _rdir(root)
    before = _models(rdir)
    record = open(os.path.join(rdir, "l2kd_run.json")).read()
    with pytest.raises(IdentityMismatch) as e:
        train_sequence(dataclasses.replace(cfg, **change))
    msg = str(e.value)
    key = next(iter(change))
    assert f"{key}:" in msg and "rnnlg.rest/l2kd_task.json" in msg
    assert "--model_dir_root" in msg and "--discard_stale" in msg
    assert _models(rdir) == before  # nothing retrained, nothing overwritten
    assert open(os.path.join(rdir, "l2kd_run.json")).read() == record


@pytest.mark.slow
def test_same_command_reuses_and_runtime_flags_do_not_matter(trained, caplog):
    root, cfg = trained
    rdir = _rdir(root)
    before = _models(rdir)
    summary = train_sequence(dataclasses.replace(cfg, logging_steps=3, max_test_examples=2, device="cpu"))
    assert _models(rdir) == before
    assert summary["identity"] == learning_config(cfg)
    for t in TASKS:
        with open(os.path.join(rdir, t, "l2kd_task.json")) as f:
            assert json.load(f)["identity"] == learning_config(cfg)


@pytest.mark.slow
def test_cli_refusal_exit_status_and_message(trained, capsys):
    from l2kd import train as train_cli

    root, cfg = trained
    argv = ["--data_dir", cfg.data_dir, "--model_dir_root", str(root), "--model_name", "tiny-gpt2",
            "--seq_train_type", "finetune", "--tasks", *TASKS, "--seed", "5", "--learning_rate", "2e-3",
            "--train_batch_size", "8", "--n_train_epochs", "1", "--max_train_examples", "16", "--quiet"]
    assert train_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "different configuration" in err and "learning_rate: 0.001 -> 0.002" in err and "--discard_stale" in err


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_refused(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, tasks=("rnnlg.rest",))
    tdir = os.path.join(str(tmp_path), "tiny-gpt2", "finetune", "rnnlg.rest_seed_5", "rnnlg.rest")
    os.makedirs(tdir)
    other = learning_config(dataclasses.replace(cfg, n_train_epochs=3))
    torch.save({"identity": other, "model": {}}, os.path.join(tdir, "checkpoint.pt"))
    with pytest.raises(IdentityMismatch, match=r"checkpoint.pt: n_train_epochs: 3 -> 1"):
        train_sequence(cfg)


@pytest.mark.slow
def test_discard_stale_moves_old_tasks_aside_and_retrains(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir)
    train_sequence(cfg)
    rdir = _rdir(tmp_path)
    old = _models(rdir)
    new_cfg = dataclasses.replace(cfg, learning_rate=5e-4, discard_stale=True)
    summary = train_sequence(new_cfg)
    (aside,) = glob.glob(os.path.join(rdir, "stale-*"))
    assert sorted(os.listdir(aside)) == ["l2kd_run.json", "rnnlg.rest", "rnnlg.tv"]
    for path, data in old.items():  # the old models are kept, byte for byte, in the stale folder
        assert open(path.replace(rdir, aside), "rb").read() == data
    assert summary["identity"]["learning_rate"] == 5e-4
    assert _models(rdir).keys() == old.keys() and _models(rdir) != old


@pytest.mark.slow
def test_second_process_is_locked_out_and_stale_lock_is_taken_over(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, tasks=("rnnlg.rest",))
    rdir = os.path.join(str(tmp_path), "tiny-gpt2", "finetune", "rnnlg.rest_seed_5")
    os.makedirs(rdir)
    holder = RunLock(os.path.join(rdir, LOCK))
    holder.acquire()  # another open file description: the same as another process for flock
    try:
        with pytest.raises(RunLocked, match=rf"in use by another l2kd process \(pid {os.getpid()} on"):
            train_sequence(cfg)
        assert not os.path.exists(os.path.join(rdir, "rnnlg.rest", "model-finish"))
    finally:
        holder.release()
    with open(os.path.join(rdir, LOCK), "w") as f:  # left by a killed run: nobody holds the flock
        json.dump({"pid": 999999, "host": "elsewhere", "started": "yesterday"}, f)
    train_sequence(cfg)
    assert os.path.isfile(os.path.join(rdir, "rnnlg.rest", "model-finish"))
    assert json.load(open(os.path.join(rdir, LOCK)))["pid"] == os.getpid()


@pytest.mark.slow
def test_test_settings_are_recorded_beside_the_scores(trained):
    root, cfg = trained
    result = evaluate_run(dataclasses.replace(cfg, max_test_examples=3), quiet=True)
    with open(os.path.join(_rdir(root), "accuracy_matrix.json")) as f:
        saved = json.load(f)
    assert saved["test_settings"] == result["test_settings"]
    assert saved["test_settings"]["max_test_examples"] == 3 and saved["test_settings"]["top_k_qa"] == 1


@pytest.mark.parametrize("bad, flags, msg", [
    ({"learning_rate": -1.0}, ["--learning_rate", "-1"], "--learning_rate: must be > 0 (got -1.0)"),
    ({"qa_sampling": SamplingConfig(top_k=-2)}, ["--top_k_qa", "-2"], "--top_k_qa: must be >= 0 (0 = no top-k) (got -2)"),
    ({"reg_anchor": "middle"}, None, "--reg_anchor: must be initial or previous (got middle)"),
    ({"seq_train_type": "multitask", "distil": True}, ["--seq_train_type", "multitask", "--distil"],
     "--distil/--seq_distil are not supported with --seq_train_type multitask"),
    ({"tasks": ("rnnlg.rest", "nope")}, ["--tasks", "rnnlg.rest", "nope"], "--tasks: unknown task(s) nope"),
])
def test_config_and_cli_refuse_the_same_with_the_same_message(tmp_path, capsys, bad, flags, msg):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, str(tmp_path), **bad)
    assert msg in str(e.value)
    if flags is None:
        return
    with pytest.raises(SystemExit) as ex:
        parse_args(["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path)] + flags)
    assert ex.value.code == 2 and msg in capsys.readouterr().err


def test_api_checks_paths_when_the_run_starts(tmp_path):
    from l2kd.config import check_paths

    cfg = _cfg(tmp_path, str(tmp_path / "absent"))  # a config may describe another machine's run
    with pytest.raises(ConfigError, match="--data_dir: .* is not a directory"):
        check_paths(cfg)
    with pytest.raises(ConfigError, match="--data_dir"):
        train_sequence(cfg)


def test_custom_strategy_must_name_itself(tmp_path):
    from l2kd.strategies import load_custom_strategy

    f = tmp_path / "mine.py"
    f.write_text("from l2kd.strategies import Strategy, LAMOL\n"
                 "class NoName(Strategy):\n    pass\n"
                 "class Builtin(LAMOL):\n    name = 'lll'\n"
                 "class Good(LAMOL):\n    name = 'my_lamol'\n"
                 "class Child(Good):\n    pass\n")
    for cls in ("NoName", "Builtin"):
        with pytest.raises(ValueError, match="must set its own class attribute `name`"):
            load_custom_strategy(f"{f}:{cls}")
    assert load_custom_strategy(f"{f}:Good").name == "my_lamol"
    assert load_custom_strategy(f"{f}:Child").name == "my_lamol"  # a user's own base names it
