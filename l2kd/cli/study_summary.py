"""The study's summary tables: per method and order, mean ± std over seeds of the average final
score, BWT, forgetting, the score on the task just learnt, LAMOL's pseudo-sample parse rate,
the teachers' scores and the wall time, and whether the paper's order holds; then every task's
score after each stage and the pseudo-samples parsed before it (means over seeds), and per seed
the test answers given in a form the task's references do not take."""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

from l2kd.cli.study_answers import MIN_SHARE

# the distilled methods that stand for L2KD in the verdict, and its two baselines
L2KD_METHODS = ("lll+word_kd", "lll+word_kd@T1", "lll+word_kd@T4", "lll+word_kd@weighted", "lll+word_kd@qa_only",
                "lll+word_kd@qa_only_weighted", "lll+word_kd@long_teacher", "lll+seq_kd", "lll+seq_kd_soft",
                "lll+word_kd+seq_kd")


def _stat(values: Sequence[Optional[float]]) -> Optional[Dict[str, float]]:
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def just_learnt(matrix: Sequence[Sequence[float]]) -> Optional[float]:
    """Mean of the diagonal: each task's score right after it was learnt (None for multitask)."""
    if len(matrix) < 2 or len(matrix) != len(matrix[0]):
        return None
    return statistics.fmean(matrix[i][i] for i in range(len(matrix)))


def teacher_scores(cells: Sequence[dict]) -> Dict[str, float]:
    """task -> mean teacher score over the cells' recorded diagnostics."""
    acc: Dict[str, List[float]] = {}
    for c in cells:
        for task, d in (c.get("teacher") or {}).items():
            if isinstance(d, dict) and d.get("teacher_score") is not None:
                acc.setdefault(task, []).append(float(d["teacher_score"]))
    return {t: statistics.fmean(v) for t, v in acc.items()}


def teacher_entropy(cells: Sequence[dict]) -> Optional[float]:
    """Mean entropy / log V of the teachers' soft targets over the cells' diagnostics."""
    v = [float(d["soft_targets"]["entropy_fraction"]) for c in cells for d in (c.get("teacher") or {}).values()
         if isinstance(d, dict) and isinstance(d.get("soft_targets"), dict)
         and d["soft_targets"].get("entropy_fraction") is not None]
    return statistics.fmean(v) if v else None


