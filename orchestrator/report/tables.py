"""Fixed-width text tables of a results directory, for the console and the CLI.

A per-problem table (Pass@1 and Cons@N of every problem at every sweep point), a sweep table
(one row per sweep point x benchmark: Pass@1, Cons@N, tokens per path) and a line about the
delivered peer messages.

The per-problem table is recomputed from the path rows: Pass@1 is the mean of `correct` over the
problem's graded paths; Cons@N grades the majority answer (non-empty answers only, ties go to the
answer seen first in path order; the vote of `orchestrator.core.metrics.majority_vote`, as in
summary.json). Ungraded paths (`correct` null: no check could decide) are never counted wrong;
when a run has any, both tables gain an `ungraded` column.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from orchestrator.core.metrics import majority_vote

__all__ = ["load_results", "message_line", "problem_table", "sweep_table"]

Rows = list[dict[str, Any]]

# The columns of paths.parquet the report reads (the table also holds full texts, left unread).
PATH_COLUMNS = (
    "sweep_point", "benchmark", "problem_id", "path", "correct", "correct_compat", "answer",
    "sampled_tokens", "injected_tokens",
)


# --------------------------------------------------------------------------------------------
# loading


def _rows(table: Any, columns: Sequence[str] | None = None) -> Rows:
    """Accept a list of dicts, a pyarrow Table, a pandas DataFrame or a parquet path; with
    `columns`, read only those of them that exist."""
    if table is None:
        return []
    if isinstance(table, (str, Path)):
        import pyarrow.parquet as pq

        if columns is not None:
            names = set(pq.read_schema(table).names)
            return pq.read_table(table, columns=[c for c in columns if c in names]).to_pylist()
        return pq.read_table(table).to_pylist()
    if hasattr(table, "to_pylist"):  # pyarrow.Table
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table.to_pylist()
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas.DataFrame
        return table.to_dict(orient="records")
    return list(table)


def load_results(output_dir: str | Path) -> tuple[Rows, Rows, dict]:
    """(path rows, message rows, summary) of a results dir; missing files read as empty."""
    d = Path(output_dir)
    paths = _rows(d / "paths.parquet", PATH_COLUMNS) if (d / "paths.parquet").is_file() else []
    messages = _rows(d / "messages.parquet") if (d / "messages.parquet").is_file() else []
    summary_file = d / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return paths, messages, summary


# --------------------------------------------------------------------------------------------
# formatting


def _fmt_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    """Fixed-width text table; the first `left` columns are left-aligned, the rest right-aligned."""
    body = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for j, c in enumerate(r):
            widths[j] = max(widths[j], len(c))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(widths[j]) if j < left else c.rjust(widths[j]) for j, c in enumerate(cells)
        ).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    return "\n".join(out)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}"
    return str(v)


def _tokens(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):,.0f}"


def _sort_key(v: Any) -> tuple:
    """Natural-ish order: numbers by value, then strings."""
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


# --------------------------------------------------------------------------------------------
# per-problem table


def _truthy(v: Any) -> bool:
    return bool(v) and not (isinstance(v, float) and math.isnan(v))


def _verdict(v: Any) -> bool | None:
    """A path's `correct`: None (also NaN, as pandas reads a null) when it is ungraded."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)


def _problem_stats(rows: Rows) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: _sort_key(r.get("path", 0)))
    n = len(rows)
    verdicts = [_verdict(r.get("correct")) for r in rows]
    graded = [v for v in verdicts if v is not None]
    pass1 = sum(graded) / len(graded) if graded else float("nan")
    # The same vote as summary.json's Cons@N (canonical answers, ties to the first occurrence).
    answers = [r.get("answer") if r.get("answer") not in ("",) else None for r in rows]
    vote = majority_vote(answers, verdicts, [int(r.get("sampled_tokens") or 0) for r in rows])
    ungraded = len(verdicts) - len(graded)
    undecided = vote["correct"] is None or (vote["answer"] is None and ungraded)
    majority, cons = vote["answer"] or "", float("nan") if undecided else float(vote["correct"])
    tokens = [
        float(r.get("sampled_tokens") or 0) + float(r.get("injected_tokens") or 0) for r in rows
    ]
    return {
        "n": n,
        "ungraded": ungraded,
        "pass1": pass1,
        "cons": cons,
        "majority": majority,
        "tokens": sum(tokens) / n if n else float("nan"),
    }


