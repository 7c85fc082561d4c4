"""Word-KD's loss on a mixed batch equals the hand-built formula; Seq-KD soft runs end to end."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.qa_format import collate, encode_example
from l2kd.losses import Losses, token_weights
from l2kd.strategies.base import Strategy
from l2kd.strategies.lamol import LAMOL
from l2kd.strategies.word_kd import WordKD


def _original_kd(s_logits, t_logits, T):
    """The original's formula: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T^2."""
    return F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T


@pytest.mark.parametrize("base", [LAMOL(), Strategy()])
def test_word_kd_mixed_batch_formula(tok_ids, tiny_model, base):
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    torch.manual_seed(1)
    teacher = type(tiny_model)(tiny_model.config).eval()
    cur = encode_example(tok, ids, "inform(a)", "q?", ["x y z"], "rnnlg.rest", 128)
    pseudo = encode_example(tok, ids, "inform(b)", "q?", ["w"], "rnnlg.rest", 128, is_pseudo=True)
    b = collate([cur, pseudo], ids)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(base)
    strat.teacher = teacher
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0, lm_lambda=0.25)
    loss, _ = strat.loss(SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses())), tiny_model, b, w)

    def part(inp, tgt):
        s, t = tiny_model(inp).logits, teacher(inp).logits
        m = tgt != -1
        kd = _original_kd(s[0][m[0]], t[0][m[0]], 2.0)
        ce = F.cross_entropy(s[1][m[1]], tgt[1][m[1]], weight=w)
        return kd + ce

    want = part(b.qa_input, b.qa_target)
    if base.uses_lm_loss:
        want = want + 0.25 * part(b.lm_input, b.lm_target)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_cur,n_pseudo", [(3, 1), (1, 3), (2, 0)])
def test_word_kd_weighting_formula(tok_ids, tiny_model, n_cur, n_pseudo):
    """--distil_weighting: each part is ``((N - E) * KD + E * CE) / N`` over the batch's N rows,
    E of them replayed (the original's weighting branch); without replayed rows pure KD."""
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    torch.manual_seed(2)
    teacher = type(tiny_model)(tiny_model.config).eval()
    exs = [encode_example(tok, ids, f"inform({c})", "q?", ["x y" + " z" * i], "rnnlg.rest", 128)
           for i, c in enumerate("abc"[:n_cur])]
    exs += [encode_example(tok, ids, f"inform({c})", "q?", ["w" + " v" * i], "rnnlg.rest", 128, is_pseudo=True)
            for i, c in enumerate("def"[:n_pseudo])]
    b = collate(exs, ids)
    assert (b.n_rows, b.n_pseudo) == (n_cur + n_pseudo, n_pseudo)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(LAMOL())
    strat.teacher = teacher
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0, lm_lambda=0.25,
                      distil=True, distil_weighting=True)
    ctx = SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses()))
    loss, _ = strat.loss(ctx, tiny_model, b, w)
    n = n_cur + n_pseudo

    def part(inp, tgt):
        s, t = tiny_model(inp).logits, teacher(inp).logits
        m = tgt != -1
        cur, rep = m & ~b.is_pseudo[:, None], m & b.is_pseudo[:, None]
        kd = _original_kd(s[cur], t[cur], 2.0)
        if not n_pseudo:
            return kd
        return ((n - n_pseudo) * kd + n_pseudo * F.cross_entropy(s[rep], tgt[rep], weight=w)) / n

    want = part(b.qa_input, b.qa_target) + 0.25 * part(b.lm_input, b.lm_target)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
    summed, _ = strat.loss(SimpleNamespace(cfg=TrainConfig(**{**cfg.__dict__, "distil_weighting": False}),
                                           setup=ctx.setup), tiny_model, b, w)
    if n_pseudo:  # the default adds the two means: a different loss on a mixed batch
        assert abs(summed.item() - loss.item()) > 1e-3
    else:
        torch.testing.assert_close(summed, loss)


