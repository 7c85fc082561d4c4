"""CLI flag parity with L2KD's settings.py (docs/original.md sections 1 and 5)."""
from __future__ import annotations

import os

import pytest

from l2kd.settings import build_parser, parse_args, run_dir, task_dir

# name -> default, exactly as K:settings.py (store_true flags default False).
ORIGINAL_FLAGS = {
    "adam_epsilon": 1e-4, "add_task_tokens": False, "debug": False, "decay_style": "linear", "distil": False,
    "dynamic_epochs": False, "extra_e2e": False, "fp32": False, "gen_lm_sample_percentage": 0.05,
    "learning_rate": 6.25e-5, "lm_lambda": 0.25, "logging_steps": 1000, "lr_schedule": "warmup_linear",
    "max_grad_norm": 1, "max_n_epochs": 9, "min_batch_size": 4, "min_n_steps": 1500, "model_name": "gpt2",
    "multitask_specific": False, "n_gpus": 1, "n_train_epochs": 9, "n_warmup_ratio": 0.005, "n_workers": 4,
    "qp_margin": 0.5, "real_sample": False, "ref1": False, "reg_lambda": 1.0, "round_robin": False, "seed": 42,
    "seq_distil": False, "seq_train_type": "lll", "skip_tasks": None, "tasks": ["squad2"], "temperature_kd": 2.0,
    "temperature_lm": 1.0, "temperature_qa": 1.0, "test_all": False, "test_batch_size": 0,
    "test_training_set": False, "tokens_weight": 5, "top_k_lm": 20, "top_k_qa": 20, "top_p_lm": 0.0,
    "top_p_qa": 0.0, "train_batch_size": 0, "unbound": 0, "upsample_data": None, "use_sep": False,
    "weight_decay": 0.01,
}
REQUIRED = ["data_dir", "model_dir_root"]


def test_all_51_original_flags_with_original_defaults(tmp_path):
    assert len(ORIGINAL_FLAGS) + len(REQUIRED) == 51
    args = parse_args(["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path)])
    for name, default in ORIGINAL_FLAGS.items():
        assert getattr(args, name) == default, name
        assert type(getattr(args, name)) is type(default) or default is None, name


def test_required_flags_and_types():
    parser = build_parser()
    for name in REQUIRED:
        with pytest.raises(SystemExit):
            parser.parse_args([f"--{n}=x" for n in REQUIRED if n != name])
    types = {a.dest: a.type for a in parser._actions}
    assert types["max_grad_norm"] is int and types["tokens_weight"] is float and types["top_k_qa"] is int


def test_seed_readme_command_line_parses(tmp_path):
    # run_seqkdsoft-NLG.sh style line from the L2KD README / scripts
    argv = ("--data_dir {d} --model_dir_root {d} --seq_train_type lll --model_name gpt2 --add_task_tokens "
            "--gen_lm_sample_percentage 0.2 --distil --seq_distil --n_train_epochs 9 --seed 531 "
            "--tasks e2enlg rnnlg.rest rnnlg.hotel rnnlg.tv rnnlg.laptop").format(d=tmp_path).split()
    args = parse_args(argv)
    assert args.tasks[-1] == "rnnlg.laptop" and args.distil and args.seq_distil and args.seed == 531


@pytest.mark.parametrize("bad, msg", [
    (["--tasks", "nope"], "unknown task"),
    (["--top_k_qa", "-1"], "--top_k_qa"),
    (["--gen_lm_sample_percentage", "-0.1"], "--gen_lm_sample_percentage"),
    (["--seq_train_type", "bogus"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--real_sample", "--seq_train_type", "finetune"], "--real_sample"),
    (["--tasks", "sst", "--skip_tasks", "srl"], "--skip_tasks"),
])
def test_bad_flags_exit_with_a_message(tmp_path, capsys, bad, msg):
    with pytest.raises(SystemExit) as e:
        parse_args(["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path)] + bad)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_missing_data_dir_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data_dir", str(tmp_path / "absent"), "--model_dir_root", str(tmp_path)])
    assert "--data_dir" in capsys.readouterr().err


def test_output_layout_matches_l2kd():
    assert run_dir("m", "gpt2", "lll", ["a", "b"], 0.2, 1) == os.path.join("m", "gpt2", "lll", "a_b_0.2_1")
    assert run_dir("m", "gpt2", "finetune", ["a", "b"], 0.2, 1) == os.path.join("m", "gpt2", "finetune", "a_b_seed_1")
    assert run_dir("m", "gpt2", "lll", ["a"], 0.05, 42).endswith("a_0.05_42")
    assert task_dir("X", "lll", "a") == os.path.join("X", "a")
    assert task_dir("X", "multitask", "a") == "X" and task_dir("X", "multilm", "a") == "X"


def test_unwritable_model_root_is_named(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(SystemExit):
        parse_args(["--data_dir", str(tmp_path), "--model_dir_root", str(f / "sub")])
    assert "--model_dir_root" in capsys.readouterr().err


def test_decay_style_exp_is_refused_before_anything_runs(tmp_path, capsys):
    """The original's parser takes --decay_style exp but no schedule implements it: refused at
    parse time naming the styles that work, not once warmup ends."""
    from l2kd.config import ConfigError, TrainConfig
    from l2kd.schedule import DECAY_STYLES, annealing_lr

    with pytest.raises(SystemExit):
        parse_args(["--data_dir", str(tmp_path), "--model_dir_root", str(tmp_path), "--decay_style", "exp"])
    err = capsys.readouterr().err
    assert "--decay_style: must be linear, cos or constant" in err and "(got exp)" in err
    with pytest.raises(ConfigError, match="--decay_style"):
        TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", decay_style="exp")
    for style in DECAY_STYLES:  # every style the check lets through runs past warmup
        assert annealing_lr(50, 1.0, 10, 100, style) >= 0.0


def test_every_flag_has_help_and_the_identity_sets_come_from_the_fields():
    from l2kd.config import RUNTIME, TEST, TrainConfig, keys_of
    from l2kd.distillation import _STUDENT_ONLY
    from l2kd.reporting import runtime_keys
    from l2kd.run_identity import RUNTIME_KEYS

    parser = build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 51 and all(a.help for a in flags), [a.dest for a in flags if not a.help]
    no_kernels = next(a for a in flags if a.dest == "no_kernels")
    assert "chunked head+cross-entropy is plain PyTorch and stays on" in no_kernels.help
    assert RUNTIME_KEYS == keys_of(TrainConfig, (RUNTIME, TEST)) and "use_kernels" in RUNTIME_KEYS
    assert "learning_rate" not in RUNTIME_KEYS and "teacher_dir" not in RUNTIME_KEYS
    assert runtime_keys() == {"seed"} | keys_of(TrainConfig, (RUNTIME,))
    assert set(_STUDENT_ONLY) == {"temperature_kd", "reg_lambda", "qp_margin", "reg_anchor", "ref1", "distil_weighting", "distil_qa_only",
                                  "teacher_n_train_epochs", "teacher_learning_rate"}


def test_no_kernels_is_stored_once():
    from l2kd.config import TrainConfig

    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", use_kernels=False)
    assert not cfg.lm_sampling.use_kernels and not cfg.qa_sampling.use_kernels