def _nanmean(values: list[float]) -> float | None:
    """The mean of the decided values (NaN: nothing graded); None when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def problem_table(paths_table: Any, max_answer_chars: int = 12) -> str:
    """Pass@1 and Cons@N per problem (rows) and sweep point (column pairs), with a mean row per
    benchmark. `paths_table`: the rows of paths.parquet (list of dicts, pyarrow Table, DataFrame
    or the parquet path)."""
    rows = _rows(paths_table, PATH_COLUMNS)
    if not rows:
        return "(no paths)"
    groups: dict[tuple, Rows] = defaultdict(list)
    for r in rows:
        groups[(str(r.get("sweep_point", "")), str(r.get("benchmark", "")), str(r.get("problem_id", "")))].append(r)
    sweeps = sorted({k[0] for k in groups}, key=_sort_key)
    problems = sorted({(k[1], k[2]) for k in groups}, key=lambda p: (p[0], _sort_key(p[1])))
    stats = {k: _problem_stats(v) for k, v in groups.items()}

    one_sweep = len(sweeps) == 1
    apart = any(st["ungraded"] for st in stats.values())
    headers = ["benchmark", "problem", "N"]
    for s in sweeps:
        prefix = "" if one_sweep else f"{s} "
        headers += [f"{prefix}pass@1", f"{prefix}cons@N"] + ([f"{prefix}ungraded"] if apart else [])
    if one_sweep:
        headers += ["majority", "tokens/path"]

    table_rows: list[list[str]] = []
    by_bench: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for b, pid in problems:
        by_bench[b].append((b, pid))
    for b, plist in by_bench.items():
        for _, pid in plist:
            ns = {stats[(s, b, pid)]["n"] for s in sweeps if (s, b, pid) in stats}
            row = [b, pid, "/".join(str(n) for n in sorted(ns))]
            for s in sweeps:
                st = stats.get((s, b, pid))
                row += [_num(st["pass1"]), _num(st["cons"], 0)] if st else ["-", "-"]
                if apart:
                    row.append(str(st["ungraded"]) if st else "-")
            if one_sweep:
                st = stats[(sweeps[0], b, pid)]
                ans = st["majority"]
                if len(ans) > max_answer_chars:
                    ans = ans[: max_answer_chars - 1] + "~"
                row += [ans or "-", _tokens(st["tokens"])]
            table_rows.append(row)
        if len(plist) > 1:  # mean over the benchmark's problems
            row = [b, "mean", ""]
            for s in sweeps:
                sts = [stats[(s, b, pid)] for _, pid in plist if (s, b, pid) in stats]
                row += [_num(_nanmean([x["pass1"] for x in sts])), _num(_nanmean([x["cons"] for x in sts]))]
                if apart:
                    row.append(str(sum(x["ungraded"] for x in sts)))
            if one_sweep:
                sts = [stats[(sweeps[0], b, pid)] for _, pid in plist]
                row += ["", _tokens(sum(x["tokens"] for x in sts) / len(sts))]
            table_rows.append(row)
    return _fmt_table(headers, table_rows, left=2)


# --------------------------------------------------------------------------------------------
# sweep table


def _cons_key(metrics: Mapping[str, Any]) -> str | None:
    """The majority-vote key: "cons@N" or "cons@32"; not the shortest-majority variant."""
    keys = [k for k in metrics if k.startswith("cons@") and "short" not in k]
    if "cons@N" in keys:
        return "cons@N"
    return keys[0] if keys else None


def _pass_at_k(metrics: Mapping[str, Any]) -> dict[int, float]:
    pk = metrics.get("pass@k") or {}
    out = {}
    for k, v in pk.items():
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def _entries(summary: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    out = []
    for sp in sorted(summary, key=_sort_key):
        per_bench = summary[sp]
        if str(sp).startswith("_") or not isinstance(per_bench, Mapping):  # "_incomplete": about the run
            continue
        for bench in sorted(per_bench):
            m = per_bench[bench]
            if isinstance(m, Mapping):
                out.append((str(sp), str(bench), m))
    return out


def sweep_table(summary: Mapping[str, Any]) -> str:
    """One row per sweep point x benchmark: Pass@1, Cons@N, largest pass@k, tokens per path."""
    entries = _entries(summary)
    if not entries:
        return "(empty summary)"
    cons_label = "cons@N"
    keys = {_cons_key(m) for _, _, m in entries} - {None}
    if len(keys) == 1:
        cons_label = keys.pop()
    kmax = max((max(_pass_at_k(m), default=0) for _, _, m in entries), default=0)
    headers = ["sweep_point", "benchmark", "pass@1", cons_label]
    if kmax > 1:
        headers.append(f"pass@{kmax}")
    headers += ["sampled/path", "injected/path", "total/path"]
    apart = any(m.get("ungraded") for _, _, m in entries)
    if apart:
        headers.append("ungraded")
    rows = []
    for sp, bench, m in entries:
        ck = _cons_key(m)
        row = [sp, bench, _num(m.get("pass@1")), _num(m.get(ck) if ck else None)]
        if kmax > 1:
            row.append(_num(_pass_at_k(m).get(kmax)))
        tok = m.get("tokens_per_path") or {}
        sampled, injected = tok.get("sampled"), tok.get("injected")
        total = tok.get("total")
        if total is None and sampled is not None and injected is not None:
            total = sampled + injected
        row += [_tokens(sampled), _tokens(injected), _tokens(total)]
        if apart:
            row.append(str(m.get("ungraded") or 0))
        rows.append(row)
    return _fmt_table(headers, rows, left=2)


def message_line(messages: Any) -> str:
    """One line about the delivered peer summaries (count, rounds, mean similarity)."""
    rows = _rows(messages, ("round", "similarity"))
    if not rows:
        return "messages: none delivered"
    sims = [float(r["similarity"]) for r in rows if r.get("similarity") is not None]
    rounds = {r.get("round") for r in rows if r.get("round") is not None}
    text = f"messages: {len(rows)} delivered"
    if rounds:
        text += f" over {len(rounds)} round(s)"
    if sims:
        text += f", mean similarity {sum(sims) / len(sims):.3f}"
    return text
