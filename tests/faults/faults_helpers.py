"""Helpers of the fault suite: tiny runs through the command line, and the bytes of every
finished task model (which no fault may change)."""  # imported by the tests as faults_helpers
from __future__ import annotations

import glob
import os
import shutil
from typing import Dict, List

from l2kd import train as train_cli

TASKS = ("rnnlg.rest", "rnnlg.tv")


def argv(data_dir: str, root, *extra: str, kind: str = "finetune", tasks=TASKS) -> List[str]:
    """A tiny run (tiny-gpt2, 16 examples, 1 epoch, batch 8) of ``tasks``."""
    return ["--data_dir", str(data_dir), "--model_dir_root", str(root), "--model_name", "tiny-gpt2",
            "--seq_train_type", kind, "--tasks", *tasks, "--n_train_epochs", "1", "--train_batch_size", "8",
            "--max_train_examples", "16", "--max_test_examples", "4", "--learning_rate", "1e-3", "--top_k_qa", "1",
            "--quiet", "--seed", "5", *extra]


def run_dir(root, kind: str = "finetune", tasks=TASKS) -> str:
    suffix = "_0.05_5" if "lll" in kind else "_seed_5"
    return os.path.join(str(root), "tiny-gpt2", kind, "_".join(tasks) + suffix)


def finished_models(rdir: str) -> Dict[str, bytes]:
    """Task folder name -> bytes of its ``model-finish``."""
    return {os.path.basename(os.path.dirname(p)): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(rdir, "*", "model-finish")))}


def train(args: List[str], capsys) -> (int, str):
    """``python -m l2kd.train ARGS`` in process: (exit status, stderr)."""
    capsys.readouterr()
    code = train_cli.main(args)
    return code, capsys.readouterr().err


def copy_data(data_dir: str, dest, tasks=TASKS):
    """A data folder of its own holding ``tasks``' train and test files."""
    os.makedirs(dest, exist_ok=True)
    for t in tasks:
        for split in ("train", "test"):
            shutil.copy(os.path.join(data_dir, f"{t}_to_squad-{split}-v2.0.json"), dest)
    return str(dest)


def clone(root, dest) -> str:
    shutil.copytree(str(root), str(dest))
    return str(dest)
