"""Task metrics (LAMOL / L2KD / decaNLP definitions) and continual-learning summaries.

Small pure functions: strings in, numbers out, every score on a 0-100 scale.

Per task (``compute_metrics``), as the original's ``metrics.compute_metrics``:

* all tasks: ``em`` (exact string match, max over golds), ``nf1`` (token F1 of the
  SQuAD-normalised strings, max over golds), ``nem`` (exact match of the normalised
  strings, max over golds);
* wikisql: ``lfem`` (logical-form exact match, needs the answers file); em/nf1/nem
  are then taken against the lowercased gold query of the answers file;
* woz.en: ``joint_goal_em``, ``turn_request_em``, ``turn_goal_em``,
  ``avg_dialogue = (joint_goal_em + turn_request_em) / 2`` (needs the answers file);
  em/nf1/nem are taken against the answers-file entry ``[turn_id, belief]`` as in L2KD;
* zre: ``corpus_f1``, ``precision``, ``recall``;
* iwslt.en.de, multinli.in.out: ``bleu`` (sacrebleu corpus BLEU, lowercase);
* cnn_dailymail, e2enlg, e2enlg2, rnnlg.*: ``rouge1``, ``rouge2``, ``rougeL``,
  ``avg_rouge`` (mean of the three).

Documented differences from the original:

* ROUGE comes from ``rouge-score`` (F-measure, Porter stemming, which needs no NLTK
  data download), not pyrouge + ROUGE-1.5.5. Like the original, the text is split into
  sentences at ``.`` and ROUGE-L is the summary-level (union-LCS) variant
  (rouge-score's ``rougeLsum``). With several references rouge-score keeps, per example
  and per ROUGE type, the reference with the best F-measure; ROUGE-1.5.5 with its
  default scoring formula "A" (model average, the original's setting) pools the
  n-gram counts over all references instead, so multi-reference scores (e2enlg,
  rnnlg.* test sets) are usually somewhat higher here. rouge-score's tokenizer also
  lowercases and keeps only ``[a-z0-9]`` runs (non-ASCII letters split words).
* ``nf1`` keeps the original's rule that an empty prediction scores F1 0 even
  against an empty gold (SQuAD's official script gives 1); ``nem`` gives 1 there.
* An example with no gold answers (unanswerable) is scored against ``[""]``, the
  empty answer the original trains on.
* BLEU accepts a different number of references per example (the original needs the
  same number everywhere).
* woz.en dialogue metrics read the examples in the given order (the caller orders them
  by qa id, as the original); decaNLP re-sorted by turn-id string, LAMOL/L2KD do not.
"""
from __future__ import annotations

import collections
import math
import re
import string
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "normalize_answer",
    "exact_match",
    "f1",
    "max_over_golds",
    "em_score",
    "nf1_score",
    "nem_score",
    "bleu_score",
    "rouge_scores",
    "corpus_f1",
    "to_logical_form",
    "lfem_score",
    "dialogue_scores",
    "compute_metrics",
    "task_score",
    "average_score",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "summarize_matrix",
    "BLEU_TASKS",
    "ROUGE_TASKS",
]

BLEU_TASKS = ("iwslt.en.de", "multinli.in.out")
ROUGE_TASKS = ("cnn_dailymail", "e2enlg", "e2enlg2", "rnnlg.rest", "rnnlg.hotel", "rnnlg.tv", "rnnlg.laptop")

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ----------------------------------------------------------------------------- per example

def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, drop a/an/the, squeeze spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the strings are identical, else 0.0 (no normalisation)."""
    return float(prediction == gold)


def f1(prediction: str, gold: str) -> float:
    """Token F1 (0-1) of whitespace tokens, bag-of-words overlap; 0 when nothing overlaps
    (so two empty strings score 0, as the original)."""
    p, g = prediction.split(), gold.split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(fn, prediction: str, golds: Sequence[str]) -> float:
    """``max(fn(prediction, g) for g in golds)``; an empty gold list counts as ``[""]``."""
    return max(fn(prediction, g) for g in (golds if len(golds) else [""]))


def _check_lengths(preds, golds):
    if len(preds) != len(golds):
        raise ValueError(f"got {len(preds)} predictions for {len(golds)} gold lists")
    if len(preds) == 0:
        raise ValueError("no examples to score")


def em_score(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Mean exact match (0-100), max over each example's golds."""
    _check_lengths(preds, golds)
    return 100.0 * sum(max_over_golds(exact_match, p, g) for p, g in zip(preds, golds)) / len(preds)


