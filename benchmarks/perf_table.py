"""The README's performance table, generated from the benchmarks' JSON files.

Each row names a benchmark record of the eager PyTorch reference and one of l2kd's fused path
(matched by the fields that identify a case), and prints both figures, the peers measured in the
same run (the eager formula under torch.compile; Liger-Kernel and cut-cross-entropy where they
ran, which is on CUDA only: their columns appear when some row has them), l2kd's ratio to the
eager reference and to the fastest peer, the hardware floor where the benchmark computes one, and
which file and machine the figures come from.

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
from typing import Dict, List, Optional, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"


@dataclass(frozen=True)
class Peer:
    """Where a row finds one peer's figure: a record matching ``match`` (plus the row's common
    fields) in the same file, its ``value`` field; ``error`` names the field that says why the
    peer did not run (a record of that peer with it, or the fused record's ``error`` field)."""

    column: str  # "torch.compile", "Liger", "CCE"
    match: Dict[str, object]
    value: str
    error: str = "skipped"


def _impl_peers() -> Tuple[Peer, ...]:
    return (Peer("torch.compile", {"impl": "torch_compile"}, "median_ms"), Peer("Liger", {"impl": "liger"}, "median_ms"),
            Peer("CCE", {"impl": "cce"}, "median_ms"))


COMPILE_IN_RECORD = (Peer("torch.compile", {}, "compile_ms", "compile_error"),)


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
    # field(s) of the fused record with the hardware floor (same unit); with several, the largest
    # is the floor: an op bound by arithmetic cannot reach its byte floor
    floor: Union[str, Tuple[str, ...], None] = None
    common: Dict[str, object] = field(default_factory=dict)  # fields both records must have
    peers: Tuple[Peer, ...] = ()


# kd_loss: bytes at the measured bandwidth, or the kernel's arithmetic on cache-resident rows
# (bench_kd_loss.compute_floor_ms), whichever is larger.
KD_FLOOR = ("floor_ms", "compute_floor_ms")


def _floor(row: Row, fused: dict) -> Optional[float]:
    """The row's hardware floor from the fused record (None when the benchmark computes none)."""
    names = (row.floor,) if isinstance(row.floor, str) else (row.floor or ())
    values = [float(fused[n]) for n in names if isinstance(fused.get(n), (int, float)) and fused[n] == fused[n]]
    return max(values) if values else None


ROWS: Tuple[Row, ...] = (
    Row("kd_loss fwd+bwd, N=2048, V=50257, fp32", "kd_loss", "python benchmarks/bench_kd_loss.py",
        {"impl": "eager"}, {"impl": "fused"}, "median_ms", "median_ms", "ms", KD_FLOOR,
        {"N": 2048, "dtype": "float32", "mask": "100%"}, _impl_peers()),
    Row("kd_loss fwd+bwd, N=2048, V=50257, bf16", "kd_loss", "python benchmarks/bench_kd_loss.py",
        {"impl": "eager"}, {"impl": "fused"}, "median_ms", "median_ms", "ms", KD_FLOOR,
        {"N": 2048, "dtype": "bfloat16", "mask": "100%"}, _impl_peers()),
    Row("top_k_sample, B=64, V=50257, k=20, fp32", "top_k_sample", "python benchmarks/bench_top_k_sample.py --threads 1",
        {}, {}, "ref_ms", "fused_ms", "ms", "floor_ms", {"B": 64, "top_p": 0.0, "dtype": "float32"},
        COMPILE_IN_RECORD),
    Row("top_k_sample + top-p 0.9, B=64, fp32", "top_k_sample", "python benchmarks/bench_top_k_sample.py --threads 1",
        {}, {}, "ref_ms", "fused_ms", "ms", "floor_ms", {"B": 64, "top_p": 0.9, "dtype": "float32"},
        COMPILE_IN_RECORD),
    Row("gem_project, P=20M, t=4, violated (vs torch dots + quadprog)", "gem_project",
        "python benchmarks/bench_gem_project.py", {}, {}, "orig_ms", "out_ms", "ms", "floor_ms",
        {"P": 20_000_000, "t": 4, "case": "violated"}, COMPILE_IN_RECORD),
    Row("gem_project, P=20M, t=4, nothing violated (l2kd in place, as the original)", "gem_project",
        "python benchmarks/bench_gem_project.py", {}, {}, "orig_ms", "inplace_ms", "ms", "floor_ms",
        {"P": 20_000_000, "t": 4, "case": "ok"}, COMPILE_IN_RECORD),
    Row("gem_project, P=124M (GPT-2 size), t=4", "gem_step", "python benchmarks/bench_gem_step.py",
        {}, {}, "reference_ms", "fused_ms", "ms", "floor_ms", {"part": "project", "t": 4}),
    Row("GEM training step, tiny GPT-2, 2 memories", "gem_step", "python benchmarks/bench_gem_step.py",
        {"use_kernels": False}, {"use_kernels": True}, "step_ms", "step_ms", "ms", None, {"part": "step"}),
    Row("Word-KD training step, tiny GPT-2, 8x64 tokens", "kd_throughput",
        "python benchmarks/kd_throughput.py --skip-loss", {"impl": "eager"}, {"impl": "fused_head"},
        "tokens_per_s", "tokens_per_s", "tok/s", None, {"table": "train_step"}),
    Row("KD loss part, N=4096, H=768, V=50257, fp32: fwd+bwd time", "kd_throughput",
        "python benchmarks/kd_throughput.py", {"impl": "eager"}, {"impl": "fused_head"},
        "median_ms", "median_ms", "ms", None, {"table": "loss_part"},
        (Peer("torch.compile", {"impl": "torch_compile"}, "median_ms"),)),
    Row("KD loss part, N=4096, H=768, V=50257, fp32: peak memory", "kd_throughput",
        "python benchmarks/kd_throughput.py", {"impl": "eager"}, {"impl": "fused_head"},
        "peak_mb", "peak_mb", "MB", None, {"table": "loss_part"},
        (Peer("torch.compile", {"impl": "torch_compile"}, "peak_mb"),)),
)
PEER_COLUMNS = ("torch.compile", "Liger", "CCE")


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


def find_peer(row: Row, peer: Peer, doc: dict, fused: dict) -> Tuple[Optional[float], Optional[str]]:
    """(value, None) when the peer ran in the file of the row's pair, (None, why) when it was
    recorded as not run, (None, None) when the file says nothing about it."""
    if not peer.match:  # the peer's figure sits in the fused record itself
        if peer.value in fused:
            return float(fused[peer.value]), None
        return None, fused.get(peer.error)
    rec = next((r for r in doc["records"] if _match(r, {**row.common, **peer.match})), None)
    if rec is None:
        return None, None
    if peer.value in rec:
        return float(rec[peer.value]), None
    return None, str(rec.get(peer.error, "not run"))


def _ratio(r: float, f: float, unit: str) -> str:
    if unit == "tok/s":
        return f"{f / r:.2f}x faster" if f >= r else f"{r / f:.2f}x slower"
    if unit == "MB":
        return f"{f / r:.3f} of the memory"
    return f"{r / f:.1f}x faster" if r >= f else f"{f / r:.1f}x slower"


def _floor_bandwidth(config: dict) -> str:
    """How the file's floors were computed: measured read / write bandwidth, or the fixed figure."""
    if "read_gbps" in config:
        how = "measured" if str(config.get("bandwidth_source", "")).startswith("measured") else "fixed"
        return f", floor at {config['read_gbps']:.1f} GB/s read / {config['write_gbps']:.1f} GB/s write ({how})"
    if "bandwidth_gbps" in config:
        return f", floor at an assumed {config['bandwidth_gbps']:g} GB/s"
    return ""


def build_table(by_op: Dict[str, List[Tuple[str, dict]]], results_dir: str) -> str:
    """The markdown table (with its provenance lines) for every row that has results."""
    found_rows = []
    sources: Dict[str, dict] = {}
    missing = []
    for row in ROWS:
        found = find_pair(row, by_op.get(row.op, []))
        if found is None:
            missing.append(row.label)
            continue
        path, doc, ref, fused = found
        sources[os.path.basename(path)] = {**doc.get("environment", {}), "_config": doc.get("config", {})}
        peers = {p.column: find_peer(row, p, doc, fused) for p in row.peers}
        found_rows.append((row, ref, fused, peers))
    # Liger / CCE columns only when some row has a figure for them (they run on CUDA only)
    shown = [c for c in PEER_COLUMNS
             if c == "torch.compile" or any(peers.get(c, (None, None))[0] is not None for *_, peers in found_rows)]
    head = ["benchmark", "eager reference", *shown, "l2kd", "l2kd vs eager", "l2kd vs fastest peer", "hardware floor",
            "l2kd / floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: Dict[str, List[str]] = {}
    for row, ref, fused, peers in found_rows:
        r, f = float(ref[row.ref_value]), float(fused[row.fused_value])
        cells = [f"{row.label} (`{row.command}`)", _fmt(r, row.unit)]
        best: Optional[Tuple[float, str]] = None
        for c in shown:
            value, why = peers.get(c, (None, None))
            if value is not None:
                cells.append(_fmt(value, row.unit))
                if best is None or (value > best[0] if row.unit == "tok/s" else value < best[0]):
                    best = (value, c)
            elif why:
                cells.append("not run")
                notes.setdefault(f"{c}: {why}", []).append(row.label)
            else:
                cells.append("" if row.peers else "-")
        cells.append(_fmt(f, row.unit))
        cells.append(_ratio(r, f, row.unit))
        cells.append(f"{_ratio(best[0], f, row.unit)} than {best[1]}" if best else "")
        floor = _floor(row, fused)
        cells += [_fmt(floor, row.unit), f"{f / floor:.2f}x"] if floor else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    # peers never shown as a column: say why once
    for c in PEER_COLUMNS:
        if c not in shown:
            whys = sorted({why for *_, peers in found_rows for col, (v, why) in peers.items() if col == c and why})
            if whys:
                notes.setdefault(f"{c}: {whys[0]}", [])
    rel = os.path.relpath(results_dir, os.path.dirname(HERE))
    lines.append("")
    for text, labels in notes.items():
        where = f" ({'; '.join(labels)})" if labels else ""
        lines.append(f"- not run: {text}{where}")
    lines.append(f"Generated by `python benchmarks/perf_table.py --results {rel} --readme README.md` from:")
    for name, env in sorted(sources.items()):
        lines.append(f"- `{rel}/{name}`: {env.get('device_type', '?')} {env.get('device', '')}, "
                     f"{env.get('threads', '?')} threads, torch {env.get('torch', '?')}, "
                     f"commit {str(env.get('commit', '?'))[:10]}"
                     f"{' + uncommitted changes' if env.get('uncommitted_changes') else ''}"
                     f"{_floor_bandwidth(env['_config'])}")
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
