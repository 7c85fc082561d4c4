"""The README's performance table, generated from the benchmarks' JSON files.

Each row names a benchmark record of the eager PyTorch reference and one of l2kd's fused path
(matched by the fields that identify a case), and prints both figures, their ratio, the hardware
floor where the benchmark computes one, and which file and machine the figures come from.

    python benchmarks/perf_table.py                                  # newest results, printed
    python benchmarks/perf_table.py --results benchmarks/reference --readme README.md

The second form rewrites the block between ``<!-- perf-table:begin -->`` and
``<!-- perf-table:end -->`` in the README from the committed reference results (a test checks the
README and those files agree). For every row the newest file of its benchmark that holds both
records is used, so a partial run (``--quick``, ``--skip-loss``) does not hide older full figures.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"


@dataclass(frozen=True)
class Row:
    """One table row: the reference record and the fused record of one benchmark case."""

    label: str
    op: str  # the "op" field of the benchmark's JSON
    command: str
    ref: Dict[str, object]  # fields the reference record must have
    fused: Dict[str, object]  # fields the fused record must have
    ref_value: str
    fused_value: str
    unit: str  # "ms", "tok/s" or "MB"
    floor: Optional[str] = None  # field of the fused record with the hardware floor (same unit)
    common: Dict[str, object] = field(default_factory=dict)  # fields both records must have


ROWS: Tuple[Row, ...] = (
    Row("kd_loss fwd+bwd, N=2048, V=50257, fp32", "kd_loss", "python benchmarks/bench_kd_loss.py",
        {"impl": "eager"}, {"impl": "fused"}, "median_ms", "median_ms", "ms", "floor_ms",
        {"N": 2048, "dtype": "float32", "mask": "100%"}),
    Row("kd_loss fwd+bwd, N=2048, V=50257, bf16", "kd_loss", "python benchmarks/bench_kd_loss.py",
        {"impl": "eager"}, {"impl": "fused"}, "median_ms", "median_ms", "ms", "floor_ms",
        {"N": 2048, "dtype": "bfloat16", "mask": "100%"}),
    Row("top_k_sample, B=64, V=50257, k=20, fp32", "top_k_sample", "python benchmarks/bench_top_k_sample.py --threads 1",
        {}, {}, "ref_ms", "fused_ms", "ms", "floor_ms", {"B": 64, "top_p": 0.0, "dtype": "float32"}),
    Row("top_k_sample + top-p 0.9, B=64, fp32", "top_k_sample", "python benchmarks/bench_top_k_sample.py --threads 1",
        {}, {}, "ref_ms", "fused_ms", "ms", "floor_ms", {"B": 64, "top_p": 0.9, "dtype": "float32"}),
    Row("gem_project, P=20M, t=4, violated (vs torch dots + quadprog)", "gem_project",
        "python benchmarks/bench_gem_project.py", {}, {}, "orig_ms", "out_ms", "ms", "floor_ms",
        {"P": 20_000_000, "t": 4, "case": "violated"}),
    Row("gem_project, P=20M, t=4, nothing violated", "gem_project", "python benchmarks/bench_gem_project.py",
        {}, {}, "orig_ms", "out_ms", "ms", "floor_ms", {"P": 20_000_000, "t": 4, "case": "ok"}),
    Row("gem_project, P=124M (GPT-2 size), t=4", "gem_step", "python benchmarks/bench_gem_step.py",
        {}, {}, "reference_ms", "fused_ms", "ms", "floor_ms", {"part": "project", "t": 4}),
    Row("GEM training step, tiny GPT-2, 2 memories", "gem_step", "python benchmarks/bench_gem_step.py",
        {"use_kernels": False}, {"use_kernels": True}, "step_ms", "step_ms", "ms", None, {"part": "step"}),
    Row("Word-KD training step, tiny GPT-2, 8x64 tokens", "kd_throughput",
        "python benchmarks/kd_throughput.py --skip-loss", {"impl": "eager"}, {"impl": "fused_head"},
        "tokens_per_s", "tokens_per_s", "tok/s", None, {"table": "train_step"}),
    Row("KD loss part, N=4096, H=768, V=50257, fp32: peak memory", "kd_throughput",
        "python benchmarks/kd_throughput.py", {"impl": "eager"}, {"impl": "fused_head"},
        "peak_mb", "peak_mb", "MB", None, {"table": "loss_part"}),
)


def load_results(results_dir: str) -> Dict[str, List[Tuple[str, dict]]]:
    """Benchmark JSON files by op, newest first (file names end in a timestamp)."""
    by_op: Dict[str, List[Tuple[str, dict]]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json")), reverse=True):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: not a readable benchmark JSON file ({exc})") from None
        if isinstance(doc, dict) and "op" in doc and isinstance(doc.get("records"), list):
            by_op.setdefault(doc["op"], []).append((path, doc))
    return by_op


def _match(rec: dict, want: Dict[str, object]) -> bool:
    return all(rec.get(k) == v for k, v in want.items())


def find_pair(row: Row, files: List[Tuple[str, dict]]) -> Optional[Tuple[str, dict, dict, dict]]:
    """(path, document, reference record, fused record) from the newest file holding both."""
    for path, doc in files:
        recs = doc["records"]
        ref = next((r for r in recs if _match(r, {**row.common, **row.ref})), None)
        fused = next((r for r in recs if _match(r, {**row.common, **row.fused})), None)
        if ref is not None and fused is not None and row.ref_value in ref and row.fused_value in fused:
            return path, doc, ref, fused
    return None


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3g} ms" if value < 10 else f"{value:.0f} ms"
    return f"{value:.0f} {unit}"


def build_table(by_op: Dict[str, List[Tuple[str, dict]]], results_dir: str) -> str:
    """The markdown table (with its provenance lines) for every row that has results."""
    lines = ["| benchmark | eager reference | l2kd | ratio | hardware floor | l2kd / floor |",
             "|---|---|---|---|---|---|"]
    sources: Dict[str, dict] = {}
    missing = []
    for row in ROWS:
        found = find_pair(row, by_op.get(row.op, []))
        if found is None:
            missing.append(row.label)
            continue
        path, doc, ref, fused = found
        sources[os.path.basename(path)] = doc.get("environment", {})
        r, f = float(ref[row.ref_value]), float(fused[row.fused_value])
        if row.unit == "tok/s":
            ratio = f"{f / r:.2f}x faster"
        elif row.unit == "MB":
            ratio = f"{f / r:.3f} of the memory"
        else:
            ratio = f"{r / f:.1f}x faster" if r >= f else f"{f / r:.1f}x slower"
        floor = fused.get(row.floor) if row.floor else None
        floor_cols = f"{_fmt(float(floor), row.unit)} | {f / float(floor):.2f}x" if floor else " | "
        lines.append(f"| {row.label} (`{row.command}`) | {_fmt(r, row.unit)} | {_fmt(f, row.unit)} | {ratio} | "
                     f"{floor_cols} |")
    rel = os.path.relpath(results_dir, os.path.dirname(HERE))
    lines.append("")
    lines.append(f"Generated by `python benchmarks/perf_table.py --results {rel} --readme README.md` from:")
    for name, env in sorted(sources.items()):
        lines.append(f"- `{rel}/{name}`: {env.get('device_type', '?')} {env.get('device', '')}, "
                     f"{env.get('threads', '?')} threads, torch {env.get('torch', '?')}, "
                     f"commit {str(env.get('commit', '?'))[:10]}")
    if missing:
        lines.append(f"- no results yet for: {'; '.join(missing)}")
    return "\n".join(lines)


def replace_block(text: str, table: str, where: str) -> str:
    """``text`` with the block between the perf-table markers replaced by ``table``."""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{where}: no '{BEGIN}' ... '{END}' block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results"),
                    help="folder of benchmark JSON files (default: benchmarks/results)")
    ap.add_argument("--readme", default=None, help="rewrite this file's perf-table block instead of printing")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.results):
        raise SystemExit(f"--results {args.results}: not a directory (run a benchmark first)")
    table = build_table(load_results(args.results), os.path.abspath(args.results))
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        new = replace_block(text, table, args.readme)
        with open(args.readme, "w") as f:
            f.write(new)
        print(f"{args.readme}: performance table {'updated' if new != text else 'already up to date'}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
