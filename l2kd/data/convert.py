"""Build LAMOL-layout task files from the raw RNNLG, E2E NLG and WOZ 2.0 releases.

Usage::

    python -m l2kd.data.convert {rnnlg,e2e,woz,all} --src RAW_DIR --out DATA_DIR \
        [--limit-train N] [--limit-test N]
    python -m l2kd.data.convert bundle --src RAW_DIR --out l2kd/resources/data

``RAW_DIR`` holds ``rnnlg/{restaurant,hotel,tv,laptop}/{train,test}.json``,
``e2e/{devset,testset_w_refs}.csv`` and ``woz/woz_{train,validate,test}_en.json``
(the layout of the public releases). Output is deterministic (same input, same bytes).
A full conversion (no --limit-*) fails if a size differs from the known release size
(``EXPECTED_COUNTS``) unless --no-check-counts is given.

Formats (context / question / answers of each example):

* RNNLG (``rnnlg.rest/hotel/tv/laptop``): context = the dialogue act as written in
  the release (``inform(name='x';area=y)``), question = ``NLG_QUESTION``. Train: one
  example per (act, reference) pair, except laptop: one per act with its first
  reference (L2KD's sizes 6228 / 6446 / 8442 / 7944 imply this; which laptop reference
  L2KD kept is not documented). Test: one example per act, all references as answers
  (1039 / 1075 / 1407 / 2649).
* E2E (``e2enlg``): context = the meaning representation, question = ``NLG_QUESTION``.
  Train: every (mr, ref) row of ``devset.csv`` (4672; the 42k train split is not
  available offline), test: ``testset_w_refs.csv`` grouped per MR in first-seen order,
  all references as answers (630). L2KD's own e2enlg files hold an undocumented sample
  of 6000 train / 2000 test examples, so scores are not comparable one to one.
  L2KD's converted files are not public in text form: the question wording
  here is l2kd's choice.
* WOZ (``woz.en``): decaNLP's conversion, which LAMOL's woz.en files come from: one
  example per user turn; context = the system acts of the turn (``slot: value`` pairs
  and bare request slots, joined by ``", "``, then ``" -- "``) followed by the user
  transcript, whitespace-normalised; question = ``"What is the change in state?"``;
  answer = the change of belief state: new or changed ``slot: value`` informs joined by
  ``", "``, then ``";"``, then the requested slots joined by ``", "`` after a space;
  ``"None"`` when nothing changed. Train 2536 / dev 830 / test 1646 turns, qa ids
  0..N-1 in file order. ``woz.en_answers.json`` (for the test split, which the
  original's test reads) is a list of ``[turn_id, answer]`` with turn_id
  ``"en_<dialogue index>_<turn index>"``: the gold the dialogue metrics use.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .squad import DataError, QAExample, load_squad_file, write_json_atomic, write_squad_file
from .tasks import task_file

__all__ = [
    "NLG_QUESTION",
    "WOZ_QUESTION",
    "RNNLG_DOMAINS",
    "EXPECTED_COUNTS",
    "read_rnnlg_json",
    "rnnlg_examples",
    "e2e_examples",
    "woz_examples",
    "convert_rnnlg",
    "convert_e2e",
    "convert_woz",
    "convert_all",
    "make_bundle",
    "main",
]

NLG_QUESTION = "what is the natural language form?"
WOZ_QUESTION = "What is the change in state?"

# task name -> folder of the RNNLG release
RNNLG_DOMAINS = {"rnnlg.rest": "restaurant", "rnnlg.hotel": "hotel", "rnnlg.tv": "tv", "rnnlg.laptop": "laptop"}

# Full-conversion sizes (L2KD's data_attrs.json for RNNLG, LAMOL's for woz.en, the
# offline E2E files for e2enlg). Checked when no --limit-* is given.
EXPECTED_COUNTS = {
    "rnnlg.rest": {"train": 6228, "test": 1039},
    "rnnlg.hotel": {"train": 6446, "test": 1075},
    "rnnlg.tv": {"train": 8442, "test": 1407},
    "rnnlg.laptop": {"train": 7944, "test": 2649},
    "e2enlg": {"train": 4672, "test": 630},
    "woz.en": {"train": 2536, "dev": 830, "test": 1646},
}


# ----------------------------------------------------------------------------- RNNLG

def read_rnnlg_json(path: str) -> List[list]:
    """Read an RNNLG release file: a '#' comment banner, then a JSON list of
    ``[dialogue_act, ref1, ref2, ...]``."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise DataError(f"RNNLG file not found: {path}") from None
    body = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    try:
        rows = json.loads(body)
    except json.JSONDecodeError as e:
        raise DataError(f"RNNLG file {path} is not valid JSON after its '#' banner: {e}") from None
    if not isinstance(rows, list):
        raise DataError(f"RNNLG file {path}: expected a JSON list of [act, ref, ...], got {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not (isinstance(r, list) and len(r) >= 2 and all(isinstance(x, str) for x in r)):
            raise DataError(f"RNNLG file {path}: entry {i} is not [dialogue_act, ref, ...] (strings)")
    return rows


def rnnlg_examples(rows: Sequence[list], task: str, split: str) -> List[QAExample]:
    """Examples of one RNNLG split (see the module docstring for the rules)."""
    out: List[QAExample] = []
    for act, *refs in rows:
        if split == "train":
            use = refs[:1] if task == "rnnlg.laptop" else refs
            for ref in use:
                out.append(QAExample(act, NLG_QUESTION, [ref], str(len(out)), task))
        else:
            out.append(QAExample(act, NLG_QUESTION, list(refs), str(len(out)), task))
    return out


# ----------------------------------------------------------------------------- E2E

def _read_e2e_csv(path: str) -> List[Tuple[str, str]]:
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["mr", "ref"]:
                raise DataError(f"E2E file {path}: expected a header 'mr,ref', got {header!r}")
            rows = []
            for i, r in enumerate(reader, start=2):
                if not r:
                    continue
                if len(r) < 2:
                    raise DataError(f"E2E file {path}: line {i} has {len(r)} field(s), expected mr,ref")
                rows.append((r[0], r[1]))
    except FileNotFoundError:
        raise DataError(f"E2E file not found: {path}") from None
    return rows


def e2e_examples(rows: Sequence[Tuple[str, str]], split: str, task: str = "e2enlg") -> List[QAExample]:
    """Train: one example per (mr, ref) row; test: one per MR (first-seen order), all refs."""
    if split == "train":
        return [QAExample(mr, NLG_QUESTION, [ref], str(i), task) for i, (mr, ref) in enumerate(rows)]
    grouped: Dict[str, List[str]] = {}
    for mr, ref in rows:
        grouped.setdefault(mr, []).append(ref)
    return [QAExample(mr, NLG_QUESTION, refs, str(i), task) for i, (mr, refs) in enumerate(grouped.items())]


# ----------------------------------------------------------------------------- WOZ

def _woz_context(turn: dict) -> str:
    acts = []
    for act in turn.get("system_acts", []):
        acts.append(": ".join(act) if isinstance(act, list) else act)
    prefix = ", ".join(acts)
    if prefix:
        prefix += " -- "
    return " ".join((prefix + turn["transcript"]).split())


def _woz_answer(belief_state: list, previous_inform: list) -> Tuple[str, list]:
    """The change of state of one turn, and this turn's inform slots."""
    inform, new_inform, request = [], [], []
    for item in belief_state:
        for slot in item.get("slots", []):
            if item["act"] == "inform":
                inform.append(slot)
                if slot not in previous_inform:
                    new_inform.append(slot)
            else:
                request.append(slot[1])
    text = ", ".join(f"{s[0]}: {s[1]}" for s in new_inform) + ";"
    if request:
        text += " " + ", ".join(request)
    return (text if len(text) > 1 else "None"), inform


def woz_examples(dialogues: Sequence[dict], task: str = "woz.en", lang: str = "en") -> Tuple[List[QAExample], List[list]]:
    """Examples of one WOZ split and their answers-file entries ``[turn_id, answer]``."""
    examples: List[QAExample] = []
    answers: List[list] = []
    for di, d in enumerate(dialogues):
        previous: list = []
        for ti, turn in enumerate(d["dialogue"]):
            answer, previous = _woz_answer(turn["belief_state"], previous)
            examples.append(QAExample(_woz_context(turn), WOZ_QUESTION, [answer], str(len(examples)), task))
            answers.append([f"{lang}_{di}_{ti}", answer])
    return examples, answers


def _read_json_file(path: str, what: str):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is not valid JSON: {e}") from None


# ----------------------------------------------------------------------------- writers

def _limit(examples: list, n: Optional[int]) -> list:
    return examples if n is None else examples[:n]


def _check(task: str, split: str, n: int, limited: bool, log, strict: bool = True) -> None:
    exp = EXPECTED_COUNTS.get(task, {}).get(split)
    log(f"{task:14s} {split:5s} {n:6d} examples" + ("" if limited or exp is None else f" (expected {exp})"))
    if strict and not limited and exp is not None and n != exp:
        raise DataError(f"{task} {split}: built {n} examples, expected {exp}: is the raw data a different release?")


def _print(msg: str) -> None:
    print(msg, flush=True)


def convert_rnnlg(src: str, out: str, limit_train: Optional[int] = None, limit_test: Optional[int] = None,
                  tasks: Iterable[str] = tuple(RNNLG_DOMAINS), log=_print,
                  check_counts: bool = True) -> Dict[str, Dict[str, int]]:
    """Write ``rnnlg.*_to_squad-{train,test}-v2.0.json`` from ``src/rnnlg``; return the counts."""
    counts: Dict[str, Dict[str, int]] = {}
    for task in tasks:
        folder = RNNLG_DOMAINS[task]
        counts[task] = {}
        for split, lim in (("train", limit_train), ("test", limit_test)):
            rows = read_rnnlg_json(os.path.join(src, "rnnlg", folder, f"{split}.json"))
            ex = _limit(rnnlg_examples(rows, task, split), lim)
            _check(task, split, len(ex), lim is not None, log, check_counts)
            write_squad_file(task_file(out, task, split), ex)
            counts[task][split] = len(ex)
    return counts


def convert_e2e(src: str, out: str, limit_train: Optional[int] = None, limit_test: Optional[int] = None,
                log=_print, check_counts: bool = True) -> Dict[str, Dict[str, int]]:
    """Write ``e2enlg_to_squad-{train,test}-v2.0.json`` from ``src/e2e``; return the counts."""
    task, counts = "e2enlg", {}
    for split, fname, lim in (("train", "devset.csv", limit_train), ("test", "testset_w_refs.csv", limit_test)):
        ex = _limit(e2e_examples(_read_e2e_csv(os.path.join(src, "e2e", fname)), split, task), lim)
        _check(task, split, len(ex), lim is not None, log, check_counts)
        write_squad_file(task_file(out, task, split), ex)
        counts[split] = len(ex)
    return {task: counts}


def convert_woz(src: str, out: str, limit_train: Optional[int] = None, limit_test: Optional[int] = None,
                log=_print, check_counts: bool = True) -> Dict[str, Dict[str, int]]:
    """Write ``woz.en_to_squad-{train,dev,test}-v2.0.json`` and ``woz.en_answers.json``
    (test split) from ``src/woz``; ``limit_test`` also limits dev. Returns the counts."""
    task, counts = "woz.en", {}
    for split, raw, lim in (("train", "train", limit_train), ("dev", "validate", limit_test), ("test", "test", limit_test)):
        dialogues = _read_json_file(os.path.join(src, "woz", f"woz_{raw}_en.json"), "WOZ file")
        ex, answers = woz_examples(dialogues, task)
        ex, answers = _limit(ex, lim), _limit(answers, lim)
        _check(task, split, len(ex), lim is not None, log, check_counts)
        write_squad_file(task_file(out, task, split), ex)
        if split == "test":
            write_json_atomic(os.path.join(out, "woz.en_answers.json"), answers)
        counts[split] = len(ex)
    return {task: counts}


def convert_all(src: str, out: str, limit_train: Optional[int] = None, limit_test: Optional[int] = None,
                log=_print, check_counts: bool = True) -> Dict[str, Dict[str, int]]:
    """All converters; returns ``{task: {split: count}}``."""
    counts = {}
    counts.update(convert_rnnlg(src, out, limit_train, limit_test, log=log, check_counts=check_counts))
    counts.update(convert_e2e(src, out, limit_train, limit_test, log=log, check_counts=check_counts))
    counts.update(convert_woz(src, out, limit_train, limit_test, log=log, check_counts=check_counts))
    return counts


def make_bundle(src: str, out: str, log=_print) -> Dict[str, Dict[str, int]]:
    """The package's bundled subset (``l2kd/resources/data``): the first 1500 train and
    120 test examples of each NLG task, the first 300 train / 100 dev / 100 test WOZ turns."""
    counts = {}
    counts.update(convert_rnnlg(src, out, 1500, 120, log=log))
    counts.update(convert_e2e(src, out, 1500, 120, log=log))
    counts.update(convert_woz(src, out, 300, 100, log=log))
    # sanity: everything written reads back
    for task, splits in counts.items():
        for split, n in splits.items():
            got = len(load_squad_file(task_file(out, task, split), task))
            if got != n:
                raise DataError(f"bundle {task} {split}: wrote {n} examples, read back {got}")
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m l2kd.data.convert",
        description="Build LAMOL-layout *_to_squad-*-v2.0.json files from raw RNNLG / E2E / WOZ data.",
    )
    p.add_argument("which", choices=["rnnlg", "e2e", "woz", "all", "bundle"],
                   help="which source to convert ('bundle': the package's small subset)")
    p.add_argument("--src", required=True, help="raw data folder holding rnnlg/, e2e/, woz/")
    p.add_argument("--out", required=True, help="output data folder (DATA_DIR)")
    p.add_argument("--limit-train", type=int, default=None, help="keep the first N train examples")
    p.add_argument("--limit-test", type=int, default=None, help="keep the first N test (and WOZ dev) examples")
    p.add_argument("--no-check-counts", action="store_true",
                   help="do not fail when a full conversion's sizes differ from the known release sizes")
    a = p.parse_args(argv)
    for name in ("limit_train", "limit_test"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        if a.which == "bundle":
            make_bundle(a.src, a.out)
        else:
            fn = {"rnnlg": convert_rnnlg, "e2e": convert_e2e, "woz": convert_woz, "all": convert_all}[a.which]
            fn(a.src, a.out, a.limit_train, a.limit_test, check_counts=not a.no_check_counts)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
