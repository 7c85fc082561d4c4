"""``python -m l2kd.report RUN_DIR [RUN_DIR ...] [--out DIR] [--no-plots]``: print each run's
matrix and the comparison table over methods and seeds, write ``report.json`` / ``report.md``
and the plots (see :mod:`l2kd.reporting` for what each number means)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from l2kd.reporting import (STD_DDOF, ReportError, plot_dirs, compare, format_comparison, format_markdown, load_run,
                            plot_matrix, plot_task_curves)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m l2kd.report",
                                description="Print, compare and plot the accuracy matrices of tested l2kd runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding accuracy_matrix.json")
    p.add_argument("--out", default=None, help="folder for report.json/.md and the plots "
                   "(default: the run folder for one run; for several, the current folder and each run's folder)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = [load_run(d) for d in args.run_dirs]
    except ReportError as exc:
        print(f"l2kd.report: error: {exc}", file=sys.stderr)
        return 1
    from l2kd.evaluate import format_matrix  # heavy import (torch): only once the inputs are known good
    from l2kd.io_utils import atomic_write_json, atomic_write_text

    for r in runs:
        seed = f", seed {r.seed}" if r.seed is not None else ""
        print(format_matrix(r.result_dict(), f"{r.run_dir} ({r.strategy}{seed}): score after each task (0-100)"))
        print()
    rows = compare(runs)
    print(format_comparison(rows))

    out_dir = args.out if args.out is not None else (args.run_dirs[0] if len(runs) == 1 else os.getcwd())
    written = []
    if args.plots:
        try:
            for r, d in zip(runs, plot_dirs(args.run_dirs, args.out)):
                for name, fn in (("accuracy_matrix.png", plot_matrix), ("task_scores.png", plot_task_curves)):
                    fn(r, os.path.join(d, name))
                    written.append(os.path.join(d, name))
        except ReportError as exc:
            print(f"l2kd.report: error: {exc}", file=sys.stderr)
            return 1
    report = {
        "std_ddof": STD_DDOF,
        "runs": [{"run_dir": r.run_dir, "strategy": r.strategy, "seed": r.seed, "tasks": r.tasks,
                  "matrix": r.matrix, **r.summary()} for r in runs],
        "rows": rows,
    }
    atomic_write_json(os.path.join(out_dir, "report.json"), report)
    md = ["# l2kd report", "", format_markdown(rows), "",
          f"Final score per task after the last task (0-100); mean ± std over n seeds (sample std, "
          f"ddof={STD_DDOF}; one seed: mean only). BWT = backward transfer, forget = forgetting, "
          "FWT = forward transfer; - = not defined (multitask runs, incomplete runs).", "", "Runs:", ""]
    md += [f"- `{r.run_dir}`: {r.strategy}" + (f", seed {r.seed}" if r.seed is not None else "") for r in runs]
    atomic_write_text(os.path.join(out_dir, "report.md"), "\n".join(md) + "\n")
    written += [os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")]
    print("\nwrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
