"""Batched KV-cached decoding equals naive greedy decoding (left padding, early stops, any read interval,
GPT-2 and Llama caches), ends rows it cannot sample with an error that names the task, and reads
back to the host every ``read_every`` tokens only."""
from __future__ import annotations

import copy

import pytest
import torch

from l2kd.config import SamplingConfig
from l2kd.dispatch_stats import DispatchCounter
from l2kd.generation import SamplingFailure, generate, unsampleable_rows


def _naive_greedy(model, prompt, n, eos):
    seq = list(prompt)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1]
        t = int(logits.argmax())
        if t == eos:
            break
        out.append(t)
        seq.append(t)
    return out


def test_batched_cached_greedy_matches_naive(tiny_model):
    tiny_model.eval()
    g = torch.Generator().manual_seed(0)
    prompts = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [200, 300, 400, 500]]
    limits = [7, 3, 9, 5]
    # make one token an eos that greedy decoding hits, to exercise early exit
    eos = _naive_greedy(tiny_model, prompts[0], 3, -1)[1]
    got = generate(tiny_model, prompts, limits, eos_id=eos, pad_id=0, cfg=SamplingConfig(top_k=1), generator=g,
                   batch_size=3)
    want = [_naive_greedy(tiny_model, p, n, eos) for p, n in zip(prompts, limits)]
    assert got == want
    assert len(got[0]) == 1  # stopped at eos, which is not included


def test_seeded_sampling_reproducible(tiny_model):
    tiny_model.eval()
    cfg = SamplingConfig(top_k=20)
    runs = [generate(tiny_model, [[1], [2], [3]], [10, 10, 10], eos_id=50256, pad_id=0, cfg=cfg,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(len(r) == 10 for r in runs[0])


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("read_every", [1, 3, 16])
def test_greedy_matches_naive_for_any_read_interval(tiny_model, read_every):
    """Rows that finish keep decoding filler until the next read: what they return must not change."""
    tiny_model.eval()
    prompts = [[5, 6, 7], [11], [12, 13, 14, 15, 16], [200, 300], [7, 7]]
    limits = [20, 2, 11, 17, 5]
    eos = _naive_greedy(tiny_model, prompts[3], 6, -1)[4]  # reached by one row mid-way
    got = generate(tiny_model, prompts, limits, eos_id=eos, pad_id=0, cfg=SamplingConfig(top_k=1),
                   batch_size=4, read_every=read_every)
    assert got == [_naive_greedy(tiny_model, p, n, eos) for p, n in zip(prompts, limits)]


def test_llama_cache_greedy_matches_naive():
    """Another decoder's cache (Llama: rotary positions, grouped KV heads) through the same loop."""
    model = _tiny_llama()
    prompts = [[5, 6, 7, 8], [11], [12, 13, 14]]
    limits = [9, 4, 12]
    eos = _naive_greedy(model, prompts[2], 5, -1)[3]
    got = generate(model, prompts, limits, eos_id=eos, pad_id=0, cfg=SamplingConfig(top_k=1), read_every=4)
    assert got == [_naive_greedy(model, p, n, eos) for p, n in zip(prompts, limits)]


def test_unsampleable_rows():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, nan, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf], [-inf, 0.0, 1.0],
                      [3e38, 0.0, 0.0]])
    assert unsampleable_rows(x, 1.0).tolist() == [False, True, True, True, False, False]
    assert unsampleable_rows(x, 0.1).tolist() == [False, True, True, True, False, True]  # 3e39 overflows fp32


@pytest.mark.parametrize("use_kernels", [True, False])
def test_nan_logits_stop_with_the_task_named(tiny_model, use_kernels):
    """Every sampler path ends a row it cannot sample the same way and the run says what to try."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)  # untied head: a NaN embedding row poisons only the sequences holding that token
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                       tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.transformer.wte.weight[77] = float("nan")
    cfg = SamplingConfig(top_k=20, use_kernels=use_kernels)
    with pytest.raises(SamplingFailure, match=r"\[rnnlg\.rest\].* 1 of 3 .*--fp32"):
        generate(model, [[5, 6], [77, 5], [9]], [6, 6, 6], eos_id=299, pad_id=0, cfg=cfg,
                 generator=torch.Generator().manual_seed(0), task="rnnlg.rest", read_every=2)
    ok = generate(model, [[5, 6], [9]], [6, 6], eos_id=299, pad_id=0, cfg=cfg,
                  generator=torch.Generator().manual_seed(0))
    assert [len(o) for o in ok] == [6, 6] and all(t >= 0 for o in ok for t in o)


def _count_host_reads(monkeypatch, fn):
    """Host reads of ``fn()``: scalar reads (dispatched) plus ``tolist`` calls (not dispatched on CPU)."""
    calls = {"tolist": 0}
    real = torch.Tensor.tolist

    def counting(self):
        calls["tolist"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    with DispatchCounter() as c:
        fn()
    monkeypatch.setattr(torch.Tensor, "tolist", real)
    return c.host_reads + calls["tolist"]


def test_no_per_token_host_reads(tiny_model, monkeypatch):
    """The loop reads the finished flags every ``read_every`` tokens and the tokens once at the end."""
    import l2kd.generation as gen

    tiny_model.eval()
    # a sampler without host reads of its own (the reference sampler checks its input on the host)
    monkeypatch.setattr(gen, "_sample", lambda logits, cfg, g: logits.argmax(-1))
    n = 48
    reads = {k: _count_host_reads(monkeypatch, lambda: generate(tiny_model, [[1], [2, 3], [4]], [n] * 3,
                                                                 eos_id=-5, pad_id=0, cfg=SamplingConfig(top_k=1),
                                                                 read_every=k))
             for k in (1, 16)}
    assert reads[16] <= n // 16 + 4
    assert reads[1] >= n - 1  # what reading every token costs: the count above is not vacuous


def test_bad_read_interval_is_refused(tiny_model):
    with pytest.raises(ValueError, match="read_every"):
        generate(tiny_model, [[1]], [2], eos_id=0, pad_id=0, cfg=SamplingConfig(top_k=1), read_every=0)


def test_eager_attention_takes_the_additive_mask(tiny_model):
    """Eager attention adds the 4-D mask to its scores: padding must get the dtype's minimum there."""
    model = copy.deepcopy(tiny_model).eval()
    model.set_attn_implementation("eager")
    prompts = [[5, 6, 7, 8, 9], [11], [12, 13]]
    limits = [6, 8, 7]
    got = generate(model, prompts, limits, eos_id=-5, pad_id=0, cfg=SamplingConfig(top_k=1), read_every=3)
    assert got == [_naive_greedy(model, p, n, -5) for p, n in zip(prompts, limits)]
