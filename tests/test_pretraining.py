"""The pretrained base: corpus, recipe checksum, the chunked loss, a miniature build loaded
like GPT-2, resuming (in process and after a real SIGKILL), the cache, the shipped copy."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from l2kd import pretraining as pt
from l2kd.model import load_base_model
from l2kd.tokenizer import load_base_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def mini(tmp_path):
    """The miniature recipe on a small copy of the bundled corpus (so tests can edit it)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, n in ((pt.TRAIN_FILE, 200), (pt.HELDOUT_FILE, 40)):
        lines = pt.read_sentences(os.path.join(pt.RESOURCE_CORPUS, name))[:n]
        (corpus / name).write_text("\n".join(lines) + "\n")
    return dataclasses.replace(pt.MINI_RECIPE, corpus_dir=str(corpus))


def test_bundled_corpus_is_small_split_and_not_the_study_tasks():
    train = pt.read_sentences(os.path.join(pt.RESOURCE_CORPUS, pt.TRAIN_FILE))
    held = pt.read_sentences(os.path.join(pt.RESOURCE_CORPUS, pt.HELDOUT_FILE))
    size = sum(os.path.getsize(os.path.join(pt.RESOURCE_CORPUS, f)) for f in (pt.TRAIN_FILE, pt.HELDOUT_FILE))
    assert size < 6 * 2**20 and len(train) > 20000 and len(held) > 1000
    assert not set(train) & set(held) and all(pt.is_heldout(s) for s in held[:200])
    assert os.path.isfile(os.path.join(pt.RESOURCE_CORPUS, "README.md"))
    from l2kd.data import bundled_data_dir
    from l2kd.data.squad import load_squad_file
    from l2kd.data.tasks import task_file

    corpus = set(train) | set(held)
    for task in ("rnnlg.rest", "rnnlg.hotel", "rnnlg.tv"):  # the study's answers are not pretraining text
        answers = {a for ex in load_squad_file(task_file(bundled_data_dir(), task, "train"), task) for a in ex.answers}
        assert len(answers & corpus) < 0.01 * len(answers), task


@pytest.mark.skipif(not os.path.isdir("/work/shared/data/rnnlg"), reason="raw releases not here")
def test_build_corpus_reproduces_the_bundled_files(tmp_path):
    counts = pt.build_corpus("/work/shared/data", str(tmp_path))
    for name in (pt.TRAIN_FILE, pt.HELDOUT_FILE):
        assert (tmp_path / name).read_bytes() == open(os.path.join(pt.RESOURCE_CORPUS, name), "rb").read()
    assert counts["train"] + counts["heldout"] == sum(v for k, v in counts.items() if k not in ("train", "heldout"))


def test_checksum_covers_the_recipe_and_the_file_bytes_not_the_folder(mini, tmp_path):
    base = pt.recipe_checksum(mini)
    assert pt.recipe_checksum(dataclasses.replace(mini, steps=mini.steps + 1)) != base
    moved = tmp_path / "moved"
    shutil.copytree(mini.corpus_dir, moved)
    assert pt.recipe_checksum(dataclasses.replace(mini, corpus_dir=str(moved))) == base
    with open(moved / pt.HELDOUT_FILE, "a") as f:
        f.write("one more sentence\n")
    assert pt.recipe_checksum(dataclasses.replace(mini, corpus_dir=str(moved))) != base


def test_batches_are_a_function_of_seed_and_step():
    a = [pt.batch_indices(10, 3, 5, s).tolist() for s in range(6)]
    assert a == [pt.batch_indices(10, 3, 5, s).tolist() for s in range(6)]
    assert sorted(sum(a[:3], [])) == sorted(set(sum(a[:3], [])))  # one epoch: no block twice
    assert a[:3] != a[3:]  # the next epoch is another permutation
    assert a != [pt.batch_indices(10, 3, 6, s).tolist() for s in range(6)]


def test_lr_schedule_warms_up_then_decays(mini):
    lrs = [pt.lr_at(mini, s) for s in range(mini.steps)]
    assert lrs[0] < lrs[mini.warmup_steps - 1] == pytest.approx(mini.learning_rate)
    assert lrs[-1] < lrs[mini.warmup_steps] and lrs[-1] >= 0.1 * mini.learning_rate - 1e-12


