"""Reading, comparing and plotting finished runs (``python -m l2kd.report``, :mod:`l2kd.cli.report`).

Reads what ``python -m l2kd.test`` wrote (``<run>/accuracy_matrix.json``) and, when present,
the training summary ``<run>/l2kd_run.json``, then

* prints each run's accuracy matrix (:func:`l2kd.evaluate.format_matrix`);
* prints one comparison row per method: runs with the same strategy, task sequence and
  config (all but the seed and runtime-only fields) are one method, and each cell is the
  mean ± std over their seeds of the final per-task scores, the average, backward
  transfer, forgetting and forward transfer. The std is the *sample* standard deviation
  (``ddof=1``, the usual "± over seeds" of papers); with a single seed only the mean is
  shown (std ``null`` in JSON). ``n`` is the number of seeds;
* writes ``report.json`` and ``report.md`` (the table) into ``--out``, or into the run folder
  for one run, or the current folder for several runs;
* unless ``--no-plots``, writes per run a heat map of the matrix (``accuracy_matrix.png``) and
  each task's score after every stage (``task_scores.png``) into the run folder, or into
  ``--out`` (one sub-folder per run when several runs are given).

Strategy names: ``config.seq_train_type``, plus ``+word_kd`` for ``--distil`` and ``+seq_kd``
for ``--seq_distil``. Without ``l2kd_run.json`` the type and seed are read from the run
folder's name (the original's layout, :func:`l2kd.settings.run_dir`), distillation unknown.
Runs of a joint strategy (multitask, multilm: the traits l2kd_run.json records, else the
registry's) have one matrix row: no backward transfer, forgetting or forward
transfer (shown as ``-``); nor have ``--unbound`` runs, whose rows are the chunks ``task_0, ...``
(named by the matrix file's ``stages``), not the tasks.

Plots use matplotlib's Agg canvas directly (no pyplot, the global backend is left alone), so
they work headless. Each figure has a fixed size in pixels (:func:`matrix_figsize`,
:func:`curves_figsize` at :data:`DPI`).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

DPI = 100
STD_DDOF = 1
SUMMARY_KEYS = ("average", "backward_transfer", "forgetting", "forward_transfer")
SHORT = {"average": "avg", "backward_transfer": "BWT", "forgetting": "forget", "forward_transfer": "FWT"}


@lru_cache(maxsize=1)
def runtime_keys() -> frozenset:
    """Config fields that change neither what is learnt nor how it is scored (kind runtime in
    the config's metadata): runs differing only in these and the seed are seeds of one method.
    Read on first use: the config module imports torch, which a report of good inputs defers."""
    from l2kd.config import RUNTIME, TrainConfig, keys_of

    return frozenset({"seed"}) | keys_of(TrainConfig, (RUNTIME,))


def _traits(kind: str, recorded: Optional[dict] = None) -> Dict[str, bool]:
    """``joint`` and ``pct_in_folder`` of strategy ``kind``: as the run recorded them
    (``l2kd_run.json``), else from the registry (None for a name nobody registered)."""
    if isinstance(recorded, dict):
        return {k: bool(recorded.get(k)) for k in ("joint", "pct_in_folder")}
    from l2kd.config import strategy_class

    cls = strategy_class(kind) if kind else None
    return {"joint": cls.traits.joint, "pct_in_folder": cls.traits.pct_in_folder} if cls else {}


class ReportError(ValueError):
    """A run folder or one of its files cannot be read; the message names the path."""


@dataclass
class RunRecord:
    """One tested run: its matrix ``R[i][j]`` (0-100) and summary numbers (None = not defined)."""

    run_dir: str
    tasks: List[str]
    matrix: List[List[float]]
    strategy: str
    seed: Optional[int]
    multitask: bool
    average: Optional[float] = None
    backward_transfer: Optional[float] = None
    forgetting: Optional[float] = None
    forward_transfer: Optional[float] = None
    config: Optional[dict] = None  # l2kd_run.json "config", when present
    metrics: dict = field(default_factory=dict)  # accuracy_matrix.json "metrics"
    stages: Optional[List[str]] = None  # the rows' stage names (accuracy_matrix.json "stages"), when recorded

    def summary(self) -> Dict[str, Optional[float]]:
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    def final_scores(self) -> Dict[str, float]:
        """Each task's score after the last trained stage."""
        return dict(zip(self.tasks, self.matrix[-1])) if self.matrix else {}

    def result_dict(self) -> Dict[str, object]:
        """The shape :func:`l2kd.evaluate.format_matrix` reads."""
        out: Dict[str, object] = {"tasks": self.tasks, "matrix": self.matrix}
        if self.stages:
            out["stages"] = self.stages
        out.update({k: v for k, v in self.summary().items() if v is not None})
        return out


# ----------------------------------------------------------------------------- loading

def _number(x) -> Optional[float]:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: str, hint: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ReportError(f"{path} not found: {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not readable JSON ({exc}): {hint}") from None


def strategy_name(config: dict) -> str:
    """``seq_train_type`` plus ``+word_kd`` (--distil) and ``+seq_kd`` (--seq_distil)."""
    name = str(config.get("seq_train_type", "?"))
    if config.get("distil"):
        name += "+word_kd"
    if config.get("seq_distil"):
        name += "+seq_kd"
    return name


def _from_layout(run_dir: str) -> Tuple[Optional[str], Optional[int]]:
    """(seq_train_type, seed) from ``root/model/<type>/<T1_T2..>_<pct>_<seed>`` or ``.._seed_<seed>``."""
    path = os.path.normpath(os.path.abspath(run_dir))
    base, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    traits = _traits(parent)
    kind = parent if traits else None
    m = re.search(r"_seed_(-?\d+)$", base) or (re.search(r"_\d+(?:\.\d+)?_(-?\d+)$", base)
                                                if traits.get("pct_in_folder") else None)
    return kind, (int(m.group(1)) if m else None)


def load_run(run_dir: str) -> RunRecord:
    """Read ``<run_dir>/accuracy_matrix.json`` (required) and ``l2kd_run.json`` (optional).

    Raises :class:`ReportError` (a ``ValueError``) naming the folder or file when the run
    folder is missing or the matrix file is missing or malformed.
    """
    hint = "run `python -m l2kd.test` with the same flags as training first"
    if not os.path.isdir(run_dir):
        raise ReportError(f"run folder {run_dir} does not exist: give the folder that holds accuracy_matrix.json "
                          "(train with `python -m l2kd.train`, then test with `python -m l2kd.test`, same flags)")
    mpath = os.path.join(run_dir, "accuracy_matrix.json")
    data = _read_json(mpath, hint)
    if not isinstance(data, dict):
        raise ReportError(f"{mpath} is malformed (expected a JSON object): {hint}")
    tasks, R = data.get("tasks"), data.get("matrix")
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
        raise ReportError(f"{mpath} is malformed: 'tasks' must be a non-empty list of task names; {hint}")
    if not isinstance(R, list) or not R:
        raise ReportError(f"{mpath} has no matrix rows (no task model was tested): {hint}")
    matrix: List[List[float]] = []
    for i, row in enumerate(R):
        vals = [_number(v) for v in row] if isinstance(row, list) else None
        if vals is None or len(vals) != len(tasks) or any(v is None for v in vals):
            raise ReportError(f"{mpath} is malformed: matrix row {i} must hold {len(tasks)} finite numbers "
                              f"(one per task), got {row!r}; {hint}")
        matrix.append(vals)
    stages = data.get("stages")
    if stages is not None and not (isinstance(stages, list) and all(isinstance(n, str) for n in stages)
                                   and len(stages) == len(matrix)):
        raise ReportError(f"{mpath} is malformed: 'stages' must name each of the {len(matrix)} matrix rows; {hint}")
    if len(matrix) > len(tasks) and stages is None:  # more rows than tasks only as --unbound chunks
        raise ReportError(f"{mpath} is malformed: {len(matrix)} matrix rows for {len(tasks)} tasks; {hint}")
    rows_are_tasks = stages is None or stages == list(tasks[: len(stages)])

    config, recorded = None, None
    rpath = os.path.join(run_dir, "l2kd_run.json")
    if os.path.isfile(rpath):
        summary = _read_json(rpath, "it is the training summary written by `python -m l2kd.train`")
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
            config = summary["config"]
            recorded = (summary.get("strategy") or {}).get("traits") if isinstance(summary.get("strategy"),
                                                                                  dict) else None
    if config is not None:
        strategy = strategy_name(config)
        seed = config.get("seed")
        seed = int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None
        kind = str(config.get("seq_train_type", ""))
    else:
        kind, seed = _from_layout(run_dir)
        strategy = kind or "?"
        kind = kind or ""
    one_stage_of_all = stages is None or "+" in stages[0]  # not a single --unbound chunk
    multitask = bool(_traits(kind, recorded).get("joint")) or (len(matrix) == 1 and len(tasks) > 1 and one_stage_of_all)
    rec = RunRecord(run_dir=run_dir, tasks=list(tasks), matrix=matrix, strategy=strategy, seed=seed,
                    multitask=multitask, config=config,
                    metrics=data.get("metrics") if isinstance(data.get("metrics"), dict) else {},
                    stages=list(stages) if stages is not None else None)
    rec.average = _number(data.get("average"))
    if rec.average is None:
        rec.average = sum(matrix[-1]) / len(matrix[-1])
    complete = not multitask and rows_are_tasks and len(matrix) == len(tasks) and len(tasks) > 1
    for k in ("backward_transfer", "forgetting", "forward_transfer"):
        setattr(rec, k, _number(data.get(k)) if complete else None)
    if complete and any(getattr(rec, k) is None for k in ("backward_transfer", "forgetting", "forward_transfer")):
        from l2kd.metrics import summarize_matrix  # an older file without them: same definitions

        s = summarize_matrix(matrix)
        for k in ("backward_transfer", "forgetting", "forward_transfer"):
            if getattr(rec, k) is None:
                setattr(rec, k, _number(s[k]))
    return rec


# ----------------------------------------------------------------------------- comparison

def _mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = None
    if len(vals) > STD_DDOF:
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - STD_DDOF))
    return {"mean": mean, "std": std, "n": len(vals)}


