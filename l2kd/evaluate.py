"""Evaluation: decode answers for a task's test set and score them as the original.

``evaluate_task`` decodes with the batched KV-cached generator (``--top_k_qa`` sampling,
seeded; ``--top_k_qa 1`` is greedy) up to ``len(cq) + max answer length`` tokens (the
original's limit, :func:`answer_limits`), writes ``qa_<task>_<epoch>.csv`` (columns ``y``, ``pred``) and returns
the metrics. ``evaluate_run`` tests every finished task model of a run on every task,
writes each task folder's ``metrics.json`` (a list, one entry per tested epoch, of
``{task: {metric: value}}``) and the run's accuracy matrix ``R[i][j]``: row i the model after
stage i (a task, or under ``--unbound`` a chunk ``task_<i>``), column j the task ``--tasks[j]``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from l2kd.checkpoint import load_task_model
from l2kd.config import SamplingConfig, TrainConfig
from l2kd.data.loading import load_task_examples
from l2kd.data.qa_format import Encoded
from l2kd.data.squad import load_answers_file
from l2kd.data.multitask import DEBUG_PARAGRAPHS, embedding_rows
from l2kd.data.tasks import answers_path, get_task, task_file
from l2kd.generation import generate
from l2kd.io_utils import atomic_write_json, atomic_write_text
from l2kd.data.unbound import concatenated_training_data
from l2kd.layout import (ACCURACY_MATRIX, RUN_RECORD, TASK_RECORD, TEST_LOG, plan_stages, run_dir_of,
                         saved_epochs, task_dir)
from l2kd.metrics import (backward_transfer, compute_metrics, forgetting, forward_transfer,
                          task_score)
from l2kd.model import context_length, model_from_task_dir, resize_for_tokenizer
from l2kd.run_identity import differences, learning_config, test_settings
from l2kd.runtime import bar_options, is_secondary_rank, log_to, resolve_device
from l2kd.tokenizer import add_special_tokens, load_base_tokenizer

log = logging.getLogger("l2kd")


def test_batch_size(device: torch.device, requested: int) -> int:
    """``--test_batch_size`` 0 picks a size that fits: by the GPU's total memory (not its free
    memory, so the batches do not depend on other processes), 64 on CPU."""
    if requested > 0:
        return requested
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return int(max(8, min(256, total // (64 * 2**20))))
    return 64


@torch.no_grad()
def predict(model, tok, examples: Sequence[Encoded], eos_id: int, pad_id: int, sampling: SamplingConfig,
            generator: Optional[torch.Generator], max_len: int, batch_size: int, task: Optional[str] = None
            ) -> List[str]:
    """Decoded answers for ``examples`` (the test prompt ``c [sep] q __ans__``, no generation
    token, as the original), each at most :func:`answer_limits` tokens long; ``task`` names the
    work if decoding fails."""
    limits = answer_limits(examples, max_len)
    was_training = model.training
    model.eval()
    outs = generate(model, [ex.prompt for ex in examples], limits, eos_id, pad_id, sampling, generator, batch_size,
                    task=task)
    model.train(was_training)
    return [tok.decode(o).strip() for o in outs]


def answer_limits(examples: Sequence[Encoded], max_len: int) -> List[int]:
    """Most answer tokens (eos not counted) decoded per example, as the original's test.

    The original stops an answer at ``len(cq) + max_a_len`` tokens or at ``max_len``, where
    ``max_a_len`` is the longest *training-style* answer of the whole test set: all gold answers
    of an example encoded and joined by ``__pad__`` (so with two references about twice one
    reference). When every answer is empty (``max_a_len`` 0) the ``len(cq)`` stop is never hit
    and only ``max_len`` (or eos) ends the answer.
    """
    max_a = max((ex.answer_len for ex in examples), default=0)
    room = [max_len - len(ex.prompt) for ex in examples]
    return [max(1, min(max_a, r) if max_a > 0 else r) for r in room]


def write_qa_csv(path: str, golds: Sequence[Sequence[str]], preds: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["y", "pred"])
    for g, p in zip(golds, preds):
        w.writerow([json.dumps(list(g), ensure_ascii=False), p])
    atomic_write_text(path, buf.getvalue())


def evaluate_task(model, tok, ids, cfg: TrainConfig, task: str, examples: Sequence[Encoded],
                  generator: Optional[torch.Generator], csv_path: Optional[str] = None) -> Dict[str, float]:
    """Metrics of ``model`` on ``examples`` of ``task`` (and the qa csv when ``csv_path`` is given)."""
    device = next(model.parameters()).device
    preds = predict(model, tok, examples, ids.eos, ids.pad, cfg.qa_sampling, generator, context_length(model),
                    test_batch_size(device, cfg.test_batch_size), task=f"test {task}")
    golds = [ex.golds for ex in examples]
    extra = None
    spec = get_task(task)
    if spec.answers_file:
        extra = load_answers_file(answers_path(cfg.data_dir, task))
        extra = _align_answers(examples, extra)
    metrics = compute_metrics(task, preds, golds, extra)
    if csv_path:
        write_qa_csv(csv_path, golds, preds)
    return metrics


def _align_answers(examples: Sequence[Encoded], answers: list) -> list:
    """The answers file is indexed by qa id (wikisql, woz.en); keep the evaluated examples' entries."""
    out = []
    for i, ex in enumerate(examples):
        try:
            out.append(answers[int(ex.qa_id)])
        except (ValueError, IndexError):
            out.append(answers[i] if i < len(answers) else None)
    return out


