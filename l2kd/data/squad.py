"""Reading and writing LAMOL's SQuAD-layout task files, with clear errors.

Layout: ``{"data": [{"paragraphs": [{"context": str, "qas": [{"question": str,
"answers": [{"text": str}, ...], "id": ..., "is_impossible": bool?}]}]}]}``.
Every qa becomes one :class:`QAExample`, in file order (the original pairs the
wikisql / woz.en answers files with examples by ascending qa id, see
:func:`order_by_qa_id`). An unanswerable qa (no answers, or ``is_impossible``)
gets ``answers == []``; the original trains it on the empty answer.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Sequence

__all__ = [
    "QAExample",
    "DataError",
    "DataFileNotFoundError",
    "load_squad_file",
    "load_answers_file",
    "write_squad_file",
    "write_json_atomic",
    "order_by_qa_id",
]


@dataclass
class QAExample:
    """One question-answer example.

    answers: all gold answers (the original joins them with ``__pad__`` as the
    training target); ``[]`` for an unanswerable question.
    qa_id: the file's qa ``id`` as a string (a running index if the file has none).
    """

    context: str
    question: str
    answers: List[str] = field(default_factory=list)
    qa_id: str = ""
    task: str = ""
    paragraph: int = field(default=0, compare=False)  # index of its paragraph in the file (the original's data unit)


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the place."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file does not exist (catchable as FileNotFoundError too)."""


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataFileNotFoundError(
            f"{what} not found: {path} (no such file; check --data_dir, or build the file "
            f"with `python -m l2kd.data.convert`)"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text: {e}") from None
    if not text.strip():
        raise DataError(f"{what} {path} is empty (0 bytes of JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{what} {path} is not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} "
            f"column {e.colno}"
        ) from None


def _need(cond: bool, path: str, where: str, msg: str) -> None:
    if not cond:
        raise DataError(f"{path}: {where}: {msg}")


def _type_name(x: Any) -> str:
    return type(x).__name__


def load_squad_file(path: str, task: str) -> List[QAExample]:
    """Load a LAMOL SQuAD-layout file into a list of :class:`QAExample` (file order).

    Raises :class:`DataError` naming the file and the entry at fault for a missing
    file (:class:`DataFileNotFoundError`), bad or truncated JSON (with line and
    column), a missing key or wrong type (with ``data[i].paragraphs[j].qas[k]`` and
    the qa id), or a file without any example.
    """
    doc = _read_json(path, f"data file for task {task!r}")
    _need(isinstance(doc, dict), path, "top level", f"expected a JSON object with key 'data', got {_type_name(doc)}")
    _need("data" in doc, path, "top level", "missing key 'data'")
    data = doc["data"]
    _need(isinstance(data, list), path, "'data'", f"expected a list, got {_type_name(data)}")
    _need(len(data) > 0, path, "'data'", "is empty: the file holds no examples")

    examples: List[QAExample] = []
    running = 0
    n_para = 0
    for i, entry in enumerate(data):
        where = f"data[{i}]"
        _need(isinstance(entry, dict), path, where, f"expected an object, got {_type_name(entry)}")
        _need("paragraphs" in entry, path, where, "missing key 'paragraphs'")
        paragraphs = entry["paragraphs"]
        _need(isinstance(paragraphs, list), path, f"{where}.paragraphs", f"expected a list, got {_type_name(paragraphs)}")
        for j, para in enumerate(paragraphs):
            pw = f"{where}.paragraphs[{j}]"
            _need(isinstance(para, dict), path, pw, f"expected an object, got {_type_name(para)}")
            for key in ("context", "qas"):
                _need(key in para, path, pw, f"missing key {key!r}")
            context = para["context"]
            _need(isinstance(context, str), path, f"{pw}.context", f"expected a string, got {_type_name(context)}")
            qas = para["qas"]
            _need(isinstance(qas, list), path, f"{pw}.qas", f"expected a list, got {_type_name(qas)}")
            for k, qa in enumerate(qas):
                qw = f"{pw}.qas[{k}]"
                _need(isinstance(qa, dict), path, qw, f"expected an object, got {_type_name(qa)}")
                qa_id = str(qa["id"]) if "id" in qa else str(running)
                qw = f"{qw} (id {qa_id})"
                _need("question" in qa, path, qw, "missing key 'question'")
                question = qa["question"]
                _need(isinstance(question, str), path, f"{qw}.question", f"expected a string, got {_type_name(question)}")
                raw = qa.get("answers", [])
                _need(isinstance(raw, list), path, f"{qw}.answers", f"expected a list, got {_type_name(raw)}")
                answers: List[str] = []
                for a, ans in enumerate(raw):
                    aw = f"{qw}.answers[{a}]"
                    _need(isinstance(ans, dict) and "text" in ans, path, aw, "expected an object with key 'text'")
                    _need(isinstance(ans["text"], str), path, f"{aw}.text", f"expected a string, got {_type_name(ans['text'])}")
                    answers.append(ans["text"])
                if not answers:
                    _need("answers" in qa or qa.get("is_impossible", False), path, qw,
                          "missing key 'answers' (an unanswerable question needs 'answers': [] or 'is_impossible': true)")
                if qa.get("is_impossible", False):
                    answers = []
                examples.append(QAExample(context, question, answers, qa_id, task, n_para))
                running += 1
            n_para += 1
    _need(len(examples) > 0, path, "'data'", "holds no question (every paragraph has an empty 'qas')")
    return examples


def load_answers_file(path: str) -> list:
    """Load and validate ``wikisql_answers.json`` or ``woz.en_answers.json``.

    woz.en: a list of ``[turn_id, belief]`` string pairs, turn_id ``"en_<dialogue>_<turn>"``
    and belief the gold change of state (``"food: thai; phone"``, ``"None"``).
    wikisql: a list of objects with ``sql`` (``{"sel": int, "agg": int, "conds":
    [[col, op, value], ...]}``), ``table`` (with a ``header`` list of column names) and
    ``answer`` (the gold query text); ``header`` too where present (decaNLP's layout).
    """
    doc = _read_json(path, "answers file")
    _need(isinstance(doc, list), path, "top level", f"expected a list, got {_type_name(doc)}")
    _need(len(doc) > 0, path, "top level", "is empty: no answers")
    kind = "woz" if isinstance(doc[0], list) else "wikisql"
    for i, e in enumerate(doc):
        w = f"entry {i}"
        if kind == "woz":
            _need(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e), path, w,
                  "expected a [turn_id, belief] pair of strings (woz.en answers file)")
        else:
            _need(isinstance(e, dict), path, w, f"expected an object (wikisql answers file), got {_type_name(e)}")
            for key in ("sql", "table", "answer"):
                _need(key in e, path, w, f"missing key {key!r}")
            sql, table = e["sql"], e["table"]
            _need(isinstance(sql, dict) and all(k in sql for k in ("sel", "agg", "conds")), path, f"{w}.sql",
                  "expected an object with keys 'sel', 'agg', 'conds'")
            _need(isinstance(sql["conds"], list) and all(isinstance(c, list) and len(c) == 3 for c in sql["conds"]),
                  path, f"{w}.sql.conds", "expected a list of [column, operator, value] triples")
            _need(isinstance(table, dict) and isinstance(table.get("header"), list), path, f"{w}.table",
                  "expected an object with a 'header' list")
            _need(isinstance(e["answer"], str), path, f"{w}.answer", "expected a string")
    return doc