def _config_key(config: Optional[dict]) -> Dict[str, str]:
    if not config:
        return {}
    # --unbound off is what a run recorded before the flag existed meant: the same method
    return {k: json.dumps(v, sort_keys=True) for k, v in config.items()
            if k not in runtime_keys() and k != "tasks" and not (k == "unbound" and not v)}


def _plain(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def compare(runs: Sequence[RunRecord]) -> List[Dict[str, object]]:
    """One row per method: runs with the same strategy, task sequence and config (but the
    seed and runtime fields) are grouped; each number is ``{"mean", "std", "n"}`` over them
    (std with ddof=1, None for one seed). Rows keep the order of first appearance.

    Row: ``{"method", "strategy", "tasks", "n", "seeds", "run_dirs", "final": {task: stats},
    "average", "backward_transfer", "forgetting", "forward_transfer"}``. When runs of one
    strategy and sequence differ in a config field, each variant is its own row and
    ``method`` names the differing fields (``lll (gen_lm_sample_percentage=0.2)``).
    """
    buckets: Dict[Tuple[str, Tuple[str, ...]], List[RunRecord]] = {}
    for r in runs:
        buckets.setdefault((r.strategy, tuple(r.tasks)), []).append(r)
    sequences = {tuple(r.tasks) for r in runs}
    rows: List[Dict[str, object]] = []
    for (strategy, tasks), members in buckets.items():
        keys = [_config_key(r.config) for r in members]
        known = [d for d in keys if d]  # runs without l2kd_run.json join whichever variant matches
        differing = sorted(k for k in {k for d in known for k in d} if len({d.get(k) for d in known}) > 1)
        groups: Dict[Tuple[str, ...], List[RunRecord]] = {}
        for r, d in zip(members, keys):
            groups.setdefault(tuple(d.get(k, "?") for k in differing), []).append(r)
        for variant, group in groups.items():
            method = strategy
            if differing:
                method += " (" + ", ".join(f"{k}={_plain(v)}" for k, v in zip(differing, variant)) + ")"
            if len(sequences) > 1:
                method += " [" + ">".join(tasks) + "]"
            row: Dict[str, object] = {
                "method": method, "strategy": strategy, "tasks": list(tasks), "n": len(group),
                "seeds": [r.seed for r in group], "run_dirs": [r.run_dir for r in group],
                "final": {t: _mean_std([r.final_scores()[t] for r in group]) for t in tasks},
            }
            for k in SUMMARY_KEYS:
                row[k] = _mean_std([getattr(r, k) for r in group])
            rows.append(row)
    return rows


def _cell(stats: Optional[Dict[str, Optional[float]]]) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    if stats.get("std") is None:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def _table(rows: Sequence[Dict[str, object]]) -> Tuple[List[str], List[List[str]]]:
    tasks: List[str] = []
    for row in rows:
        tasks += [t for t in row["tasks"] if t not in tasks]
    header = ["method", "n"] + tasks + [SHORT[k] for k in SUMMARY_KEYS]
    body = []
    for row in rows:
        cells = [str(row["method"]), str(row["n"])]
        cells += [_cell(row["final"].get(t)) for t in tasks]
        cells += [_cell(row[k]) for k in SUMMARY_KEYS]
        body.append(cells)
    return header, body


def format_comparison(rows: Sequence[Dict[str, object]]) -> str:
    """Fixed-width table: one line per method, final score per task, avg, BWT, forgetting, FWT
    as ``mean ± std`` over seeds (sample std, ddof=1; only the mean for one seed)."""
    header, body = _table(rows)
    widths = [max(len(r[c]) for r in [header] + body) for c in range(len(header))]
    lines = ["  ".join(h.ljust(widths[0]) if c == 0 else h.rjust(widths[c]) for c, h in enumerate(r))
             for r in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"final score per task after the last task, 0-100; mean ± std over n seeds (std ddof={STD_DDOF}); "
                 "BWT = backward transfer, forget = forgetting, FWT = forward transfer; - = not defined")
    return "\n".join(lines)


def format_markdown(rows: Sequence[Dict[str, object]]) -> str:
    """The comparison table as GitHub markdown."""
    header, body = _table(rows)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots

def _row_labels(record: RunRecord) -> List[str]:
    if record.stages and not record.multitask:  # e.g. the --unbound chunks task_0, task_1, ...
        return [f"after {s}" for s in record.stages]
    if record.multitask or len(record.matrix) == 1 and len(record.tasks) > 1:
        return ["all tasks"]
    return [f"after {t}" for t in record.tasks[: len(record.matrix)]]


def matrix_figsize(n_rows: int, n_cols: int) -> Tuple[float, float]:
    """Heat map size in inches (times :data:`DPI` = pixels)."""
    return (3.0 + 1.0 * n_cols, 2.0 + 0.6 * n_rows)


def curves_figsize(n_tasks: int) -> Tuple[float, float]:
    """Task-curve plot size in inches (times :data:`DPI` = pixels)."""
    return (6.4, 4.0)


def _figure(size):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # a declared dependency, but say what to do
        raise ReportError(f"plots need matplotlib ({exc}): `pip install matplotlib`, or pass --no-plots") from None
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=DPI, format="png")
    os.replace(tmp, path)


