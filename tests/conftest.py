"""Shared fixtures: the real GPT-2 tokenizer with LAMOL's tokens, a tiny GPT-2, the bundled data."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from l2kd.data import bundled_data_dir
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer


@pytest.fixture(scope="session")
def base_tok():
    return load_base_tokenizer("tiny-gpt2")


@pytest.fixture()
def tok_ids(base_tok):
    """A fresh copy of the tokenizer with __ans__/__pad__/__unk__/__gen__ added."""
    import copy

    tok = copy.deepcopy(base_tok)
    ids = add_special_tokens(tok, ["rnnlg.rest"], add_task_tokens=False, use_sep=False)
    return tok, ids


@pytest.fixture(scope="session")
def data_dir() -> str:
    return bundled_data_dir()


@pytest.fixture()
def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50261, n_layer=2, n_head=2, n_embd=32, n_positions=128)
    return GPT2LMHeadModel(cfg)


@pytest.fixture
def load_benchmark():
    """Import a file of ``benchmarks/`` (a folder of scripts, not a package) by name."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(root, "benchmarks", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod

    return load