def test_word_kd_qa_only_keeps_lamols_lm_loss(tok_ids, tiny_model):
    """--distil_qa_only: the QA part is Word-KD's (KD on current rows + CE on replayed ones), the
    LM part one weighted cross-entropy mean over every row, as LAMOL's; the teacher's LM
    distribution is not used."""
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    torch.manual_seed(5)
    teacher = type(tiny_model)(tiny_model.config).eval()
    exs = [encode_example(tok, ids, "inform(a)", "q?", ["x y z"], "rnnlg.rest", 128),
           encode_example(tok, ids, "inform(b)", "q?", ["x"], "rnnlg.rest", 128),
           encode_example(tok, ids, "inform(c)", "q?", ["w v"], "rnnlg.rest", 128, is_pseudo=True)]
    b = collate(exs, ids)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(LAMOL())
    strat.teacher = teacher
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0, lm_lambda=0.25,
                      distil=True, distil_qa_only=True)
    loss, parts = strat.loss(SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses())), tiny_model, b, w)
    s_qa, t_qa = tiny_model(b.qa_input).logits, teacher(b.qa_input).logits
    m = b.qa_target != -1
    cur, rep = m & ~b.is_pseudo[:, None], m & b.is_pseudo[:, None]
    qa = _original_kd(s_qa[cur], t_qa[cur], 2.0) + F.cross_entropy(s_qa[rep], b.qa_target[rep], weight=w)
    lm_m = b.lm_target != -1
    lm = F.cross_entropy(tiny_model(b.lm_input).logits[lm_m], b.lm_target[lm_m], weight=w)
    torch.testing.assert_close(loss, qa + 0.25 * lm, rtol=1e-4, atol=1e-5)
    assert set(parts) == {"qa_kd_loss", "lm_loss"}
    full, _ = strat.loss(SimpleNamespace(cfg=TrainConfig(**{**cfg.__dict__, "distil_qa_only": False}),
                                         setup=SimpleNamespace(losses=Losses())), tiny_model, b, w)
    assert abs(full.item() - loss.item()) > 1e-3  # distilling the LM loss too is another loss
    # with --distil_weighting too: the QA means weighted by their rows (2 current, 1 replayed), the LM loss unchanged
    both, _ = strat.loss(SimpleNamespace(cfg=TrainConfig(**{**cfg.__dict__, "distil_weighting": True}),
                                         setup=SimpleNamespace(losses=Losses())), tiny_model, b, w)
    qa_w = (2 * _original_kd(s_qa[cur], t_qa[cur], 2.0) + F.cross_entropy(s_qa[rep], b.qa_target[rep], weight=w)) / 3
    torch.testing.assert_close(both, qa_w + 0.25 * lm, rtol=1e-4, atol=1e-5)


def test_word_kd_weighting_counts_the_whole_batch(tok_ids):
    """Under torchrun a rank's shard records the whole batch's rows: the weights are global, as
    the original's (one process over the whole batch) are."""
    from l2kd.strategies.word_kd import part_weights

    tok, ids = tok_ids
    exs = [encode_example(tok, ids, f"inform({c})", "q?", ["x"], "rnnlg.rest", 128, is_pseudo=c in "cd")
           for c in "abcd"]
    shard = collate(exs[:2], ids, whole=exs)  # this rank holds no replayed row
    assert (shard.n_rows, shard.n_pseudo) == (4, 2)
    assert part_weights(shard, True) == (0.5, 0.5) and part_weights(shard, False) == (1.0, 1.0)
    moved = shard.to(torch.device("cpu"))
    assert (moved.n_rows, moved.n_pseudo) == (4, 2)
    with pytest.raises(ValueError, match="distil_weighting"):
        part_weights(type(shard)(*(shard.qa_input, shard.qa_target, shard.lm_input, shard.lm_target,
                                   shard.is_pseudo)), True)


