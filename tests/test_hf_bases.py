"""Bases of other families than GPT-2 (``--model_name DIR``): small random Llama and Qwen2
models with tokenizers of their own train and test in every strategy."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from hf_models import byte_level_tokenizer, save_tiny_model, word_level_tokenizer
from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data import bundled_data_dir
from l2kd.evaluate import evaluate_run
from l2kd.generation import generate
from l2kd.layout import run_dir_of
from l2kd.loop import train_sequence
from l2kd.model import context_length, load_base_model, load_model_dir, resize_for_tokenizer
from l2kd.tokenizer import (ANS, OriginalGPT2Tokenizer, PlainTokenizer, add_special_tokens,
                            load_base_tokenizer)

TASKS = ("rnnlg.rest", "rnnlg.tv")


@pytest.fixture(scope="module")
def bpe():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def bases(tmp_path_factory, bpe):
    """family -> folder: Llama (tied head, 256 positions) and Qwen2 (untied head, 192 positions)."""
    root = tmp_path_factory.mktemp("bases")
    return {"llama": save_tiny_model(str(root / "llama"), "llama", bpe, tied=True, positions=256),
            "qwen2": save_tiny_model(str(root / "qwen2"), "qwen2", bpe, tied=False, positions=192)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A copy of the bundled data (Seq-KD writes its decoded training files beside it)."""
    d = str(tmp_path_factory.mktemp("data") / "data")
    shutil.copytree(bundled_data_dir(), d)
    return d


def test_byte_level_tokenizer_encodes_as_gpt2_without_bos(bases, bpe):
    tok = load_base_tokenizer(bases["llama"])
    assert isinstance(tok, OriginalGPT2Tokenizer)
    assert bpe.encode("what is it")[0] == bpe.bos_token_id  # the tokenizer itself puts <s> in front
    ids = tok.encode("what is it")
    assert bpe.bos_token_id not in ids and ids == bpe.encode(" what is it", add_special_tokens=False)
    special = add_special_tokens(tok, list(TASKS), add_task_tokens=False, use_sep=False)
    assert special.ans == len(bpe) and special.eos == bpe.eos_token_id
    text = "name = x ; food = italian what is it?"
    assert tok.decode(tok.encode(text + ANS + " an answer")) == " " + text + " " + ANS + " an answer"


def test_other_tokenizers_encode_without_bos(tmp_path):
    folder = save_tiny_model(str(tmp_path / "wl"), "llama", word_level_tokenizer())
    tok = load_base_tokenizer(folder)
    assert isinstance(tok, PlainTokenizer)
    ids = tok.encode("what is the food")
    assert tok.bos_token_id not in ids and len(ids) == 4
    assert tok.decode(ids) == "what is the food"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_load_as_fp32(tmp_path, bpe, dtype):
    folder = save_tiny_model(str(tmp_path / "m"), "qwen2", bpe, dtype=dtype, positions=96)
    model = load_base_model(folder, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert context_length(model) == 96


@pytest.mark.parametrize("family, tied", [("llama", True), ("qwen2", False)])
def test_resize_grows_embedding_and_head(bases, family, tied):
    tok = load_base_tokenizer(bases[family])
    model = load_model_dir(bases[family])
    n0 = len(tok)
    add_special_tokens(tok, list(TASKS), add_task_tokens=True, use_sep=True)
    resize_for_tokenizer(model, len(tok))
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == len(tok) == n0 + 6
    assert (emb.data_ptr() == head.data_ptr()) == tied
    assert getattr(model.get_output_embeddings(), "bias", None) is None


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_batched_generation_matches_full_recompute(bases, family):
    """Left-padded prompts of different lengths, rows leaving the batch at different steps
    (``batch_select_indices`` on the model's own cache): the same tokens as greedy decoding by
    a full forward pass per step."""
    model = load_model_dir(bases[family]).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a random model this small repeats one token; spread its outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    prompts, limits, eos = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [20]], [12, 3, 8, 12], 0
    out = generate(model, prompts, limits, eos, 1, SamplingConfig(top_k=1))
    ref = []
    for prompt, limit in zip(prompts, limits):
        seq, new = list(prompt), []
        for _ in range(limit):
            with torch.no_grad():
                t = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if t == eos:
                break
            new.append(t)
            seq.append(t)
        ref.append(new)
    assert out == ref
    assert len({len(r) for r in out}) > 1  # rows did leave the batch early


STRATEGIES = {
    "lll": ("lll", {}),
    "lll+word_kd": ("lll", {"distil": True}),
    "lll+seq_kd_soft": ("lll", {"distil": True, "seq_distil": True}),  # the original's spelling of soft Seq-KD
    "gem": ("gem", {}),
    "ewc": ("ewc", {"reg_lambda": 1e5}),
}


