"""LAMOL's exact token layout, masks, truncation and pseudo-sample parsing."""
from __future__ import annotations

from l2kd.data.qa_format import IGNORE, PseudoParseError, collate, encode_example, parse_pseudo, pseudo_from_ids
import pytest


def test_exact_layout(tok_ids):
    tok, ids = tok_ids
    c, q, a = tok.encode("inform(name=x)"), tok.encode("what is the natural language form?"), tok.encode("x is nice")
    ex = encode_example(tok, ids, "inform(name=x)", "what is the natural language form?", ["x is nice"],
                        "rnnlg.rest", max_len=512)
    assert ex.cq == c + q + [ids.ans] and ex.answer == a and ex.gen_id == ids.gen["rnnlg.rest"]
    b = collate([ex], ids)
    cqa = c + q + [ids.ans] + a
    assert b.qa_input[0].tolist() == cqa
    # __ans__ position predicts a[0]; the last answer token predicts eos; no loss on c/q
    assert b.qa_target[0].tolist() == [IGNORE] * (len(c) + len(q)) + a + [ids.eos]
    assert b.lm_input[0].tolist() == [ids.gen["rnnlg.rest"]] + cqa
    assert b.lm_target[0].tolist() == cqa + [ids.eos]
    assert ids.eos == 50256 and (ids.ans, ids.pad, ids.unk) == (50257, 50258, 50259) and ids.gen["rnnlg.rest"] == 50260


def test_padding_and_multiple_answers(tok_ids):
    tok, ids = tok_ids
    short = encode_example(tok, ids, "a", "b", ["c"], "rnnlg.rest", 512)
    multi = encode_example(tok, ids, "a long context here", "q", ["one", "two"], "rnnlg.rest", 512)
    assert multi.answer == tok.encode("one") + [ids.pad] + tok.encode("two")
    b = collate([short, multi], ids)
    n = len(short.cq) + len(short.answer)
    assert (b.qa_input[0, n:] == ids.pad).all() and (b.qa_target[0, n:] == IGNORE).all()
    assert (b.lm_target[0, n + 1:] == IGNORE).all()
    assert b.qa_input.shape == b.qa_target.shape and b.lm_input.shape == b.lm_target.shape


def test_truncation_keeps_context_head_and_fits(tok_ids):
    tok, ids = tok_ids
    ctx = " ".join(f"w{i}" for i in range(200))
    ex = encode_example(tok, ids, ctx, "q?", ["the answer"], "rnnlg.rest", max_len=40)
    assert ex.truncated and ex.lm_length <= 40
    assert ex.cq[:5] == tok.encode(ctx)[:5] and ex.answer == tok.encode("the answer")


def test_parse_pseudo(tok_ids):
    tok, ids = tok_ids
    g = ids.gen["rnnlg.rest"]
    cq, a = tok.encode("inform(x) what?"), tok.encode("x is good")
    task, c, sq, ans = parse_pseudo([g] + cq + [ids.ans] + a + [ids.eos], ids, {g: "rnnlg.rest"})
    assert (task, c, sq, ans) == ("rnnlg.rest", cq, [], a)
    for bad in ([g] + cq + a, [g] + cq + [ids.ans] + a + [ids.ans], cq + [ids.ans] + a, []):
        with pytest.raises(PseudoParseError):
            parse_pseudo(bad, ids, {g: "rnnlg.rest"})
    # empty answers are kept, unparsable ones counted
    exs, dropped = pseudo_from_ids([[g] + cq + [ids.ans], [g] + cq, [g, ids.ans] + a], ids, {g: "rnnlg.rest"}, 512)
    assert dropped == 1 and len(exs) == 2 and exs[0].answer == [] and all(e.is_pseudo for e in exs)
