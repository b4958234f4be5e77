"""Reports of a results directory (`paths.parquet`, `messages.parquet`, `summary.json`,
`config.json`, `run_info.json`).

    python -m orchestrator.report OUTPUT_DIR [--point P --problem ID --path I] [--no-plots]

prints the per-problem and sweep tables and writes OUTPUT_DIR/report.html (self-contained),
OUTPUT_DIR/report.md and the PNGs under OUTPUT_DIR/plots/. Every number in the report is read
from summary.json (written by `orchestrator.core.metrics.summarize`).

Python API: `write_report(output_dir, point=None, problem=None, path=None)`, `plot(output_dir)`
(the PNGs only), the text tables `problem_table(paths)`, `sweep_table(summary)`,
`message_line(messages)`, and `main(argv)`.
"""

from __future__ import annotations

from .cli import main, plot
from .document import write_report
from .tables import load_results, message_line, problem_table, sweep_table

__all__ = ["load_results", "main", "message_line", "plot", "problem_table", "sweep_table", "write_report"]
