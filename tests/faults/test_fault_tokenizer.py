"""A model folder without tokenizer files, a tokenizer that is not the model's, examples that
encode to nothing: the bundled GPT-2 BPE stands in where it fits, else the run stops before
training, naming the folder."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from faults_helpers import argv, train
from l2kd.data.qa_format import Encoded
from l2kd.loop.checks import check_encoded, check_tokenizer
from l2kd.tokenizer import GPT2_VOCAB_SIZE, TOKENIZER_FILES, bundled_for_bare_model_dir, load_base_tokenizer


def _bare_model(path, vocab: int = GPT2_VOCAB_SIZE, save_weights: bool = True) -> str:
    """``GPT2LMHeadModel(...).save_pretrained(dir)``: weights and config, no tokenizer files."""
    cfg = GPT2Config(vocab_size=vocab, n_layer=1, n_head=2, n_embd=16, n_positions=256, bos_token_id=50256,
                     eos_token_id=50256)
    if save_weights:
        torch.manual_seed(0)
        GPT2LMHeadModel(cfg).save_pretrained(path)
    else:
        cfg.save_pretrained(path)
    assert not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES)
    return str(path)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_bare_gpt2_folder_gets_the_bundled_bpe_and_says_so(tmp_path):
    folder = _bare_model(tmp_path / "bare", save_weights=False)
    lines, logger = _Lines(), logging.getLogger("l2kd")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        tok = load_base_tokenizer(folder)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert len(tok) == GPT2_VOCAB_SIZE and tok.encode(" hello world") == [23748, 995]
    assert any("no tokenizer files" in ln and "bundled" in ln for ln in lines.lines)


def test_bare_folder_of_another_vocabulary_is_refused(tmp_path):
    folder = _bare_model(tmp_path / "other", vocab=1000, save_weights=False)
    with pytest.raises(FileNotFoundError) as e:
        bundled_for_bare_model_dir(folder)
    assert folder in str(e.value) and "1000" in str(e.value) and "tokenizer.save_pretrained" in str(e.value)


def test_folder_with_its_tokenizer_is_left_alone(tmp_path, base_tok):
    folder = _bare_model(tmp_path / "full", save_weights=False)
    base_tok.save_pretrained(folder)
    assert bundled_for_bare_model_dir(folder) is None


def test_a_tokenizer_smaller_than_the_model_is_refused(base_tok):
    class OneToken:  # what transformers 5 builds for a folder without tokenizer files
        def __len__(self) -> int:
            return 1

    with pytest.raises(ValueError, match="the tokenizer has 1 tokens but the model's embedding has 50257 rows"):
        check_tokenizer(OneToken(), 50257, "/models/x")
    check_tokenizer(base_tok, 50257, "gpt2")


def test_examples_that_encode_to_nothing_stop_the_run():
    empty = [Encoded(cq=[50257], answer=[], gen_id=50260, task="rnnlg.rest") for _ in range(8)]
    with pytest.raises(ValueError, match=r"\[rnnlg.rest\] 8 of 8 training examples encode to fewer than 2 tokens"):
        check_encoded(empty, "rnnlg.rest", "/models/x", 5)
    full = [Encoded(cq=[10, 11, 50257], answer=[12], gen_id=50260, task="rnnlg.rest") for _ in range(8)]
    check_encoded(full + empty[:7], "rnnlg.rest", "/models/x", 50261)  # a minority of short ones is data


def test_cli_model_folder_with_a_foreign_tokenizer_stops_before_training(tmp_path, data_dir, capsys):
    folder = _bare_model(tmp_path / "model")
    # the 1-token tokenizer transformers builds for such folders, saved as the folder's own
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({"<|endoftext|>": 0}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    args = argv(data_dir, tmp_path / "runs")
    args[args.index("tiny-gpt2")] = folder
    code, err = train(args, capsys)
    assert code == 1
    assert "l2kd.train: error: --model_name" in err and folder in err and "not this model's tokenizer" in err
    rdir = os.path.join(tmp_path, "runs", "model", "finetune", "rnnlg.rest_rnnlg.tv_seed_5")
    assert "fatal: --model_name" in open(os.path.join(rdir, "log_train.txt")).read()
    assert not os.path.exists(os.path.join(rdir, "rnnlg.rest"))  # nothing trained


@pytest.mark.slow
def test_cli_bare_gpt2_folder_trains_with_the_bundled_bpe(tmp_path, data_dir, capsys):
    folder = _bare_model(tmp_path / "model")
    args = argv(data_dir, tmp_path / "runs", tasks=("rnnlg.rest",))
    args[args.index("tiny-gpt2")] = folder
    code, err = train(args, capsys)
    assert code == 0, err
    tdir = os.path.join(tmp_path, "runs", "model", "finetune", "rnnlg.rest_seed_5", "rnnlg.rest")
    state = torch.load(os.path.join(tdir, "model-finish"), weights_only=True)
    assert state["transformer.wte.weight"].shape[0] == GPT2_VOCAB_SIZE + 4  # + __ans__ __pad__ __unk__ __gen__
    log = open(os.path.join(tdir, "..", "log_train.txt")).read()
    assert "has no tokenizer files: using the GPT-2 BPE bundled with l2kd" in log