def test_word_kd_weighting_over_two_ranks_equals_one_process(tok_ids, tiny_model):
    """Two shards, each scaled by its share of the global denominators (as torchrun's ranks
    are) and averaged, give the one-process loss, with and without the weighting."""
    from l2kd.losses import LOSS_PARTS, loss_denominators
    from l2kd.strategies.base import Shares

    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()
    torch.manual_seed(4)
    teacher = type(tiny_model)(tiny_model.config).eval()
    exs = [encode_example(tok, ids, f"inform({c})", "q?", ["x y" + " z" * i], "rnnlg.rest", 128, is_pseudo=c in "bef")
           for i, c in enumerate("abcdef")]
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(LAMOL())
    strat.teacher = teacher
    for weighting in (False, True):
        cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0,
                          lm_lambda=0.25, distil=True, distil_weighting=weighting)
        ctx = SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses()))
        one, _ = strat.loss(ctx, tiny_model, collate(exs, ids), w)
        # 1 of 3 and 2 of 3 rows replayed: only the whole batch's counts (3 of 6) give one process's weights
        shards = [collate(exs[:3], ids, whole=exs), collate(exs[3:], ids, whole=exs)]
        local = [loss_denominators(b, w) for b in shards]
        total = local[0] + local[1]
        ranks = [strat.loss(ctx, tiny_model, b, w, Shares(zip(LOSS_PARTS, (2 * d / total).tolist())))[0]
                 for b, d in zip(shards, local)]
        torch.testing.assert_close((ranks[0] + ranks[1]) / 2, one, rtol=1e-4, atol=1e-5)


def test_distil_variants_need_distil_and_are_recorded_only_when_on():
    from l2kd.run_identity import learning_config

    base = dict(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".")
    with pytest.raises(ValueError, match="--distil_weighting.*needs --distil"):
        TrainConfig(**base, distil_weighting=True)
    with pytest.raises(ValueError, match="--distil_qa_only.*needs --distil"):
        TrainConfig(**base, distil_qa_only=True)
    assert "distil_qa_only" not in learning_config(TrainConfig(**base, distil=True))
    assert learning_config(TrainConfig(**base, distil=True, distil_qa_only=True))["distil_qa_only"] is True
    assert "distil_weighting" not in learning_config(TrainConfig(**base, distil=True))
    assert learning_config(TrainConfig(**base, distil=True, distil_weighting=True))["distil_weighting"] is True