def eval_file(cfg: TrainConfig, task: str) -> Optional[str]:
    """``--extra_e2e``: e2enlg is tested on its ``extra`` file (the test file's name with ``test``
    replaced by ``extra``); None (the task's test split) otherwise."""
    if not (cfg.extra_e2e and task == "e2enlg"):
        return None
    test = task_file(cfg.data_dir, task, "test")
    path = os.path.join(os.path.dirname(test), os.path.basename(test).replace("test", "extra"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--extra_e2e: {path} not found (e2enlg's extra test set, read instead of "
                                f"{os.path.basename(test)}); add it to --data_dir or drop --extra_e2e")
    return path


def _epochs_of(tdir: str) -> List[int]:
    try:
        with open(os.path.join(tdir, TASK_RECORD)) as f:
            n = int(json.load(f)["epochs"])
        return list(range(1, n + 1))
    except (OSError, KeyError, ValueError):
        return saved_epochs(tdir)


def _warn_other_config(rdir: str, cfg: TrainConfig) -> None:
    """Say so when the run's models were learnt under other flags than the test command's."""
    try:
        with open(os.path.join(rdir, RUN_RECORD)) as f:
            recorded = json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):
        return
    diffs = differences(recorded, learning_config(cfg)) if recorded else []
    if diffs:
        log.warning("the models in %s were trained with other flags than this test command's (%s); the scores "
                    "describe the trained models", rdir, "; ".join(diffs))


def evaluate_run(cfg: TrainConfig, device: Optional[torch.device] = None, quiet: bool = False
                 ) -> Dict[str, object]:
    """Test every trained task model of the run on every task; write metrics and the matrix.

    Returns ``{"tasks", "matrix" (R[i][j], 0-100), "average", "backward_transfer",
    "forgetting", "forward_transfer", "metrics", "test_settings"}`` and writes it to
    ``<run>/accuracy_matrix.json``.
    """
    device = device or resolve_device(cfg.device)
    rdir = run_dir_of(cfg)
    if not os.path.isdir(rdir):
        raise FileNotFoundError(f"run folder {rdir} does not exist: train first (same flags)")
    with log_to(os.path.join(rdir, TEST_LOG), is_secondary_rank()):  # --quiet: no bars, log lines stay
        _warn_other_config(rdir, cfg)
        return _evaluate_stages(cfg, rdir, device, quiet)


def _evaluate_stages(cfg: TrainConfig, rdir: str, device: torch.device, quiet: bool) -> Dict[str, object]:
    # --unbound: the chunks the training run made of the same data (as many as it trained)
    n_train = len(concatenated_training_data(cfg.data_dir, cfg.tasks, cfg.max_train_examples)) if cfg.unbound else 0
    stages = plan_stages(cfg, n_train)
    R: List[List[float]] = []
    all_metrics: Dict[str, Dict[str, Dict[str, float]]] = {}
    test_cache: Dict[str, List[Encoded]] = {}
    by_epoch: Dict[str, Dict[str, List[float]]] = {}  # stage -> tested epoch -> scores
    for index, stage in enumerate(stages):
        tdir = task_dir(rdir, cfg.seq_train_type, stage[0])
        if not os.path.isfile(os.path.join(tdir, "config.json")):
            log.info("skip %s: not trained", tdir)
            break
        tok = load_base_tokenizer(cfg.model_name)
        ids = add_special_tokens(tok, [t for s in stages[: index + 1] for t in s], cfg.add_task_tokens, cfg.use_sep)
        model = model_from_task_dir(tdir)
        # the original's --multitask_specific rows are not in its config.json's vocab_size
        resize_for_tokenizer(model, embedding_rows(len(tok), cfg.multitask_specific))
        model = model.to(device)
        max_len = context_length(model)
        epochs = _epochs_of(tdir)
        tested = epochs if cfg.test_all else epochs[-1:]
        entries = []
        for ep in tested:
            load_task_model(model, tdir, f"model-{ep}")
            gen = torch.Generator(device=device).manual_seed(cfg.seed)
            entry = {}
            for task in tqdm(cfg.tasks, desc=f"test {'+'.join(stage)} model-{ep}", **bar_options(quiet)):
                if task not in test_cache:
                    test_cache[task] = load_task_examples(cfg.data_dir, task, "test", tok, ids, max_len,
                                                          cfg.max_test_examples, eval_file(cfg, task),
                                                          DEBUG_PARAGRAPHS if cfg.debug else 0)
                csv_path = os.path.join(tdir, f"qa_{task}_{ep}.csv")
                entry[task] = evaluate_task(model, tok, ids, cfg, task, test_cache[task], gen, csv_path)
            entries.append(entry)
        atomic_write_json(os.path.join(tdir, "metrics.json"), entries)
        by_epoch["+".join(stage)] = {str(ep): [task_score(t, e[t]) for t in cfg.tasks]
                                     for ep, e in zip(tested, entries)}
        final = entries[-1]
        R.append([task_score(t, final[t]) for t in cfg.tasks])
        all_metrics["+".join(stage)] = final
        log.info("after %s: %s", "+".join(stage), " ".join(f"{t}={s:.1f}" for t, s in zip(cfg.tasks, R[-1])))
    result = matrix_report(list(cfg.tasks), R, cfg.traits.joint, ["+".join(s) for s in stages])
    result["metrics"] = all_metrics
    result["by_epoch"] = by_epoch
    result["test_settings"] = test_settings(cfg)
    atomic_write_json(os.path.join(rdir, ACCURACY_MATRIX), result)
    return result


def matrix_report(tasks: List[str], R: List[List[float]], multitask: bool = False,
                  stages: Optional[List[str]] = None) -> Dict[str, object]:
    """Summary numbers of an accuracy matrix (one row per trained stage; ``stages`` names the
    rows, the tasks themselves when None). Backward transfer, forgetting and forward transfer
    need row i to be the model after task i, so they are left out when the stages are not the
    tasks (multitask, ``--unbound`` chunks)."""
    out: Dict[str, object] = {"tasks": tasks, "matrix": R}
    if stages is not None:
        out["stages"] = list(stages[: len(R)])
    if not R:
        return out
    out["average"] = float(sum(R[-1]) / len(R[-1]))
    rows_are_tasks = stages is None or list(stages) == list(tasks)
    if not multitask and rows_are_tasks and len(R) == len(tasks) and len(tasks) > 1:
        out["backward_transfer"] = backward_transfer(R)
        out["forgetting"] = forgetting(R)
        out["forward_transfer"] = forward_transfer(R)
    return out


def format_matrix(result: Dict[str, object], title: str = "") -> str:
    """Fixed-width table: one row per stage, one column per task, plus the row average."""
    tasks, R = result["tasks"], result["matrix"]
    w = max(10, *(len(t) for t in tasks))
    lines = [title] if title else []
    lines.append("after".ljust(14) + "".join(t.rjust(w + 1) for t in tasks) + "avg".rjust(8))
    names = result.get("stages")
    for i, row in enumerate(R):
        if names and i < len(names):  # the stage trained last before this row's test
            label = "all" if "+" in names[i] else names[i]  # a multitask stage holds every task
        else:
            label = tasks[i] if i < len(tasks) and len(R) == len(tasks) else "all"
        lines.append(label.ljust(14) + "".join(f"{v:{w + 1}.1f}" for v in row) + f"{sum(row) / len(row):8.1f}")
    extra = [f"{k}={result[k]:.1f}" for k in ("average", "backward_transfer", "forgetting") if k in result]
    if extra:
        lines.append("  ".join(extra))
    return "\n".join(lines)


def format_epoch_matrices(result: Dict[str, object]) -> str:
    """``--test_all``: one table per tested epoch (a row per stage that has that epoch's model)."""
    by_epoch = result.get("by_epoch") or {}
    epochs = sorted({int(e) for rows in by_epoch.values() for e in rows})
    out = []
    for ep in epochs:
        rows = [(stage, rows[str(ep)]) for stage, rows in by_epoch.items() if str(ep) in rows]
        w = max(10, *(len(t) for t in result["tasks"]))
        lines = [f"score of model-{ep} after each task (0-100)",
                 "after".ljust(14) + "".join(t.rjust(w + 1) for t in result["tasks"]) + "avg".rjust(8)]
        lines += [stage[:14].ljust(14) + "".join(f"{v:{w + 1}.1f}" for v in r) + f"{sum(r) / len(r):8.1f}"
                  for stage, r in rows]
        out.append("\n".join(lines))
    return "\n\n".join(out)