def test_lm_loss_is_the_chunked_head_and_equals_full_logits(mini, monkeypatch):
    torch.manual_seed(0)
    model = pt.GPT2LMHeadModel(mini.model_config()).eval()
    blocks = torch.randint(0, 50257, (3, 9))
    calls = []
    real = pt.linear_cross_entropy
    monkeypatch.setattr(pt, "linear_cross_entropy", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    got = pt.lm_loss(model, blocks)
    want = F.cross_entropy(model(blocks[:, :-1]).logits.reshape(-1, 50257), blocks[:, 1:].reshape(-1))
    assert calls == [torch.Size([24, mini.n_embd])]  # one call, on hidden states, not logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_mini_build_loads_like_gpt2_and_resumes_identically(mini, tmp_path):
    rec = pt.build_base(mini, str(tmp_path / "full"), checkpoint_every=2, eval_every=3, quiet=True)
    assert rec["checksum"] == pt.recipe_checksum(mini) and rec["steps"] == mini.steps
    assert 1 < rec["heldout_ppl"] < 50257 and rec["tokens_per_s"] > 0 and rec["history"][0]["step"] == 3
    assert not os.path.exists(tmp_path / "full" / pt.STATE_FILE)  # dropped once finished
    model = load_base_model(str(tmp_path / "full"), seed=0)
    assert model.config.n_embd == mini.n_embd and next(model.parameters()).dtype == torch.float32
    tok = load_base_tokenizer(str(tmp_path / "full"))  # the bundled BPE: a bare folder of GPT-2's vocabulary
    assert tok.encode("hello world") == load_base_tokenizer("tiny-gpt2").encode("hello world")
    # stop after 2 steps, then resume: the same weights as the uninterrupted build
    part = tmp_path / "part"
    assert pt.build_base(mini, str(part), checkpoint_every=2, quiet=True, stop_after=2) == {"stopped_at": 2}
    assert torch.load(part / pt.STATE_FILE, weights_only=True)["step"] == 2
    (part / ".tmp-abc123").write_bytes(b"half a checkpoint")  # a kill inside an atomic write leaves this
    torch.manual_seed(123)  # the resumed run restores the random state itself
    pt.build_base(mini, str(part), checkpoint_every=2, quiet=True)
    assert not any(f.startswith(".tmp-") for f in os.listdir(part))
    a, b = load_base_model(str(tmp_path / "full"), 0).state_dict(), load_base_model(str(part), 0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_of_another_recipe_is_not_resumed(mini, tmp_path, caplog):
    out = str(tmp_path / "b")
    pt.build_base(mini, out, checkpoint_every=1, quiet=True, stop_after=1)
    other = dataclasses.replace(mini, learning_rate=mini.learning_rate / 2)
    import logging

    with caplog.at_level(logging.WARNING, logger="l2kd"):
        rec = pt.build_base(other, out, checkpoint_every=0, quiet=True)
    assert "another recipe" in caplog.text and rec["checksum"] == pt.recipe_checksum(other)


def test_ensure_base_builds_once_into_the_cache_and_prefers_a_verified_shipped_copy(mini, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pt.cache_root() == str(tmp_path / "xdg" / "l2kd" / "pretrained")
    got = pt.ensure_base(mini, shipped=None, quiet=True)
    assert got == os.path.join(pt.cache_root(), pt.recipe_checksum(mini)[:16])
    monkeypatch.setattr(pt, "build_base", lambda *a, **k: pytest.fail("rebuilt a cached base"))
    assert pt.ensure_base(mini, shipped=None) == got
    # a shipped copy of this recipe (fp16) is used as is once its weights verify
    from l2kd.cli.pretrain import export_half

    ship = tmp_path / "ship"
    rec = export_half(got, str(ship))
    assert rec["weights_dtype"] == "float16" and rec["checksum"] == pt.recipe_checksum(mini)
    assert pt.ensure_base(mini, shipped=str(ship)) == str(ship)
    loaded = load_base_model(str(ship), 0)
    assert next(loaded.parameters()).dtype == torch.float32  # trained in fp32 whatever the file holds
    # a damaged shipped copy is refused (and the cache used)
    with open(ship / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    ok, why = pt.verify_base(str(ship), pt.recipe_checksum(mini))
    assert not ok and "not the file the build recorded" in why
    assert pt.ensure_base(mini, shipped=str(ship)) == got


def test_the_shipped_base_verifies_against_the_default_recipe():
    """The repository's fp16 base is the default recipe's build on the bundled corpus (else
    ``python -m l2kd.pretrain --ship`` must be rerun after a change to either)."""
    if not os.path.isdir(pt.SHIPPED_BASE):
        pytest.skip("no shipped base in this checkout")
    ok, why = pt.verify_base(pt.SHIPPED_BASE, pt.recipe_checksum(pt.DEFAULT_RECIPE))
    assert ok, why
    size = sum(os.path.getsize(os.path.join(pt.SHIPPED_BASE, f)) for f in os.listdir(pt.SHIPPED_BASE))
    assert size < 15 * 2**20
    rec = pt.read_record(pt.SHIPPED_BASE)
    assert rec["weights_dtype"] == "float16" and rec["heldout_ppl"] < 200


def _cli(out, *extra):
    return [sys.executable, "-m", "l2kd.pretrain", "--mini", "--out", str(out), "--compare", "0", "--quiet",
            "--steps", "30", "--checkpoint_every", "1", *extra]


@pytest.mark.slow
def test_sigkill_then_rerun_continues_as_the_uninterrupted_build(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref), env=env, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    p = subprocess.Popen(_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / pt.STATE_FILE
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if state.is_file():
            try:
                if torch.load(state, weights_only=True)["step"] >= 3:
                    break
            except Exception:  # replaced while being read
                pass
        time.sleep(0.02)
    assert p.poll() is None, "the build ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = torch.load(state, weights_only=True)["step"]
    assert 3 <= step < 30 and not (killed / pt.RECORD_FILE).exists()
    subprocess.run(_cli(killed), env=env, check=True, capture_output=True, timeout=600)
    a, b = load_base_model(str(ref), 0).state_dict(), load_base_model(str(killed), 0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = json.loads((ref / pt.RECORD_FILE).read_text()), json.loads((killed / pt.RECORD_FILE).read_text())
    assert ra["heldout_ppl"] == rb["heldout_ppl"] and ra["train_tokens_seen"] == rb["train_tokens_seen"]
    assert not any(f.startswith(".tmp-") for f in os.listdir(killed))
