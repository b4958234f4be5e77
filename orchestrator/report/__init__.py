"""Reports of a results directory (`paths.parquet`, `messages.parquet`, `summary.json`,
`config.json`, `run_info.json`).

    python -m orchestrator.report OUTPUT_DIR [--point P --problem ID --path I] [--no-plots]

prints the tables a run prints when it ends (`text.console_text`) and writes OUTPUT_DIR/report.html
(self-contained), OUTPUT_DIR/report.md and the PNGs under OUTPUT_DIR/plots/. Every number in the
report is read from summary.json (written by `orchestrator.core.metrics.summarize`).

One pipeline: `data` loads a results directory into a `Run` and builds its `Table`s (`compare`
adds the methods against their cost, from `costs`: tokens per path with probes, generation time,
the Pareto front, tokens saved by stopping); `document` renders them as HTML and Markdown, `text`
as fixed-width text, `plots` draws the figures.

Python API: `load_results(output_dir)` (the `Run`), `write_report(output_dir, point=None,
problem=None, path=None)`, `plot(output_dir)` (the PNGs only), the text of a `Run`:
`console_text(run)` (everything printed), `problem_table(run)`, `sweep_table(run)`,
`message_line(run)`; and `main(argv)`.

Runs in the driver process at the end of a run, or in its own (`python -m orchestrator.report`)
on any machine that has the results directory: no Ray, no engine.
May import: `orchestrator.core`, `orchestrator.errors`, `orchestrator.config` (to read config.json).
"""

from __future__ import annotations

from .cli import main, plot
from .data import load_run as load_results
from .document import write_report
from .text import console_text, message_line, problem_table, sweep_table

__all__ = ["console_text", "load_results", "main", "message_line", "plot", "problem_table", "sweep_table",
           "write_report"]