def nf1_score(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Mean token F1 (0-100) of normalised strings, max over golds."""
    _check_lengths(preds, golds)
    total = sum(max_over_golds(f1, normalize_answer(p), [normalize_answer(x) for x in g] or [""])
                for p, g in zip(preds, golds))
    return 100.0 * total / len(preds)


def nem_score(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """Mean exact match (0-100) of normalised strings, max over golds."""
    _check_lengths(preds, golds)
    total = sum(max_over_golds(exact_match, normalize_answer(p), [normalize_answer(x) for x in g] or [""])
                for p, g in zip(preds, golds))
    return 100.0 * total / len(preds)


# ----------------------------------------------------------------------------- BLEU / ROUGE

def bleu_score(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-100), lowercase, all golds of an example as its references."""
    import sacrebleu

    _check_lengths(preds, golds)
    n_refs = max(1, max(len(g) for g in golds))
    streams = [[(g[i] if i < len(g) else None) for g in golds] for i in range(n_refs)]
    if n_refs == 1:
        streams = [[(g[0] if g else "") for g in golds]]
    return float(sacrebleu.corpus_bleu(list(preds), streams, lowercase=True).score)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)


def _sentences(text: str) -> str:
    # the original splits summaries into sentences at '.'; rougeLsum reads one per line
    return "\n".join(s.strip() for s in text.split(".") if s.strip())


