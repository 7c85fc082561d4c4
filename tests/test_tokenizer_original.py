"""Encoding and decoding as pytorch-transformers 1.2.0's GPT2Tokenizer (what the original runs).

The expected ids and texts were produced by pytorch-transformers 1.2.0's GPT2Tokenizer on the
bundled GPT-2 BPE files, with LAMOL's tokens added as the original adds them
(``__ans__ __pad__ __unk__ <|endoftext|>``, then the generation tokens).
"""
from __future__ import annotations

import copy
import pickle

import pytest

from l2kd.data.qa_format import encode_example
from l2kd.tokenizer import OriginalGPT2Tokenizer, add_special_tokens, load_base_tokenizer

# (text, 1.2.0 encode(text), 1.2.0 decode(encode(text))) with __gen__ = 50260
CASES = [
    ("what is the natural language form?", [644, 318, 262, 3288, 3303, 1296, 30],
     " what is the natural language form?"),
    ("inform(name=x)", [4175, 7, 3672, 28, 87, 8], " inform(name=x)"),
    ("  leading and trailing spaces  ", [3756, 290, 25462, 9029], " leading and trailing spaces"),
    ("Hello, world! It's 2019: 3.14 dollars; costs $5,000.",
     [18435, 11, 995, 0, 632, 338, 13130, 25, 513, 13, 1415, 5054, 26, 3484, 720, 20, 11, 830, 13],
     " Hello, world! It's 2019: 3.14 dollars; costs $5,000."),
    ("multiple   spaces\tand\ttabs\nnew line", [3294, 220, 220, 9029, 197, 392, 197, 8658, 82, 198, 3605, 1627],
     " multiple   spaces\tand\ttabs\nnew line"),
    ("__ans__", [50257], " __ans__"),
    ("question __ans__ answer __pad__ second answer", [1808, 50257, 3280, 50258, 1218, 3280],
     " question __ans__ answer __pad__ second answer"),
    ("no space__ans__around__pad__tokens", [645, 2272, 50257, 1088, 50258, 16326],
     " no space __ans__ around __pad__ tokens"),
    ("__gen__ context text __ans__ the answer<|endoftext|>", [50260, 4732, 2420, 50257, 262, 3280, 50256],
     " __gen__ context text __ans__ the answer<|endoftext|>"),
    ("caf\u00e9 na\u00efve \u65e5\u672c\u8a9e emoji \U0001F600 \u2014 dash",
     [40304, 41492, 10545, 245, 98, 17312, 105, 45739, 252, 44805, 30325, 222, 851, 14470],
     " caf\u00e9 na\u00efve \u65e5\u672c\u8a9e emoji \U0001F600 \u2014 dash"),
    ("", [], ""),
    ("don't can't I'm we've THEY'LL", [836, 470, 460, 470, 314, 1101, 356, 1053, 33302, 6, 3069],
     " don't can't I'm we've THEY'LL"),
    ("__ans____ans__", [50257, 50257], " __ans__ __ans__"),
    ("<|endoftext|>", [50256], "<|endoftext|>"),
    (" inform ( name = x ; food = chinese )", [4175, 357, 1438, 796, 2124, 2162, 2057, 796, 442, 3762, 1267],
     " inform ( name = x ; food = chinese )"),
]


@pytest.fixture(scope="module")
def tok():
    t = load_base_tokenizer("gpt2")
    ids = add_special_tokens(t, ["rnnlg.tv"], add_task_tokens=False, use_sep=False)
    assert (ids.ans, ids.pad, ids.unk, ids.gen["rnnlg.tv"]) == (50257, 50258, 50259, 50260)
    return t


@pytest.mark.parametrize("text,ids,decoded", CASES, ids=[repr(c[0])[:30] for c in CASES])
def test_encode_and_decode_as_the_original(tok, text, ids, decoded):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == decoded
    assert tok.tokenize(text) == tok.convert_ids_to_tokens(ids)


def test_decode_mixed_sequence_spaces_added_tokens_and_cleans_up(tok):
    """A pseudo-sample as written to lm.csv: " " before each added token, "nice ," -> "nice,"."""
    ids = [50260, 262, 7541, 318, 3621, 837, 2125, 470, 340, 50257, 3763, 764, 50258, 50256]
    assert tok.decode(ids) == " __gen__ the hotel is nice, isn't it __ans__ yes. __pad__<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == " __gen__ the hotel is nice, isn't it __ans__ yes. __pad__"
    # lm.csv re-tokenized, as the original: the clean-up made " ," and " ." into "," and "."
    assert tok.encode(tok.decode(ids)) == [50260, 262, 7541, 318, 3621, 11, 2125, 470, 340, 50257, 3763, 13,
                                           50258, 50256]


def test_task_tokens_split_in_the_order_they_were_added():
    t = load_base_tokenizer("gpt2")
    ids = add_special_tokens(t, ["rnnlg.tv", "e2enlg", "e2enlg2"], add_task_tokens=True, use_sep=False)
    assert [ids.gen[k] for k in ("rnnlg.tv", "e2enlg", "e2enlg2")] == [50260, 50261, 50262]
    assert t.encode("__rnnlg.tv__ inform(name=x)") == [50260, 4175, 7, 3672, 28, 87, 8]
    assert t.encode("a __e2enlg2__ b __e2enlg__ c") == [257, 50262, 275, 50261, 269]
    assert t.encode("__e2enlg____e2enlg2__") == [50261, 50262]


def test_whitespace_only_text_encodes_to_nothing(tok):
    """1.2.0 returns its first added token (__ans__, 50257) here; l2kd returns no tokens."""
    assert tok.encode("   ") == [] and tok.encode("\n\t") == []


def test_example_layout_uses_the_original_ids(tok):
    ids = add_special_tokens(tok, ["rnnlg.tv"], add_task_tokens=False, use_sep=False)
    ex = encode_example(tok, ids, "inform(name=x)", "what is the natural language form?", ["x is nice , is n't it"],
                        "rnnlg.tv", 1024)
    assert ex.cq == [4175, 7, 3672, 28, 87, 8, 644, 318, 262, 3288, 3303, 1296, 30, 50257]
    assert ex.answer[0] == 2124  # " x"
    assert ex.golds == ["x is nice, isn't it"]  # as the original's test decodes its gold ids


def test_wrapper_keeps_the_base_tokenizer_interface(tok, tmp_path):
    assert isinstance(tok, OriginalGPT2Tokenizer)
    assert len(tok) == 50261 and tok.eos_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("__gen__") == 50260
    assert copy.deepcopy(tok).encode("inform(name=x)") == [4175, 7, 3672, 28, 87, 8]
    assert pickle.loads(pickle.dumps(tok)).decode([50257, 3280]) == " __ans__ answer"
    assert tok("inform")["input_ids"] == [4175]
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tmp_path)
    assert plain.convert_tokens_to_ids("__ans__") == 50257
    assert OriginalGPT2Tokenizer(plain).encode("what is the natural language form?")[0] == 644
