"""Batched KV-cached decoding equals naive greedy decoding, with left padding and early stops."""
from __future__ import annotations

import torch

from l2kd.config import SamplingConfig
from l2kd.generation import generate


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