def teacher_samples(cells: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """task -> mean counts (generated, parsed, own_task) of the teachers' own pseudo-samples over
    the cells whose diagnostics recorded them."""
    return per_task_means([{"own": {t: d["teacher_pseudo"] for t, d in (c.get("teacher") or {}).items()
                                    if isinstance(d, dict) and isinstance(d.get("teacher_pseudo"), dict)}}
                           for c in cells], "own")


def stage_matrix(cells: Sequence[dict]) -> Optional[List[List[float]]]:
    """Entry-wise mean over seeds of the square score matrices (row i: every task's score after
    learning task i); None for multitask, or when the seeds' matrices differ in shape."""
    ms = [c["matrix"] for c in cells if c.get("matrix")]
    if not ms or any(len(m) < 2 or len(m) != len(m[0]) or len(m) != len(ms[0]) for m in ms):
        return None
    n = len(ms[0])
    return [[statistics.fmean(m[i][j] for m in ms) for j in range(n)] for i in range(n)]


def per_task_means(cells: Sequence[dict], field: str) -> Dict[str, Dict[str, float]]:
    """task -> key -> mean over the cells that recorded ``field`` (a task -> counts mapping, such as
    ``replay``'s generated / parsed or ``replay_mix``'s per earlier task) for it; a key a cell
    lacks counts 0."""
    acc: Dict[str, List[dict]] = {}
    for c in cells:
        for task, counts in (c.get(field) or {}).items():
            if isinstance(counts, dict):
                acc.setdefault(task, []).append(counts)
    return {t: {k: statistics.fmean(float(m.get(k) or 0) for m in ms) for k in dict.fromkeys(k for m in ms for k in m)}
            for t, ms in acc.items()}


def summarize(cells: Sequence[dict]) -> List[Dict[str, object]]:
    """One row per (order, method), in the order the cells first appear."""
    groups: Dict[tuple, List[dict]] = {}
    for c in cells:
        groups.setdefault((c["order"], c["method"]), []).append(c)
    rows = []
    for (order, method), cs in groups.items():
        tasks = cs[0].get("tasks") or []
        finals = [c["matrix"][-1] for c in cs if c.get("matrix")]
        rows.append({
            "order": order, "method": method, "tasks": tasks, "seeds": [c["seed"] for c in cs],
            "average": _stat([c.get("average") for c in cs]),
            "per_seed": [c.get("average") for c in cs],
            "final": [_stat([f[j] for f in finals]) for j in range(len(finals[0]))] if finals else [],
            "backward_transfer": _stat([c.get("backward_transfer") for c in cs]),
            "forgetting": _stat([c.get("forgetting") for c in cs]),
            "just_learnt": _stat([just_learnt(c["matrix"]) for c in cs if c.get("matrix")]),
            "parse_rate": _stat([c.get("parse_rate") for c in cs]),
            "teacher_scores": teacher_scores(cs),
            "teacher_entropy_fraction": teacher_entropy(cs),
            "seconds": _stat([c["train_seconds"] + c["test_seconds"] for c in cs]),
            "stages": stage_matrix(cs),
            "replay": per_task_means(cs, "replay"),
            "replay_mix": per_task_means(cs, "replay_mix"),
            "teacher_samples": teacher_samples(cs),
            "teacher_samples_seeds": [c["seed"] for c in cs if teacher_samples([c])],
            "answer_forms": [c.get("answer_forms") or {} for c in cs],
            "replay_forms": [c.get("replay_forms") or {} for c in cs],
        })
    return rows


def _fmt(s: Optional[Dict[str, float]], pct: bool = False) -> str:
    if s is None:
        return "-"
    k = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    return f"{k * s['mean']:.1f}{unit}" if s["n"] == 1 else f"{k * s['mean']:.1f}{unit} ± {k * s['std']:.1f}"


def _seeds(r: Dict[str, object]) -> Dict[int, float]:
    """seed -> average score of a summary row (seeds whose run has no average left out)."""
    return {s: float(v) for s, v in zip(r["seeds"], r["per_seed"]) if v is not None}


def verdict(rows: Sequence[Dict[str, object]], order: str) -> str:
    """Whether L2KD (its best distilled variant) > LAMOL > finetune holds on the average score,
    each method compared on the seeds it shares with LAMOL and finetune (a mean over other seeds
    would compare different runs: one hard seed moves a method that ran it, not one that did not),
    then the seeds on which it holds run by run."""
    per = {r["method"]: _seeds(r) for r in rows if r["order"] == order}
    base = set(per.get("lll", {})) & set(per.get("finetune", {}))
    cands = {m: sorted(base & set(per[m])) for m in L2KD_METHODS if m in per}
    cands = {m: seeds for m, seeds in cands.items() if seeds}
    if not cands:
        return f"{order}: not enough methods finished to compare"

    def mean(m: str, seeds: Sequence[int]) -> float:
        return statistics.fmean(per[m][s] for s in seeds)

    # the distilled variant furthest ahead of LAMOL on the seeds they share
    best = max(cands, key=lambda m: mean(m, cands[m]) - mean("lll", cands[m]))
    seeds = cands[best]
    a, lll, ft = mean(best, seeds), mean("lll", seeds), mean("finetune", seeds)
    on = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    return (f"{order}: the paper's order (L2KD > LAMOL > finetune) {'holds' if a > lll > ft else 'does NOT hold'} "
            f"on {on}: best distilled {best} {a:.1f}, lll {lll:.1f}, finetune {ft:.1f}; "
            f"per seed, it holds on {_per_seed(per, sorted(base))}")


def _per_seed(per: Dict[str, Dict[int, float]], seeds: Sequence[int]) -> str:
    """The seeds on which some distilled method > LAMOL > finetune, each with its best distilled
    method, or "none of seeds ..." when there is none."""
    held = []
    for s in seeds:
        lll, ft = per["lll"][s], per["finetune"][s]
        ahead = [m for m in L2KD_METHODS if s in per.get(m, {}) and per[m][s] > lll]
        if ahead and lll > ft:
            m = max(ahead, key=lambda k: per[k][s])
            held.append(f"seed {s} ({m} {per[m][s]:.1f} > lll {lll:.1f} > finetune {ft:.1f})")
    return ", ".join(held) if held else f"none of seeds {', '.join(map(str, seeds))}"


def stage_markdown(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of the per-stage table of one order's sequential rows (empty when there are none)."""
    rs = [r for r in rows if r.get("stages")]
    if not rs:
        return []
    tasks = rs[0]["tasks"]
    out = [f"Score after each stage, mean over seeds (each cell: {' / '.join(tasks)}), the pseudo-samples "
           "parsed before each later task, and which earlier task they imitate by their question (`other`: "
           "none, or no answer marker), means over seeds:", "",
           "| method | seeds | " + " | ".join(f"after {t}" for t in tasks) + " | parsed | imitating |",
           "|---" * (len(tasks) + 4) + "|"]
    for r in rs:
        cells = [" / ".join(f"{v:.1f}" for v in row) for row in r["stages"]]
        rep = r.get("replay") or {}
        parsed = ", ".join(f"{t} {rep[t]['parsed']:.3g} / {rep[t]['generated']:.3g}" for t in tasks if t in rep) or "-"
        mix = r.get("replay_mix") or {}
        imitating = "; ".join(f"before {t}: " + ", ".join(f"{k} {v:.3g}" for k, v in mix[t].items())
                              for t in tasks if t in mix) or "-"
        out.append(f"| {r['method']} | {len(r['seeds'])} | " + " | ".join(cells) + f" | {parsed} | {imitating} |")
    return out + [""]


def teacher_samples_markdown(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of the table of the teachers' own pseudo-samples (empty when no row recorded them)."""
    rs = [r for r in rows if r.get("teacher_samples")]
    if not rs:
        return []
    tasks = rs[0]["tasks"]
    out = ["The teachers' own pseudo-samples, written after the generation token with the run's LM sampling "
           "(each cell: parsed / imitating the teacher's task by their question, parsed or not / generated, means "
           "over the seeds that recorded them):",
           "", "| method | seeds | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for r in rs:
        own = r["teacher_samples"]
        cells = [f"{own[t]['parsed']:.3g} / {own[t]['own_task']:.3g} / {own[t]['generated']:.3g}" if t in own else "-"
                 for t in tasks]
        seeds = ", ".join(map(str, r["teacher_samples_seeds"]))
        out.append(f"| {r['method']} | {seeds} | " + " | ".join(cells) + " |")
    return out + [""]


def answer_forms_markdown(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of the table of off-form test answers per run and stage (empty when no run recorded
    them; :mod:`l2kd.cli.study_answers`)."""
    rs = [r for r in rows if any(r["answer_forms"])]
    if not rs:
        return []
    tasks = rs[0]["tasks"]
    stages = list(dict.fromkeys(s for r in rs for forms in r["answer_forms"] for s in forms))
    out = [f"Test answers off form: in a form (sentence, slot list, `None`, empty) that under "
           f"{100 * MIN_SHARE:.0f}% of the task's references take, such as `None` answering an NLG question; per "
           f"seed, after each stage (each cell: {' / '.join(tasks)}, of "
           f"{' / '.join(str(n) for n in _test_counts(rs, tasks))} answers); and the pseudo-samples replayed "
           f"before each task that imitate an earlier task by their question, off that task's form / all:", "",
           "| method | seed | " + " | ".join(f"after {s}" for s in stages) + " | replayed off form |",
           "|---" * (len(stages) + 3) + "|"]
    for r in rs:
        for seed, forms, replayed in zip(r["seeds"], r["answer_forms"], r["replay_forms"]):
            if not forms:
                continue
            cells = [" / ".join(str(forms[s][t]["off_form"]) if t in forms[s] else "-" for t in tasks)
                     if s in forms else "-" for s in stages]
            rep = "; ".join(f"before {t}: " + ", ".join(f"{src} {c['off_form']} / {c['n']}" for src, c in by.items())
                            for t, by in replayed.items() if by) or "-"
            out.append(f"| {r['method']} | {seed} | " + " | ".join(cells) + f" | {rep} |")
    return out + [""]


def _test_counts(rows: Sequence[Dict[str, object]], tasks: Sequence[str]) -> List[int]:
    """The number of test answers per task, as the runs' qa files hold them (the largest seen)."""
    return [max((f[t]["n"] for r in rows for forms in r["answer_forms"] for f in forms.values() if t in f), default=0)
            for t in tasks]


def markdown(rows: Sequence[Dict[str, object]]) -> str:
    """The summary as markdown tables (one per order) with the verdicts."""
    out: List[str] = []
    for order in dict.fromkeys(r["order"] for r in rows):
        rs = [r for r in rows if r["order"] == order]
        tasks = rs[0]["tasks"]
        out += [f"### {order}: {' -> '.join(tasks)}", "",
                "| method | seeds | " + " | ".join(tasks) + " | avg | BWT | forget | just learnt | parse rate | "
                "teachers | teacher H / log V | wall s |", "|---" * (len(tasks) + 10) + "|"]
        for r in rs:
            teach = " / ".join(f"{r['teacher_scores'][t]:.1f}" for t in tasks if t in r["teacher_scores"]) or "-"
            finals = [_fmt(s) for s in r["final"]] + ["-"] * (len(tasks) - len(r["final"]))
            ent = r["teacher_entropy_fraction"]
            ent = f"{100 * ent:.0f}%" if ent is not None else "-"
            out.append(f"| {r['method']} | {len(r['seeds'])} | " + " | ".join(finals) + f" | {_fmt(r['average'])} | "
                       f"{_fmt(r['backward_transfer'])} | {_fmt(r['forgetting'])} | {_fmt(r['just_learnt'])} | "
                       f"{_fmt(r['parse_rate'], pct=True)} | {teach} | {ent} | {_fmt(r['seconds'])} |")
        out += ["", verdict(rows, order), ""] + stage_markdown(rs) + teacher_samples_markdown(rs)
        out += answer_forms_markdown(rs)
    out.append("Final score per task after the last task, 0-100, mean ± std over seeds; avg = their mean; BWT = "
               "backward transfer; forget = forgetting; just learnt = mean score on each task right after learning "
               "it; parse rate = share of LAMOL's pseudo-samples that parsed (all tasks); teachers = mean teacher "
               "score per task (distilled methods); teacher H / log V = mean entropy of their soft targets at the "
               "run's temperature over its maximum; wall s = train + test per run. A row run on fewer seeds "
               "averages those seeds only, so rows with different seeds are not comparable; the verdict compares "
               "each method on the seeds it shares with LAMOL and finetune.")
    return "\n".join(out) + "\n"
