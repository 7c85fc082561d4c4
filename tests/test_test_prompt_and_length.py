"""The original's test prompt (context budget without the answer) and answer-length limit."""
from __future__ import annotations

from typing import List, Sequence

import pytest

import l2kd.evaluate as evaluate
from l2kd.config import SamplingConfig
from l2kd.data.qa_format import collate, encode_example
from l2kd.evaluate import answer_limits


def original_concat(c: List[int], sep_q_ans: List[int], a: List[int], max_len: int) -> List[int]:
    """The original's ``concat_example`` without gen/eos: the context keeps its first
    ``max_len - len(rest) - 1`` tokens, ``rest`` = sep + q + ans + a (a = [] for the test prompt)."""
    rest = sep_q_ans + a
    return c[: max_len - len(rest) - 1] + rest


def original_answer_tokens(len_cq: int, max_a_len: int, max_len: int) -> int:
    """Tokens the original's test appends to ``cq`` when the model never samples eos: the
    first token always, then more until the length is ``len_cq + max_a_len`` or ``max_len``."""
    n = len_cq + 1
    if n in (len_cq + max_a_len, max_len):
        return 1
    while True:
        n += 1
        if n in (len_cq + max_a_len, max_len):
            return n - len_cq


def test_test_prompt_keeps_more_context_than_training(tok_ids):
    tok, ids = tok_ids
    ctx = " ".join(f"w{i}" for i in range(300))
    answer = "the answer is rather long , with several words in it"
    max_len = 64
    ex = encode_example(tok, ids, ctx, "what?", [answer], "rnnlg.rest", max_len)
    c, q, a = tok.encode(ctx), tok.encode("what?"), tok.encode(answer)
    assert ex.prompt == original_concat(c, q + [ids.ans], [], max_len)
    assert len(ex.prompt) == max_len - 1
    cqa = original_concat(c, q + [ids.ans], a, max_len)
    assert ex.cq + ex.answer == cqa and ex.lm_length == max_len  # training layout unchanged
    assert len(ex.prompt) - len(ex.cq) == len(a)
    b = collate([ex], ids)  # training tensors use the training cq
    assert b.qa_input.shape[1] == len(cqa)


def test_short_context_prompt_is_cq(tok_ids):
    tok, ids = tok_ids
    ex = encode_example(tok, ids, "inform(name=x)", "what?", ["x"], "rnnlg.rest", 512)
    assert ex.prompt is ex.cq and ex.test_cq is None


def test_sep_prompt(tok_ids):
    import copy

    from l2kd.tokenizer import add_special_tokens

    tok = copy.deepcopy(tok_ids[0])
    ids = add_special_tokens(tok, ["rnnlg.rest"], add_task_tokens=False, use_sep=True)
    ctx = " ".join(f"w{i}" for i in range(100))
    ex = encode_example(tok, ids, ctx, "q?", ["a b c d e"], "rnnlg.rest", 40)
    c, q = tok.encode(ctx), tok.encode("q?")
    assert ex.prompt == original_concat(c, [ids.sep] + q + [ids.ans], [], 40)


@pytest.mark.parametrize("max_len", [40, 64, 1024])
def test_limits_match_the_original(tok_ids, max_len):
    tok, ids = tok_ids
    golds = [["x is a nice place", "the restaurant x is nice , it serves chinese food"], ["y"], ["z is cheap"]]
    ctxs = ["inform(name=x)", " ".join(f"w{i}" for i in range(200)), "inform(name=z;price=cheap)"]
    exs = [encode_example(tok, ids, c, "what is the natural language form?", g, "rnnlg.rest", max_len)
           for c, g in zip(ctxs, golds)]
    # max_a_len: the longest answer of the test set, references joined by __pad__ (eos not counted)
    max_a_len = max(sum(len(tok.encode(t)) for t in g) + len(g) - 1 for g in golds)
    assert max_a_len == max(len(e.answer) for e in exs) or max_len == 40
    got = answer_limits(exs, max_len)
    want = [original_answer_tokens(len(e.prompt), max_a_len, max_len) for e in exs]
    assert got == want
    # two references make the limit about twice a single one: the old "longest gold + 1" was short
    longest_single = max(len(tok.encode(t)) for g in golds for t in g)
    if max_len == 1024:
        assert got[0] == max_a_len > longest_single + 1


def test_limit_uses_the_untruncated_answer(tok_ids):
    tok, ids = tok_ids
    long_answer = " ".join(f"a{i}" for i in range(60))
    exs = [encode_example(tok, ids, "", "q?", [long_answer], "rnnlg.rest", 48),
           encode_example(tok, ids, "inform(name=x)", "q?", ["x"], "rnnlg.rest", 48)]
    assert exs[0].truncated and exs[0].answer_len == len(tok.encode(long_answer)) > len(exs[0].answer)
    assert answer_limits(exs, 48) == [original_answer_tokens(len(e.prompt), exs[0].answer_len, 48) for e in exs]


def test_all_empty_answers_decode_to_max_len(tok_ids):
    tok, ids = tok_ids
    exs = [encode_example(tok, ids, "inform(name=x)", "q?", [""], "rnnlg.rest", 64)]
    assert exs[0].answer_len == 0
    assert answer_limits(exs, 64) == [64 - len(exs[0].prompt)]
    assert original_answer_tokens(len(exs[0].prompt), 0, 64) == 64 - len(exs[0].prompt)


def test_predict_decodes_from_the_test_prompt_with_the_limits(tok_ids, monkeypatch):
    tok, ids = tok_ids
    ctx = " ".join(f"w{i}" for i in range(300))
    exs = [encode_example(tok, ids, ctx, "what?", ["one two three", "four five"], "rnnlg.rest", 64),
           encode_example(tok, ids, "inform(name=x)", "what?", ["x"], "rnnlg.rest", 64)]
    seen = {}

    def fake_generate(model, prompts: Sequence[Sequence[int]], limits, *args, **kwargs):
        seen["prompts"], seen["limits"] = [list(p) for p in prompts], list(limits)
        return [[tok.encode("four")[0]] for _ in prompts]

    class Model:
        training = False

        def eval(self):
            return self

        def train(self, mode: bool = True):
            return self

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    out = evaluate.predict(Model(), tok, exs, ids.eos, ids.pad, SamplingConfig(), None, 64, 8)
    assert out == ["four", "four"]
    assert seen["prompts"] == [exs[0].prompt, exs[1].prompt] and len(seen["prompts"][0]) == 63
    assert seen["limits"] == answer_limits(exs, 64) == [1, min(exs[0].answer_len, 64 - len(exs[1].prompt))]