def test_word_kd_replay_only_batch_runs_no_teacher(tok_ids, tiny_model):
    """A batch of replayed rows only is plain weighted CE, and the teacher is not run."""
    tok, ids = tok_ids
    tiny_model.resize_token_embeddings(len(tok), mean_resizing=False)
    tiny_model.eval()

    class NoTeacher(torch.nn.Module):
        def get_output_embeddings(self):
            raise AssertionError("the teacher ran on a batch without current-task rows")

    pseudo = [encode_example(tok, ids, f"inform({c})", "q?", ["w v"], "rnnlg.rest", 128, is_pseudo=True)
              for c in "ab"]
    b = collate(pseudo, ids)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(LAMOL())
    strat.teacher = NoTeacher()
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0, lm_lambda=0.25)
    loss, _ = strat.loss(SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses())), tiny_model, b, w)

    def ce(inp, tgt):
        m = tgt != -1
        return F.cross_entropy(tiny_model(inp).logits[m], tgt[m], weight=w)

    torch.testing.assert_close(loss, ce(b.qa_input, b.qa_target) + 0.25 * ce(b.lm_input, b.lm_target),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_kernels", [True, False])
def test_word_kd_ce_rows_honour_a_head_bias(tok_ids, use_kernels):
    """A student head with a bias: the replayed rows' cross-entropy includes it (as head_ce does),
    and the KD rows take the eager path with the biased logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, ids = tok_ids
    torch.manual_seed(3)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_head=2, n_embd=16, n_positions=128)).eval()
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(len(tok)) * 3.0)  # large enough to change every row's loss
    teacher = GPT2LMHeadModel(model.config).eval()
    cur = encode_example(tok, ids, "inform(a)", "q?", ["x y z"], "rnnlg.rest", 128)
    pseudo = encode_example(tok, ids, "inform(b)", "q?", ["w v"], "rnnlg.rest", 128, is_pseudo=True)
    b = collate([cur, pseudo], ids)
    w = token_weights(len(tok), ids, 5.0, torch.device("cpu"))
    strat = WordKD(Strategy())
    strat.teacher = teacher
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=".", model_dir_root=".", temperature_kd=2.0,
                      use_kernels=use_kernels)
    loss, _ = strat.loss(SimpleNamespace(cfg=cfg, setup=SimpleNamespace(losses=Losses(use_kernels))), model, b, w)
    s, t = model(b.qa_input).logits, teacher(b.qa_input).logits  # HF's head applies the bias
    m = b.qa_target != -1
    want = _original_kd(s[0][m[0]], t[0][m[0]], 2.0) + F.cross_entropy(s[1][m[1]], b.qa_target[1][m[1]], weight=w)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
    unbiased = F.cross_entropy(s[1][m[1]] - head.bias, b.qa_target[1][m[1]], weight=w)
    assert abs(float(unbiased) - float(F.cross_entropy(s[1][m[1]], b.qa_target[1][m[1]], weight=w))) > 1e-2


@pytest.mark.slow
def test_seq_kd_soft_trains_teacher_and_builds_distil_data(tmp_path, data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=str(data), model_dir_root=str(tmp_path / "m"),
                      model_name="tiny-gpt2", seq_train_type="lll", gen_lm_sample_percentage=0.25,
                      learning_rate=1e-3, train_batch_size=8, n_train_epochs=1, max_train_examples=16,
                      max_gen_len=16, quiet=True, distil=True, seq_distil=True, qa_sampling=SamplingConfig(top_k=1),
                      max_test_examples=3)
    from l2kd.loop import train_sequence

    summary = train_sequence(cfg)
    for t in cfg.tasks:  # teachers trained automatically in l2kd's layout, distil data written beside the data
        assert os.path.isfile(tmp_path / "m" / "tiny-gpt2" / "lll" / f"{t}_0.2_42" / t / "model-finish")
        distil = json.load(open(data / f"{t}_to_squad-distil-v2.0.json"))
        assert len(distil["data"]) == 16
        assert summary["tasks"][t]["teacher"] == t
        # teacher diagnostics (measured once, by the wrapped SeqKD) are in the task's record
        record = json.load(open(os.path.join(summary["run_dir"], t, "l2kd_task.json")))
        diag = record["teacher_diagnostics"]
        assert diag == summary["tasks"][t]["teacher_diagnostics"] and diag["test_examples"] == 3
        assert diag["soft_targets"]["positions"] > 0 and 0 < diag["soft_targets"]["entropy_fraction"] <= 1
        own = diag["teacher_pseudo"]  # as many of the teacher's own pseudo-samples as LAMOL replays
        assert own["generated"] == len(own["texts"]) == 4 and 0 <= own["parsed"] <= 4
    assert summary["tasks"]["rnnlg.tv"]["replay"]["generated"] == 4
    teacher42 = tmp_path / "m" / "tiny-gpt2" / "lll" / "rnnlg.tv_0.2_42" / "rnnlg.tv"
    assert json.load(open(data / "rnnlg.tv_to_squad-distil-v2.0.json"))["l2kd_teacher"]["teacher"] == str(teacher42)
    # the same seed again, in a fresh root with the same teacher root: the teachers are found and
    # the distil files they built are reused (no retraining, no decoding)
    mtime = os.path.getmtime(data / "rnnlg.tv_to_squad-distil-v2.0.json")
    t_mtime = os.path.getmtime(teacher42 / "model-finish")
    cfg2 = TrainConfig(**{**cfg.__dict__, "model_dir_root": str(tmp_path / "m2"), "teacher_root": str(tmp_path / "m")})
    train_sequence(cfg2)
    assert os.path.getmtime(data / "rnnlg.tv_to_squad-distil-v2.0.json") == mtime
    assert os.path.getmtime(teacher42 / "model-finish") == t_mtime
    # another seed trains its own teachers and must not train on seed 42's teachers' decodes:
    # its distil data goes beside its own teacher, the file beside the data is left alone
    cfg3 = TrainConfig(**{**cfg.__dict__, "seed": 7})
    train_sequence(cfg3)
    assert os.path.getmtime(data / "rnnlg.tv_to_squad-distil-v2.0.json") == mtime
    teacher7 = tmp_path / "m" / "tiny-gpt2" / "lll" / "rnnlg.tv_0.2_7" / "rnnlg.tv"
    own = json.load(open(teacher7 / "rnnlg.tv_to_squad-distil-v2.0.json"))
    assert own["l2kd_teacher"]["teacher"] == str(teacher7) and len(own["data"]) == 16


@pytest.mark.slow
def test_user_distil_file_is_used_as_is(tmp_path, data_dir):
    """A distil file l2kd did not build (the original's workflow) is read, and no teacher is trained."""
    import shutil

    from l2kd.distillation import ensure_distil_data

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    user = data / "rnnlg.rest_to_squad-distil-v2.0.json"
    shutil.copy(data / "rnnlg.rest_to_squad-train-v2.0.json", user)
    cfg = TrainConfig(tasks=("rnnlg.rest",), data_dir=str(data), model_dir_root=str(tmp_path / "m"),
                      model_name="tiny-gpt2", seq_distil=True, quiet=True)
    def no_training(tcfg):
        raise AssertionError(f"a teacher was trained for {tcfg.tasks}")

    assert ensure_distil_data(cfg, "rnnlg.rest", torch.device("cpu"), no_training) == str(user)
    assert not (tmp_path / "m").exists()


def test_find_teacher_skips_a_teacher_trained_otherwise(tmp_path, caplog):
    """A teacher l2kd trained under another learning configuration is not reused; student-only
    settings do not count; an explicit --teacher_dir and a folder without a record are used as is."""
    import dataclasses

    from l2kd.distillation import find_teacher, teacher_config
    from l2kd.layout import run_dir
    from l2kd.run_identity import learning_config

    cfg = TrainConfig(tasks=("rnnlg.rest", "rnnlg.tv"), data_dir=".", model_dir_root=str(tmp_path / "m"),
                      model_name="tiny-gpt2", distil=True, n_train_epochs=2)
    tcfg = teacher_config(cfg, "rnnlg.tv")
    tdir = tmp_path / "m" / "tiny-gpt2" / "lll" / "rnnlg.tv_0.2_42" / "rnnlg.tv"
    assert os.path.join(run_dir(tcfg.model_dir_root, "tiny-gpt2", "lll", ["rnnlg.tv"], 0.2, 42), "rnnlg.tv") == str(tdir)
    tdir.mkdir(parents=True)
    for f in ("model-finish", "config.json"):
        (tdir / f).write_text("{}")
    (tdir / "l2kd_task.json").write_text(json.dumps({"identity": learning_config(tcfg)}))
    assert find_teacher(cfg, "rnnlg.tv") == str(tdir)
    # student-only settings: the same teacher
    for kw in ({"temperature_kd": 1.0}, {"reg_lambda": 5.0}, {"seq_distil": True}):
        assert find_teacher(dataclasses.replace(cfg, **kw), "rnnlg.tv") == str(tdir), kw
    # what the teacher learns: not reused, and the log says why
    with caplog.at_level("WARNING", logger="l2kd"):
        assert find_teacher(dataclasses.replace(cfg, teacher_n_train_epochs=6), "rnnlg.tv") is None
        assert find_teacher(dataclasses.replace(cfg, teacher_learning_rate=1e-2), "rnnlg.tv") is None
    assert "n_train_epochs: 2 -> 6" in caplog.text and "learning_rate" in caplog.text
    # the teacher with the configuration asked for is found
    assert teacher_config(dataclasses.replace(cfg, teacher_n_train_epochs=2), "rnnlg.tv") == tcfg
    # an explicit --teacher_dir is the user's choice
    explicit = dataclasses.replace(cfg, teacher_n_train_epochs=6, teacher_dir=str(tdir.parent))
    assert find_teacher(explicit, "rnnlg.tv") == str(tdir)
    # a teacher without a record (trained by the original) is used as before
    (tdir / "l2kd_task.json").unlink()
    assert find_teacher(dataclasses.replace(cfg, teacher_n_train_epochs=6), "rnnlg.tv") == str(tdir)