def plot_matrix(record: RunRecord, path: str) -> None:
    """PNG heat map of R: rows = after task i, columns = task j, each cell annotated (0-100)."""
    import numpy as np

    R = np.array(record.matrix, dtype=float)
    fig = _figure(matrix_figsize(*R.shape))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(R, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            ax.text(j, i, f"{R[i, j]:.1f}", ha="center", va="center", fontsize=9,
                    color="black" if R[i, j] > 60 else "white")
    ax.set_xticks(range(R.shape[1]), labels=record.tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(R.shape[0]), labels=_row_labels(record), fontsize=8)
    ax.set_xlabel("score on task")
    ax.set_title(f"{record.strategy}" + (f", seed {record.seed}" if record.seed is not None else ""), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    fig.tight_layout()
    _save(fig, path)


def plot_task_curves(record: RunRecord, path: str) -> None:
    """PNG line plot: each task's score (0-100) after every training stage."""
    fig = _figure(curves_figsize(len(record.tasks)))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(record.matrix)))
    for j, task in enumerate(record.tasks):
        ax.plot(x, [row[j] for row in record.matrix], marker="o", label=task)
    ax.set_xticks(x, labels=_row_labels(record), rotation=20, ha="right", fontsize=8)
    if len(x) == 1:
        ax.set_xlim(-0.5, 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0-100)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{record.strategy}" + (f", seed {record.seed}" if record.seed is not None else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- CLI

def _run_label(run_dir: str) -> str:
    path = os.path.normpath(os.path.abspath(run_dir))
    label = f"{os.path.basename(os.path.dirname(path))}-{os.path.basename(path)}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", label)


def plot_dirs(run_dirs: Sequence[str], out: Optional[str]) -> List[str]:
    """Where each run's PNGs go: the run folder; ``out``; or ``out/<type>-<run name>`` for several runs."""
    if out is None:
        return list(run_dirs)
    if len(run_dirs) == 1:
        return [out]
    dirs, seen = [], set()
    for d in run_dirs:
        label, k = _run_label(d), 2
        while label in seen:
            label, k = f"{_run_label(d)}-{k}", k + 1
        seen.add(label)
        dirs.append(os.path.join(out, label))
    return dirs
