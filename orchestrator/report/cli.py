"""`python -m orchestrator.report OUTPUT_DIR`: print the tables, write report.html, report.md and
the plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .tables import load_results, message_line, problem_table, sweep_table


def plot(output_dir: str | Path) -> list[Path]:
    """Write the report's PNGs into OUTPUT_DIR/plots; return their paths (figures without data
    are skipped)."""
    from .data import load_run
    from .document import PLOT_DIR
    from .plots import figures, write_figures

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
    paths_rows, messages, summary = load_results(out)
    if not paths_rows and not summary:
        print(f"error: {out} holds neither paths.parquet nor summary.json", file=sys.stderr)
        return 2

    print(f"== per problem ({out / 'paths.parquet'}) ==")
    print(problem_table(paths_rows))
    print()
    print(f"== sweep ({out / 'summary.json'}) ==")
    print(sweep_table(summary))
    print()
    print(message_line(messages))
    if args.no_plots:
        return 0
    if not summary:
        print(f"error: {out} has no summary.json: no report written", file=sys.stderr)
        return 2
    from .document import write_report

    try:
        written = write_report(out, args.point, args.problem, args.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in written["plots"]:
        print(f"wrote {p}")
    print(f"wrote {written['md']}")
    print(f"wrote {written['html']}")
    return 0
