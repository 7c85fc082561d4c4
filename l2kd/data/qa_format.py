"""LAMOL's QA format: token layout, truncation, batching tensors and pseudo-sample parsing.

For context ids ``c``, question ids ``q`` and answer ids ``a`` (L2KD utils.py:371-386):

* test prompt      ``cq   = c + [sep] + q + [ans]``  (``[sep]`` only with ``--use_sep``)
* QA input/target  ``cqa  = cq + a``;  ``Y = [-1]*(len(cq)-1) + a + [eos]``
* LM input/target  ``[gen] + cqa``;    ``cqa + [eos]``  (LM loss on every position)

A context too long for ``max_len`` keeps its first tokens, with a budget computed separately
for the test prompt (``max_len - 1 - len(sep + q + ans)``) and for the training sequences
(``max_len - 1 - len(sep + q + ans + a)``): the test prompt keeps ``len(a)`` more context
tokens than the training ``cq`` (:attr:`Encoded.prompt`).

Several gold answers are joined by ``__pad__`` when used as a training target. Padding is on
the right with ``__pad__`` (inputs) and -1 (targets); GPT-2 is causal, so no attention mask
is needed for training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from l2kd.tokenizer import SpecialIds

IGNORE = -1


@dataclass
class Encoded:
    """One example in ids. ``cq`` already ends with ``__ans__``."""

    cq: List[int]
    answer: List[int]
    gen_id: int
    task: str
    golds: List[str] = field(default_factory=list)  # gold answer strings (evaluation)
    qa_id: str = ""
    is_pseudo: bool = False
    truncated: bool = False
    test_cq: Optional[List[int]] = None  # the test prompt, when it keeps more context than cq
    full_answer_len: int = -1  # length of the joined answers before any truncation; -1 = len(answer)

    @property
    def lm_length(self) -> int:
        """Length of the LM input ``[gen] + cq + a`` (the longest of the two inputs)."""
        return 1 + len(self.cq) + len(self.answer)

    @property
    def prompt(self) -> List[int]:
        """The test-time prompt ``c + [sep] + q + [ans]`` (context cut without the answer's share)."""
        return self.cq if self.test_cq is None else self.test_cq

    @property
    def answer_len(self) -> int:
        """Token length of the gold answers joined by ``__pad__``, as encoded before truncation."""
        return len(self.answer) if self.full_answer_len < 0 else self.full_answer_len


def encode_example(tok, ids: SpecialIds, context: str, question: str, answers: Sequence[str], task: str,
                   max_len: int, qa_id: str = "", is_pseudo: bool = False) -> Encoded:
    """Tokenize one example in LAMOL's layout, truncating the context (then the answer) so the
    LM input ``[gen] + cq + a`` and its target fit ``max_len`` tokens.

    ``golds`` are the answers as the original's test sees them: each one encoded and decoded
    again (stripped), so they go through the same decoding as the predictions.
    """
    c = tok.encode(context) if context else []
    q = tok.encode(question) if question else []
    a: List[int] = []
    golds: List[str] = []
    for i, text in enumerate(answers):
        if i:
            a.append(ids.pad)
        piece = tok.encode(text)
        a.extend(piece)
        golds.append(tok.decode(piece).strip())
    sep = [ids.sep] if ids.sep >= 0 else []
    return assemble(c, sep + q, a, ids, task, max_len, golds=golds, qa_id=qa_id, is_pseudo=is_pseudo)


def assemble(c: List[int], sep_q: List[int], a: List[int], ids: SpecialIds, task: str, max_len: int,
             golds: Optional[List[str]] = None, qa_id: str = "", is_pseudo: bool = False,
             gen_id: Optional[int] = None) -> Encoded:
    """Build :class:`Encoded` from id pieces with LAMOL's truncation: keep the context's first
    tokens; if even an empty context does not fit, cut the answer (the original cuts it too).
    The test prompt's context budget leaves out the answer (``Encoded.prompt``)."""
    full_answer_len = len(a)
    test_cq = _test_prompt(c, sep_q, ids.ans, max_len)
    rest = len(sep_q) + 1 + len(a)  # sep + q + ans + a
    budget = max_len - 1 - rest  # one position for the gen token of the LM input
    truncated = False
    if len(c) > max(budget, 0):
        c, truncated = c[: max(budget, 0)], True
    overflow = 1 + len(c) + rest - max_len
    if overflow > 0:
        a, truncated = a[: max(len(a) - overflow, 0)], True
        overflow = 1 + len(c) + len(sep_q) + 1 + len(a) - max_len
        if overflow > 0:  # question alone too long: keep its head
            sep_q = sep_q[: len(sep_q) - overflow]
    cq = c + sep_q + [ids.ans]
    return Encoded(cq=cq, answer=a, gen_id=ids.gen.get(task, -1) if gen_id is None else gen_id,
                   task=task, golds=golds or [], qa_id=qa_id, is_pseudo=is_pseudo, truncated=truncated,
                   test_cq=None if test_cq == cq else test_cq, full_answer_len=full_answer_len)


def _test_prompt(c: List[int], sep_q: List[int], ans: int, max_len: int) -> List[int]:
    """``c + sep + q + [ans]`` with the context cut to ``max_len - 1 - len(sep + q + ans)``
    tokens, as the original's test prompt (``len <= max_len - 1``: room for one answer token).
    A question that alone leaves no room keeps its head (the original's negative slice there
    would drop the context's *tail* and still overflow)."""
    budget = max_len - 1 - (len(sep_q) + 1)
    if budget < 0:
        return sep_q[: max(max_len - 2, 0)] + [ans]
    return c[:budget] + sep_q + [ans]


@dataclass
class Batch:
    """Padded training tensors for a list of :class:`Encoded` (``[B, L]`` each), and what is
    known of them on the host before they move to a device: the flat positions that have a
    target (``rows``), the number of LM target tokens, and the rows and replayed rows of the whole
    batch it is a shard of (``n_rows``, ``n_pseudo``), so that none needs a read back."""

    qa_input: torch.Tensor
    qa_target: torch.Tensor
    lm_input: torch.Tensor
    lm_target: torch.Tensor
    is_pseudo: torch.Tensor  # bool [B]
    # flat (row-major [B * L]) positions with a target, int64, by part: "qa", "lm", and per part
    # those of the current task's rows ("qa_cur", "lm_cur") and of the replayed ones ("qa_rep", "lm_rep")
    rows: Dict[str, torch.Tensor] = field(default_factory=dict)
    n_tokens: int = 0  # LM target tokens (the throughput unit), counted when the batch was built
    n_rows: int = 0  # examples in the whole (all ranks') batch
    n_pseudo: int = 0  # of them, replayed pseudo-samples

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``; on a GPU copied from pinned memory without waiting."""
        pin = torch.device(device).type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return (t.pin_memory() if pin else t).to(device, non_blocking=True)

        return Batch(*(move(t) for t in (self.qa_input, self.qa_target, self.lm_input, self.lm_target,
                                         self.is_pseudo)),
                     rows={k: move(v) for k, v in self.rows.items()}, n_tokens=self.n_tokens, n_rows=self.n_rows,
                     n_pseudo=self.n_pseudo)


def target_rows(target: torch.Tensor, is_pseudo: torch.Tensor, part: str) -> Dict[str, torch.Tensor]:
    """The flat positions of ``target`` (``[B, L]``, on the host) that have a target: all, the
    current task's rows' and the replayed rows', keyed ``part``, ``part_cur``, ``part_rep``."""
    has = target != IGNORE
    pseudo = is_pseudo[:, None].expand_as(has)
    flat = lambda m: torch.nonzero(m.reshape(-1)).reshape(-1)  # noqa: E731
    return {part: flat(has), f"{part}_cur": flat(has & ~pseudo), f"{part}_rep": flat(has & pseudo)}


def _pad(rows: List[List[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(examples: Sequence[Encoded], ids: SpecialIds, whole: Optional[Sequence[Encoded]] = None) -> Batch:
    """Right-pad the QA and LM inputs/targets of ``examples``; ``whole``: the global batch they
    are this rank's shard of (default ``examples``), whose row counts the batch records."""
    whole = examples if whole is None else whole
    qa_in, qa_tg, lm_in, lm_tg = [], [], [], []
    for ex in examples:
        cqa = ex.cq + ex.answer
        qa_in.append(cqa)
        qa_tg.append([IGNORE] * (len(ex.cq) - 1) + ex.answer + [ids.eos])
        lm_in.append([ex.gen_id] + cqa)
        lm_tg.append(cqa + [ids.eos])
    qa_target, lm_target = _pad(qa_tg, IGNORE), _pad(lm_tg, IGNORE)
    is_pseudo = torch.tensor([ex.is_pseudo for ex in examples], dtype=torch.bool)
    return Batch(
        qa_input=_pad(qa_in, ids.pad), qa_target=qa_target, lm_input=_pad(lm_in, ids.pad), lm_target=lm_target,
        is_pseudo=is_pseudo, rows={**target_rows(qa_target, is_pseudo, "qa"), **target_rows(lm_target, is_pseudo, "lm")},
        n_tokens=sum(len(t) for t in lm_tg), n_rows=len(whole), n_pseudo=sum(ex.is_pseudo for ex in whole),
    )


class PseudoParseError(ValueError):
    """A generated sequence that is not ``gen c [sep q] __ans__ a [eos]``."""


def parse_pseudo(seq: Sequence[int], ids: SpecialIds, gen_to_task: dict) -> Tuple[str, List[int], List[int], List[int]]:
    """Split a generated id sequence into (task, context, sep+question, answer).

    The original's rule (K:342-359): the first id is a generation token; the rest must hold
    exactly one ``__ans__`` (and, with ``--use_sep``, exactly one ``__sep__`` before it);
    ``<|endoftext|>`` is removed from the answer; an empty answer is kept.
    """
    if not seq or seq[0] not in gen_to_task:
        raise PseudoParseError("does not start with a generation token")
    body = list(seq[1:])
    if body.count(ids.ans) != 1:
        raise PseudoParseError(f"{body.count(ids.ans)} __ans__ tokens (need exactly 1)")
    k = body.index(ids.ans)
    cq, a = body[:k], [t for t in body[k + 1:] if t != ids.eos]
    if ids.sep >= 0:
        if cq.count(ids.sep) != 1:
            raise PseudoParseError(f"{cq.count(ids.sep)} __sep__ tokens (need exactly 1)")
        s = cq.index(ids.sep)
        return gen_to_task[seq[0]], cq[:s], cq[s:], a
    return gen_to_task[seq[0]], cq, [], a




def pseudo_from_ids(seqs: Iterable[Sequence[int]], ids: SpecialIds, gen_to_task: dict, max_len: int
                    ) -> Tuple[List[Encoded], int]:
    """Parse generated sequences into pseudo examples; return (examples, number dropped)."""
    out, dropped = [], 0
    for seq in seqs:
        try:
            task, c, sep_q, a = parse_pseudo(seq, ids, gen_to_task)
        except PseudoParseError:
            dropped += 1
            continue
        out.append(assemble(c, sep_q, a, ids, task, max_len, is_pseudo=True, gen_id=seq[0]))
    return out, dropped