def write_json_atomic(path: str, obj: Any, indent=None) -> None:
    """Write ``obj`` as UTF-8 JSON to ``path`` atomically (temp file + os.replace)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:  # plain open: honours the umask
            json.dump(obj, f, ensure_ascii=False, indent=indent)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _qa_id_value(qa_id: str):
    return int(qa_id) if qa_id.lstrip("-").isdigit() else qa_id


def squad_document(examples: Iterable[QAExample]) -> dict:
    """The SQuAD-layout document for ``examples``: one entry and paragraph per example.

    Ids that are integers in string form are written as JSON integers (as decaNLP's
    woz/wikisql ids), so the original's sort by id keeps file order.
    """
    data = []
    for ex in examples:
        qa = {
            "question": ex.question,
            "answers": [{"text": a} for a in ex.answers],
            "id": _qa_id_value(ex.qa_id),
            "is_impossible": len(ex.answers) == 0,
        }
        data.append({"paragraphs": [{"context": ex.context, "qas": [qa]}]})
    return {"version": "v2.0", "data": data}


def write_squad_file(path: str, examples: Iterable[QAExample]) -> None:
    """Write ``examples`` as a LAMOL SQuAD-layout file, atomically."""
    write_json_atomic(path, squad_document(examples))


def order_by_qa_id(examples: Sequence[QAExample]) -> List[int]:
    """Indices of ``examples`` sorted by qa id, as the original orders wikisql/woz.en.

    The original sorts the examples by their JSON ``id`` and pairs the i-th with
    ``answers[i]``; integer ids sort numerically (strings of digits are compared as
    numbers here), other ids as strings.
    """
    vals = [_qa_id_value(e.qa_id) for e in examples]
    if all(isinstance(v, int) for v in vals):
        return sorted(range(len(vals)), key=lambda i: vals[i])
    return sorted(range(len(vals)), key=lambda i: str(vals[i]))
