"""`python -m orchestrator.report OUTPUT_DIR`: print the tables a run prints when it ends, then
write report.html, report.md and the plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .data import load_run
from .document import PLOT_DIR, write_run_report
from .plots import figures, write_figures
from .text import console_text


def plot(output_dir: str | Path) -> list[Path]:
    """Write the report's PNGs into OUTPUT_DIR/plots; return their paths (figures without data
    are skipped)."""
    return write_figures(figures(load_run(output_dir)), Path(output_dir) / PLOT_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report",
        description="Print a results dir's tables and write report.html, report.md and plots/.",
    )
    parser.add_argument("output_dir", help="a run's output_dir (paths.parquet, summary.json, ...)")
    parser.add_argument("--point", help="transcript: the sweep point (default: one chosen for you)")
    parser.add_argument("--problem", help="transcript: the problem id")
    parser.add_argument("--path", type=int, help="transcript: the path index")
    parser.add_argument("--no-plots", action="store_true", help="print the tables only, write no files")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    if not out.is_dir():
        print(f"error: {out} is not a directory", file=sys.stderr)
        return 2
    run = load_run(out)
    if not run.summary:
        print(f"error: {out} has no summary.json (or no sweep point in it): nothing to report", file=sys.stderr)
        return 2
    print(console_text(run))
    if args.no_plots:
        return 0
    try:
        written = write_run_report(run, args.point, args.problem, args.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in written["plots"]:
        print(f"wrote {p}")
    print(f"wrote {written['md']}")
    print(f"wrote {written['html']}")
    return 0