def _cfg(root: str, model: str, data: str, seq_type: str, **extra) -> TrainConfig:
    return TrainConfig(
        tasks=TASKS, data_dir=data, model_dir_root=root, teacher_root=os.path.join(root, "teachers"),
        model_name=model, seq_train_type=seq_type, gen_lm_sample_percentage=0.5, learning_rate=1e-3,
        train_batch_size=4, n_train_epochs=1, max_train_examples=6, max_test_examples=3, max_gen_len=12,
        qa_sampling=SamplingConfig(top_k=1), lm_sampling=SamplingConfig(top_k=20), quiet=True, seed=2,
        device="cpu", **extra)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_train_and_test_every_strategy(tmp_path, bases, data, family, strategy):
    seq_type, extra = STRATEGIES[strategy]
    cfg = _cfg(str(tmp_path), bases[family], data, seq_type, **extra)
    summary = train_sequence(cfg)
    res = evaluate_run(cfg, quiet=True)
    rdir = run_dir_of(cfg)
    assert rdir.startswith(os.path.join(str(tmp_path), family, seq_type))
    n_tok = None
    for task in TASKS:
        tdir = os.path.join(rdir, task)
        for f in ("model-1", "model-finish", "config.json", "tokenizer.json", "l2kd_task.json", "metrics.json"):
            assert os.path.isfile(os.path.join(tdir, f)), (task, f)
        with open(os.path.join(tdir, "config.json")) as f:
            saved = json.load(f)
        assert saved["model_type"] == family
        n_tok = saved["vocab_size"]
        with open(os.path.join(tdir, "metrics.json")) as f:
            metrics = json.load(f)
        assert set(metrics[-1]) == set(TASKS)
    assert n_tok == len(load_base_tokenizer(bases[family])) + 4  # __ans__ __pad__ __unk__ __gen__
    scores = [s for row in res["matrix"] for s in row]
    assert len(res["matrix"]) == 2 and all(isinstance(s, float) and math.isfinite(s) and 0 <= s <= 100
                                           for s in scores)
    assert math.isfinite(summary["tasks"][TASKS[1]]["final_loss"])
    if seq_type == "lll":
        assert summary["tasks"][TASKS[1]]["replay"]["generated"] == 3
    if extra.get("distil"):
        diag = summary["tasks"][TASKS[0]]["teacher_diagnostics"]
        assert 0 < diag["soft_targets"]["entropy_fraction"] <= 1 and math.isfinite(diag["teacher_score"])
        if seq_type == "lll":  # the teacher's own pseudo-samples, decoded with the family's own tokenizer
            own = diag["teacher_pseudo"]
            assert own["generated"] == len(own["texts"]) == summary["tasks"][TASKS[1]]["replay"]["generated"]
            assert all(t.strip().startswith("__gen__") for t in own["texts"])
        assert os.path.isdir(os.path.join(str(tmp_path), "teachers", family))
    if extra.get("seq_distil"):
        assert any(f.endswith("_to_squad-distil-v2.0.json") for d, _, fs in os.walk(tmp_path) for f in fs) or \
            any(f.endswith("_to_squad-distil-v2.0.json") for f in os.listdir(data))


def test_padded_embedding_is_cut_to_the_tokenizer(tmp_path, bpe, data):
    """Qwen2 checkpoints have more embedding rows than tokens: the rows LAMOL's tokens get are
    the tokenizer's next ids, and logits cover exactly the tokenizer."""
    folder = save_tiny_model(str(tmp_path / "qwen2-padded"), "qwen2", bpe, tied=False, pad_vocab=37)
    cfg = _cfg(str(tmp_path / "runs"), folder, data, "lll")
    summary = train_sequence(cfg)
    with open(os.path.join(summary["run_dir"], TASKS[1], "config.json")) as f:
        assert json.load(f)["vocab_size"] == len(load_base_tokenizer(folder)) + 4
    assert len(evaluate_run(cfg, quiet=True)["matrix"]) == 2


def test_command_line_train_and_test_a_llama_folder(tmp_path, bases, data):
    from l2kd.cli.test import main as test_main
    from l2kd.cli.train import main as train_main

    flags = ["--data_dir", data, "--model_dir_root", str(tmp_path), "--model_name", bases["llama"],
             "--seq_train_type", "lll", "--tasks", *TASKS, "--n_train_epochs", "1", "--max_train_examples", "4",
             "--max_test_examples", "2", "--train_batch_size", "4", "--learning_rate", "1e-3", "--max_gen_len", "8",
             "--gen_lm_sample_percentage", "0.5", "--quiet"]
    assert train_main(flags) in (0, None)
    assert test_main(flags) in (0, None)
    rdir = os.path.join(str(tmp_path), "llama", "lll", "rnnlg.rest_rnnlg.tv_0.5_42")
    with open(os.path.join(rdir, "accuracy_matrix.json")) as f:
        matrix = json.load(f)["matrix"]
    assert len(matrix) == 2 and all(math.isfinite(v) for row in matrix for v in row)
