"""The report as fixed-width text: what a run prints when it ends, and what
`python -m orchestrator.report OUTPUT_DIR` prints (both call `console_text`).

It renders the report's own `Table`s (`orchestrator.report.data`), so every number on the
terminal is the one report.html and report.md show, read from summary.json:

- what the numbers leave out (an incomplete run) or had to compute (an older summary.json);
- the per-problem table (Pass@1, Cons@N, majority answer per configuration) when it fits the
  terminal, else a line saying where it is;
- accuracy by configuration (Pass@1, Cons@N, their differences to the baselines, ungraded paths);
- tokens per path (sampled, injected, total), rounds and prefix-cache hit rate;
- for a run whose rows record how paths ended (the method columns), the methods against their
  cost (tokens per path, generation time, the Pareto front) and, when a point stops early, the
  tokens it saved and the answers it changed (`compare`);
- when the run planned itself, its plan against what it measured ("Plan vs run");
- one line about the delivered peer messages, and one about ungraded paths when there are any.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import data as D
from .compare import report_tables
from .data import Run, Table

# The per-problem table is printed when it has at most this many rows and is at most this wide.
PROBLEM_ROWS = 40
WIDTH = 160
# Columns the console leaves out: the configuration's name says its settings; the lenient-scorer
# and shortest-majority variants are in the report.
ACCURACY_DROP = ("mode", "T", "top-k", "router")
TOKENS_DROP = ("Pass@1 (compat)", "Cons@N shortest")
STOPPING_DROP = ("basis", "its tokens/path")  # the note under the report's table says them
ANSWER_CHARS = 16  # a longer majority answer is cut, ending in "~"

NUMERIC = D.NUMERIC


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> str:
    """A fixed-width text table: a header line, a rule, the rows; columns with `right[j]` true
    are right-aligned (numbers), the others left-aligned."""
    body = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[j]) for r in body]) for j, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def _clipped(text: str, chars: int | None) -> str:
    return text if chars is None or len(text) <= chars else text[: chars - 1] + "~"


def table_text(t: Table, drop: Sequence[str] = (), clip: Mapping[str, int] | None = None) -> str:
    """A `Table` as fixed-width text. Columns whose header is in `drop` are left out; `clip`
    ({header: chars}) cuts long cells. When the table's header groups name more than one thing
    (benchmarks, configurations), each header is prefixed with its group's label."""
    headers = list(t.headers)
    if sum(1 for label, _ in t.groups if label) > 1:
        i = 0
        for label, span in t.groups:
            for j in range(i, i + span):
                headers[j] = f"{label} {headers[j]}" if label else headers[j]
            i += span
    keep = [j for j, h in enumerate(t.headers) if h not in drop]
    clip = clip or {}
    rows = [[_clipped(r[j].text, clip.get(t.headers[j])) for j in keep] for r in t.rows]
    right = [any(r[j].kind in NUMERIC for r in t.rows) for j in keep]
    return format_table([headers[j] for j in keep], rows, right)


def _titled(t: Table, body: str) -> str:
    return f"{t.title}\n{body}"


def problem_table(run: Run, table: Table | None = None) -> str:
    """Pass@1, Cons@N and the majority answer of every problem, per configuration."""
    t = D.problem_table(run) if table is None else table
    return table_text(t, clip={"majority": ANSWER_CHARS})


def sweep_table(run: Run, table: Table | None = None) -> str:
    """Accuracy by configuration: a row per sweep point; per benchmark Pass@1 and Cons@N (with
    their differences to the baselines, when the run has them) and, when any, ungraded paths."""
    return table_text(D.main_table(run) if table is None else table, drop=ACCURACY_DROP)


def tokens_table(run: Run, table: Table | None = None) -> str:
    """Tokens per path (sampled, injected, total), rounds and cache hit rate per configuration."""
    return table_text(D.efficiency_table(run) if table is None else table, drop=TOKENS_DROP)


def comparison_text(tables: Mapping[str, Table]) -> str:
    """The methods against their cost and the tokens saved by stopping; empty for a run whose
    rows lack the method columns (and the second table for a run where nothing stops early)."""
    parts = [_titled(t, table_text(t, drop=STOPPING_DROP if key == "stopping" else ()))
             for key in ("methods", "stopping") if (t := tables.get(key)) is not None and t.rows]
    return "\n\n".join(parts)


def plan_text(run: Run, table: Table | None = None) -> str:
    """Predicted against measured (generation and wall time, tokens, cache hit rate) with the
    error, and the profile the plan used; empty when the run made no plan."""
    t = D.plan_table(run) if table is None else table
    if not t.rows:
        return f"{t.title}: {t.note}" if t.note else ""
    profile = (run.run_info.get("predicted") or {}).get("profile")
    return _titled(t, table_text(t)) + (f"\nplanned with: {profile}" if profile else "")


def message_line(run: Run) -> str:
    """One line about the delivered peer summaries: how many, over how many rounds, mean
    similarity of a recipient's summary to the peer summaries it received."""
    if not run.messages:
        return "messages: none delivered"
    sims = [float(m["similarity"]) for m in run.messages if m.get("similarity") is not None]
    rounds = {m.get("round") for m in run.messages if m.get("round") is not None}
    text = f"messages: {len(run.messages)} delivered"
    if rounds:
        text += f" over {len(rounds)} round(s)"
    if sims:
        text += f", mean similarity {sum(sims) / len(sims):.3f}"
    return text


def console_text(run: Run, tables: Mapping[str, Table] | None = None) -> str:
    """The text a run prints when it ends and `python -m orchestrator.report` prints; `tables`:
    `compare.report_tables(run)` when the caller has them already."""
    tables = report_tables(run) if tables is None else tables
    parts = ["\n".join(run.notices(limit=3) + run.derived)]
    problems = tables["problems"]
    if problems.rows:
        body = problem_table(run, problems)
        too = [why for why, over in (("long", len(problems.rows) > PROBLEM_ROWS),
                                     ("wide", max(map(len, body.splitlines())) > WIDTH)) if over]
        if too:
            parts.append(f"{problems.title}: {len(problems.rows)} problem(s) x {len(run.order)} configuration(s), "
                         f"too {' and '.join(too)} for the terminal: see report.html or report.md")
        else:
            parts.append(_titled(problems, body))
    parts.append(_titled(tables["main"], sweep_table(run, tables["main"])))
    parts.append(_titled(tables["tokens"], tokens_table(run, tables["tokens"])))
    parts.append(comparison_text(tables))
    parts.append(plan_text(run, tables["plan"]))
    parts.append("\n".join(line for line in (message_line(run), D.ungraded_note(run)) if line))
    return "\n\n".join(p for p in parts if p)


__all__ = ["comparison_text", "console_text", "format_table", "message_line", "plan_text", "problem_table",
           "sweep_table", "table_text", "tokens_table"]