def rouge_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Mean per-example ROUGE-1/2/L F-measure (0-100) and their average ``avg_rouge``."""
    _check_lengths(preds, golds)
    scorer = _rouge_scorer()
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, g in zip(preds, golds):
        refs = [_sentences(x) for x in (g if len(g) else [""])]
        s = scorer.score_multi(refs, _sentences(p))
        sums["rouge1"] += s["rouge1"].fmeasure
        sums["rouge2"] += s["rouge2"].fmeasure
        sums["rougeL"] += s["rougeLsum"].fmeasure
    out = {k: 100.0 * v / len(preds) for k, v in sums.items()}
    out["avg_rouge"] = (out["rouge1"] + out["rouge2"] + out["rougeL"]) / 3
    return out


# ----------------------------------------------------------------------------- zre corpus F1

def _word_set(text: str) -> set:
    words = ("".join(c for c in t if c not in _PUNCT) for t in text.strip().lower().split())
    return set(words) - {"the", "a", "an", "and", ""}


def corpus_f1(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> Dict[str, float]:
    """decaNLP's zero-shot relation extraction score on normalised strings (0-100).

    Each prediction and the union of its golds become word sets (punctuation, a/an/the/and
    removed). A match of a gold that is not just "unanswerable" is a true positive; a
    prediction other than "unanswerable" counts as a system positive, a gold other than
    "unanswerable" as a real positive. precision = tp / system positives, recall = tp /
    real positives, corpus_f1 their harmonic mean; all 0 when tp is 0.
    """
    _check_lengths(preds, golds)
    tp = sys_pos = real_pos = 0
    for p, g in zip(preds, golds):
        gold = set().union(*[_word_set(normalize_answer(x)) for x in g]) if len(g) else set()
        ans = _word_set(normalize_answer(p))
        gold_unans = gold == {"unanswerable"}
        if ans == gold and not gold_unans:
            tp += 1
        if ans != {"unanswerable"}:
            sys_pos += 1
        if not gold_unans:
            real_pos += 1
    if tp == 0:
        return {"corpus_f1": 0.0, "precision": 0.0, "recall": 0.0}
    p_, r_ = tp / sys_pos, tp / real_pos
    return {"corpus_f1": 100.0 * 2 * p_ * r_ / (p_ + r_), "precision": 100.0 * p_, "recall": 100.0 * r_}


# ----------------------------------------------------------------------------- wikisql lfEM

_AGGS = ["", "max", "min", "count", "sum", "avg"]
_CONDS = ["=", ">", "<"]
_COND_RE = "=|>|<"


def _longest_common_substring(a: str, b: str) -> int:
    # length of the longest run of equal characters when b is slid along a (as the original)
    best = 0
    for i in range(len(a)):
        run = 0
        for j in range(len(b)):
            if i + j < len(a) and a[i + j] == b[j]:
                run += 1
                best = max(best, run)
            else:
                run = 0
    return best


def _similarity(a: str, b: str) -> float:
    """Character LCS ratio with tie-breaks: LCS/max(len) + substring/1e4 - min(len)/1e8."""
    m, n = len(a), len(b)
    prev = [0] * (n + 1)
    for i in range(1, m + 1):
        cur = [0] * (n + 1)
        for j in range(1, n + 1):
            cur[j] = prev[j - 1] + 1 if a[i - 1] == b[j - 1] else max(prev[j], cur[j - 1])
        prev = cur
    return prev[n] / max(m, n) + _longest_common_substring(a, b) / 1e4 - min(m, n) / 1e8


def _best_header(headers, text: str) -> int:
    scores = [_similarity(col, text) for col, _ in headers]
    return int(np.argmax(np.array(scores)))


def to_logical_form(query: str, table: dict) -> dict:
    """Map a generated SQL string back to WikiSQL's ``{"sel", "agg", "conds"}``, as
    LAMOL / L2KD do (a fuzzier version of decaNLP's): the select column is the header
    most similar (character LCS) to the text between ``select`` and ``from table``,
    with or without its first word taken as the aggregation; each condition's column is
    the most similar header to the text before its operator (``=``, ``>``, ``<``);
    condition values are compared lowercased with spaces removed. Raises on text it
    cannot map (the caller counts that as wrong).
    """
    headers_in_order = [h.lower() for h in table["header"]]
    headers = sorted(((h, i) for i, h in enumerate(headers_in_order)), key=lambda x: len(x[0]), reverse=True)
    cond_text = None
    if "where" in query:
        query, cond_text = query.split("where", 1)
    sel_text = " ".join(query.split()[1:-2])
    sel_no_agg = " ".join(sel_text.split()[1:])
    scores = []
    for col, _ in headers:
        scores += [_similarity(col, sel_text), _similarity(col, sel_no_agg)]
    best = int(np.argmax(np.array(scores)))
    sel, agg = headers[best // 2][1], 0
    if best % 2 == 1:
        first = sel_text.split()[0]
        if first not in _AGGS[1:]:
            raise ValueError(f"unknown aggregation {first!r}")
        agg = _AGGS.index(first)

    conds: List[list] = []
    if cond_text is not None:
        pieces = [x.strip() for x in re.split(_COND_RE, cond_text)]
        parts = [pieces[0]]
        for mid in pieces[1:-1]:
            parts.extend(re.split("and", mid))  # "value and column" between two operators
        parts.append(pieces[-1])
        for i in range(0, len(parts), 2):
            parts[i] = headers[_best_header(headers, parts[i])][0]
        for i, m in enumerate(re.finditer(_COND_RE, cond_text)):
            parts[2 * i] = parts[2 * i] + " " + m.group()
        pairs = [" ".join(parts[2 * i:2 * i + 2]) for i in range(len(parts) // 2)]
        text = " " + " and ".join(pairs) + " "
        for col, idx in headers:
            text = text.replace(" " + col + " ", f" Col{idx} ")
        tokens = text.split()
        tokens = [f"Cond{_CONDS.index(t)}" if t in _CONDS else t for t in tokens]
        chunks = [c for c in re.split(r"(Col\d+ Cond\d+)", " ".join(tokens)) if c.strip()]
        for k, chunk in enumerate(chunks):
            words = chunk.split()
            if k % 2 == 0:
                conds.append([int(words[0].replace("Col", "")), int(words[1].replace("Cond", ""))])
                continue
            if words and words[-1] == "and":
                words = words[:-1]
            value = []
            for w in words:
                if "Col" in w:
                    w = headers_in_order[int(w.replace("Col", ""))]
                if "Cond" in w:
                    w = _CONDS[int(w.replace("Cond", ""))]
                value.append(w)
            conds[-1].append(" ".join(value).replace(" ", ""))
    return {"sel": sel, "conds": conds, "agg": agg}


def _gold_logical_form(sql: dict) -> dict:
    conds = [[c[0], c[1], str(c[2]).lower().replace(" ", "")] for c in sql["conds"]]
    return {"sel": sql["sel"], "conds": conds, "agg": sql["agg"]}


def lfem_score(preds: Sequence[str], answers: Sequence[dict]) -> float:
    """Logical-form exact match (0-100): :func:`to_logical_form` of each prediction equals
    the gold ``sql`` (values lowercased, spaces removed); unmappable predictions are wrong."""
    if len(preds) != len(answers) or not preds:
        raise ValueError(f"lfem needs one answers-file entry per prediction (got {len(preds)} and {len(answers)})")
    correct = 0
    for p, a in zip(preds, answers):
        try:
            correct += to_logical_form(p, a["table"]) == _gold_logical_form(a["sql"])
        except Exception:  # the original counts any failure to parse as wrong
            pass
    return 100.0 * correct / len(preds)


# ----------------------------------------------------------------------------- woz.en dialogue

def _delta_state(text: str) -> dict:
    """Parse ``"slot: value, slot: value; request, request"`` (or ``"None"``)."""
    empty = {"inform": {}, "request": []}
    if text.lower() == "none" or text.strip() in ("", ";"):
        return empty
    halves = text.split(";")
    if len(halves) != 2:
        return empty
    inform_part, request_part = ([y.strip() for y in h.strip().split(",")] for h in halves)
    inform = {}
    for item in inform_part:
        kv = item.split(":")
        if len(kv) == 2:
            inform[kv[0].strip()] = kv[1].strip()
    return {"inform": inform, "request": request_part}


def dialogue_scores(preds: Sequence[str], answers: Sequence[Sequence[str]]) -> Dict[str, float]:
    """WOZ belief tracking (0-100) from predictions and ``[turn_id, gold change]`` entries.

    Turns are read in the given order; a turn id whose ``en_<dialogue>`` prefix differs
    from the current dialogue's starts a new dialogue with empty states. Each turn's
    informs update the accumulated state (a slot's later value overwrites it).
    joint_goal_em: accumulated predicted state == accumulated gold state;
    turn_request_em: this turn's request list equal (same order);
    turn_goal_em: this turn's informs equal; avg_dialogue = (joint + request) / 2.
    """
    if len(preds) != len(answers) or not preds:
        raise ValueError(f"dialogue metrics need one answers-file entry per prediction (got {len(preds)} and {len(answers)})")
    joint = request = goal = 0
    dialogue = None
    state: dict = {}
    gold_state: dict = {}
    for p, (turn_id, gold) in zip(preds, answers):
        prefix = turn_id.split("_")[:-1]
        if dialogue is None or dialogue != prefix:
            state, gold_state, dialogue = {}, {}, prefix
        d, g = _delta_state(p), _delta_state(gold)
        state.update(d["inform"])
        gold_state.update(g["inform"])
        joint += state == gold_state
        request += d["request"] == g["request"]
        goal += d["inform"] == g["inform"]
    n = len(preds)
    out = {"joint_goal_em": 100.0 * joint / n, "turn_request_em": 100.0 * request / n,
           "turn_goal_em": 100.0 * goal / n}
    out["avg_dialogue"] = (out["joint_goal_em"] + out["turn_request_em"]) / 2
    return out


# ----------------------------------------------------------------------------- per task

def compute_metrics(task: str, preds: List[str], golds: List[List[str]],
                    extra: Optional[list] = None) -> Dict[str, float]:
    """The original's metric set for ``task`` (all 0-100), see the module docstring.

    preds: decoded answers; golds: each example's gold answers (from the QA file);
    extra: the answers-file entries aligned with ``preds`` (required for wikisql and
    woz.en, where they are the gold as in the original: order both by qa id).
    """
    if task in ("wikisql", "woz.en"):
        if extra is None:
            raise ValueError(f"{task} needs the answers-file entries (extra=...) aligned with the predictions")
        if len(extra) != len(preds):
            raise ValueError(f"{task}: {len(preds)} predictions but {len(extra)} answers-file entries")
    out: Dict[str, float] = {}
    if task == "wikisql":
        out["lfem"] = lfem_score(preds, extra)
        golds = [[a["answer"].lower()] for a in extra]
    elif task == "woz.en":
        golds = [list(a) for a in extra]  # [turn_id, belief], as L2KD's test
    _check_lengths(preds, golds)
    out["em"] = em_score(preds, golds)
    if task in BLEU_TASKS:
        out["bleu"] = bleu_score(preds, golds)
    if task in ROUGE_TASKS:
        out.update(rouge_scores(preds, golds))
    out["nf1"] = nf1_score(preds, golds)
    out["nem"] = nem_score(preds, golds)
    if task == "zre":
        out.update(corpus_f1(preds, golds))
    if task == "woz.en":
        out.update(dialogue_scores(preds, extra))
    return out


def task_score(task: str, metrics: Dict[str, float]) -> float:
    """The single 0-100 score of ``task`` (docs/design-notes.md, "One score per task")."""
    from l2kd.data.tasks import get_task

    key = get_task(task).metric
    if key not in metrics:
        raise KeyError(f"metrics of task {task!r} lack its score {key!r} (have: {', '.join(metrics)})")
    return float(metrics[key])


# ----------------------------------------------------------------------------- accuracy matrix

def _matrix(R) -> np.ndarray:
    a = np.array(R, dtype=float)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < a.shape[0]:
        raise ValueError(f"R must be a T x N matrix with N >= T >= 1 (R[i][j]: score on task j after task i), got shape {a.shape}")
    return a


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def average_score(R) -> float:
    """Mean score over the first T tasks after training the last one:
    ``mean_{j<T} R[T-1][j]`` (NaN entries skipped)."""
    a = _matrix(R)
    T = a.shape[0]
    return _nanmean(a[T - 1, :T])


def backward_transfer(R) -> float:
    """``BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])``: negative means forgetting.
    NaN for T = 1 (or when every term is NaN)."""
    a = _matrix(R)
    T = a.shape[0]
    return _nanmean([a[T - 1, j] - a[j, j] for j in range(T - 1)])


def forgetting(R) -> float:
    """``F = mean_{j<T-1} (max_{i<T-1} R[i][j] - R[T-1][j])`` (Chaudhry et al. 2018):
    how far each earlier task fell from its best score before the last task.
    NaN for T = 1."""
    a = _matrix(R)
    T = a.shape[0]
    terms = []
    for j in range(T - 1):
        col = a[:T - 1, j]
        col = col[~np.isnan(col)]
        terms.append(col.max() - a[T - 1, j] if col.size else math.nan)
    return _nanmean(terms)


def forward_transfer(R, baseline=None) -> float:
    """``FWT = mean_{j>0} (R[j-1][j] - b_j)``: score on task j before training on it,
    relative to ``baseline[j]`` (e.g. the untrained model's score; 0 when None).
    NaN for T = 1."""
    a = _matrix(R)
    T = a.shape[0]
    b = np.zeros(a.shape[1]) if baseline is None else np.asarray(baseline, dtype=float)
    return _nanmean([a[j - 1, j] - b[j] for j in range(1, T)])


def summarize_matrix(R, baseline=None) -> Dict[str, float]:
    """``average_score``, ``backward_transfer``, ``forgetting`` and ``forward_transfer`` of R."""
    return {
        "average_score": average_score(R),
        "backward_transfer": backward_transfer(R),
        "forgetting": forgetting(R),
        "forward_transfer": forward_transfer(R, baseline),
    }
