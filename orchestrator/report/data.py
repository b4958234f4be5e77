"""What a report shows, as data: a results directory loaded (`load_run` -> `Run`), and its tables
built cell by cell (`Table` of `Cell`s; `build_tables` makes every table of the report).

Every metric cell carries `src`, the key path of its value in summary.json (e.g. `["leap",
"aime24", "pass@1"]`), so the HTML and Markdown writers render the same tables and a test can
check each displayed number against summary.json. Numbers come from summary.json only; when a
run's summary.json predates a metric (say, round transitions), the report computes the missing
keys with the code that writes summary.json (`orchestrator.core.metrics.summarize`), fills only
those keys, and says so (`Run.derived`).

The tables are rendered by `document` (report.html, report.md) and by `text` (the fixed-width
tables a run prints at its end and `python -m orchestrator.report` prints).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow.parquet as pq

from ..config import point_name, sweep_points, to_config
from ..core import grading, metrics
from .costs import METHOD_COLUMNS

log = logging.getLogger(__name__)

# paths.parquet columns the report reads for its numbers (text and spans only for a transcript)
ROW_COLUMNS = (
    "sweep_point", "benchmark", "problem_id", "path", "gold", "answer", "correct", "correct_compat",
    "finish_reason", "rounds", "sampled_tokens", "injected_tokens", "cached_tokens",
    "uncached_tokens", "summaries", "answer_first_summary", "answer_changed", "round_answers",
    "round_correct", "replica", "node",
) + METHOD_COLUMNS
BASELINE_MODES = metrics.BASELINES


@dataclass
class Run:
    root: Path
    summary: dict  # summary.json plus any keys the report had to compute (see `derived`)
    derived: list[str]  # what was computed here because summary.json lacked it
    settings: dict[str, dict]  # sweep point -> mode, T, top_k, router, ... (metrics.point_settings)
    order: list[str]  # sweep points: baselines first, then the config's sweep order
    benchmarks: list[str]
    config: dict
    run_info: dict
    rows: list[dict]
    messages: list[dict]
    incomplete: dict | None = None  # summary.json's `_incomplete`: groups without a result, and why

    def notices(self, limit: int = 10) -> list[str]:
        """Lines the report must show first: what this run's numbers leave out."""
        if not self.incomplete:
            return []
        groups = self.incomplete.get("groups") or []
        out = [f"Incomplete run: {self.incomplete.get('groups_missing', len(groups))} group(s) have no result, "
               f"so the numbers below leave them out. Rerun the same command to run them."]
        out += [f"{g.get('sweep_point')} | {g.get('problem_id')}: {g.get('reason')}" for g in groups[:limit]]
        if len(groups) > limit:
            out.append(f"... and {len(groups) - limit} more (summary.json, _incomplete)")
        return out

    def metric(self, *keys) -> Any:
        return lookup(self.summary, keys)


def lookup(tree: Any, keys: Sequence) -> Any:
    """`tree[k1][k2]...`, None when any level is missing."""
    for k in keys:
        if not isinstance(tree, dict) or str(k) not in tree:
            return None
        tree = tree[str(k)]
    return tree


def read_rows(path: Path, columns: Sequence[str] | None = None) -> list[dict]:
    """The rows of a parquet file as dicts ([] when there is no file); with `columns`, only those
    of them the file has (paths.parquet also holds the full texts, which a table never needs)."""
    if not path.is_file():
        return []
    if columns is not None:
        names = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in names]
    return pq.read_table(path, columns=columns).to_pylist()


def sort_key(value: Any) -> tuple:
    """Natural-ish order of labels: numbers by value first, then strings."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        log.warning("%s is not valid JSON (%s); ignored", path, exc)
        return {}


def _normalized(tree: dict) -> dict:
    """As summary.json stores it: string keys (pass@k's k, round numbers)."""
    return json.loads(json.dumps(tree, default=str))


# --------------------------------------------------------------------------- settings


def settings_from_config(config: dict) -> dict[str, dict]:
    """Each sweep point's settings from config.json, through the same code the run used."""
    if not config:
        return {}
    try:
        return {n: metrics.point_settings(p) for n, p in sweep_points(to_config(config)).items()}
    except Exception as exc:  # an older or hand-edited config.json: fall back to point names
        log.info("config.json: sweep points not rebuilt (%s); reading settings from point names", exc)
        return {}


def _from_name(name: str, leap: dict) -> dict:
    """Settings from a point label such as `T=2048,router=clustered,top_k=2` over leap.*."""
    out = {k: leap.get(k) for k in metrics.SETTING_KEYS}
    for part in name.split(","):
        key, sep, value = part.partition("=")
        if sep and key in out:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
    if name == "independent":
        out["mode"] = "independent"
    return out


def _point_order(summary: dict, settings: dict[str, dict], config: dict) -> list[str]:
    listed = []
    for entry in config.get("sweep") or []:
        if isinstance(entry, dict):
            listed.append(point_name(entry))
    points = [p for p in listed if p in summary] + sorted(
        (p for p in summary if p not in listed), key=sort_key)

    def rank(p: str) -> int:
        role = metrics.baseline_of((settings.get(p) or {}).get("mode"))
        return BASELINE_MODES.index(role) if role in BASELINE_MODES else len(BASELINE_MODES)

    return sorted(points, key=rank)  # stable: config order within each rank


# --------------------------------------------------------------------------- loading


def load_run(output_dir: str | Path, grade_missing_rounds: bool = True) -> Run:
    root = Path(output_dir)
    recorded = _json(root / "summary.json")
    # keys starting with "_" are about the run, not sweep points (sweep point names cannot start so)
    incomplete = recorded.get("_incomplete")
    recorded = {k: v for k, v in recorded.items() if not k.startswith("_")}
    config = _json(root / "config.json")
    run_info = _json(root / "run_info.json")
    rows = read_rows(root / "paths.parquet", ROW_COLUMNS)
    messages = read_rows(root / "messages.parquet")

    settings = {}
    for point, per_bench in recorded.items():
        for m in per_bench.values() if isinstance(per_bench, dict) else []:
            if isinstance(m, dict) and isinstance(m.get("settings"), dict):
                settings[point] = m["settings"]
    if not settings:
        settings = settings_from_config(config)
    leap = config.get("leap") or {}
    for point in set(recorded) | {r["sweep_point"] for r in rows}:
        settings.setdefault(point, _from_name(point, leap))

    summary, derived, rows = _complete(recorded, rows, settings, grade_missing_rounds)
    benchmarks = sorted({b for per in summary.values() if isinstance(per, dict) for b in per})
    return Run(root=root, summary=summary, derived=derived, settings=settings,
               order=_point_order(summary, settings, config), benchmarks=benchmarks,
               config=config, run_info=run_info, rows=rows, messages=messages, incomplete=incomplete)


def _missing(recorded: dict, rows: list[dict]) -> set[str]:
    """Metric keys some (point, benchmark) of summary.json lacks, or has as None."""
    if not rows:
        return set()
    wanted = ("round_transitions", "per_problem", "settings", "vs_independent", "vs_compute_matched")
    missing = set()
    points = {r["sweep_point"] for r in rows}
    for point in points:
        for m in (recorded.get(point) or {}).values():
            missing |= {k for k in wanted if m.get(k) is None}
    return missing


def _complete(recorded: dict, rows: list[dict], settings: dict,
              grade: bool) -> tuple[dict, list[str], list[dict]]:
    """summary.json with the keys it lacks computed by `metrics.summarize` from the path rows
    (and the rows, graded per round when they were not)."""
    summary = _normalized(recorded)
    missing = _missing(recorded, rows)
    if not missing or not rows:
        return summary, [], rows
    notes = []
    if "round_transitions" in missing and grade and any(
            r.get("summaries") and r.get("round_answers") is None for r in rows):
        rows = grade_rounds(rows)
        notes.append("round answers were graded by the report (paths.parquet has no round_answers)")
    fresh = _normalized(metrics.summarize(rows, points=settings))
    filled: set[str] = set()
    for point, per_bench in fresh.items():
        for bench, m in per_bench.items():
            target = (summary.get(point) or {}).get(bench)
            if target is None:  # only what summary.json reports is shown
                continue
            for key, value in m.items():
                if target.get(key) is None and value is not None:
                    target[key] = value
                    filled.add(key)
    if filled:
        notes.insert(0, "summary.json lacks " + ", ".join(sorted(filled)) + ": computed here by "
                     "orchestrator.core.metrics.summarize from paths.parquet")
    return summary, notes, rows


def grade_rounds(rows: list[dict]) -> list[dict]:
    """Rows with `round_answers` / `round_correct` from their summaries (grading.grade_rounds),
    sharing one verdict cache: the same answer to the same gold is graded once."""
    cache: dict = {}
    out = []
    for r in rows:
        if r.get("round_answers") is None and r.get("summaries"):
            kind = "gpqa" if str(r.get("benchmark", "")).startswith("gpqa") else "math"
            answers, verdicts = grading.grade_rounds(r["summaries"], r.get("gold") or "", kind, cache=cache)
            r = {**r, "round_answers": answers, "round_correct": verdicts}
        out.append(r)
    return out


# --------------------------------------------------------------------------- tables


@dataclass
class Cell:
    text: str
    src: tuple | None = None  # key path into summary.json
    kind: str = "text"  # text | num | delta | head | calc (a number the report computed: no src)


NUMERIC = ("num", "delta", "calc")  # the kinds of cells that hold numbers (right-aligned)


@dataclass
class Table:
    key: str
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    note: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # header groups: (label, span)


def fmt(value: Any, style: str = "frac") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if style == "frac":
        return f"{float(value):.3f}"
    if style == "delta":
        return f"{float(value):+.3f}"
    if style == "tokens":
        return f"{float(value):,.0f}"
    if style == "int":
        return f"{int(value)}"
    if style == "seconds":
        return f"{float(value):,.1f}"
    return str(value)


def num(run: Run, keys: tuple, style: str = "frac") -> Cell:
    value = run.metric(*keys)
    return Cell(fmt(value, style), src=keys if value is not None else None,
                kind="delta" if style == "delta" else "num")


def text(value: Any) -> Cell:
    return Cell("-" if value is None else str(value))


def setting_cell(run: Run, point: str, bench: str, key: str) -> Cell:
    if run.metric(point, bench, "settings", key) is not None:
        value = run.metric(point, bench, "settings", key)
        return Cell(_setting_text(key, value), src=(point, bench, "settings", key))
    return text(_setting_text(key, (run.settings.get(point) or {}).get(key)))


def _setting_text(key: str, value: Any) -> str | None:
    if key == "top_k" and value == -1:
        return "all"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return None if value is None else str(value)


def is_leap(run: Run, point: str) -> bool:
    return metrics.is_leap_mode((run.settings.get(point) or {}).get("mode"))


def main_table(run: Run) -> Table:
    """The paper's shape: a row per configuration, per benchmark Pass@1 and Cons@N with the
    deltas against the independent and compute-matched baselines."""
    has_ind = any(run.metric(p, b, "vs_independent") for p in run.order for b in run.benchmarks)
    has_cm = any(run.metric(p, b, "vs_compute_matched") for p in run.order for b in run.benchmarks)
    cons = _cons_label(run)
    per_metric = ["", "Δ indep."] if has_ind else [""]
    if has_cm:
        per_metric.append("Δ matched")
    headers = ["configuration", "mode", "T", "top-k", "router", "N"]
    groups = [("", len(headers))]
    apart = has_ungraded(run)
    for b in run.benchmarks:
        for metric_label in ("Pass@1", cons):
            headers += [f"{metric_label}{' ' + s if s else ''}" for s in per_metric]
        if apart:
            headers.append("ungraded")
        groups.append((b, 2 * len(per_metric) + apart))
    rows = []
    for p in run.order:
        bench0 = next((b for b in run.benchmarks if run.metric(p, b)), run.benchmarks[0])
        row = [Cell(p, kind="head")]
        talks = is_leap(run, p)  # top-k and router mean nothing to the baselines
        row += [setting_cell(run, p, bench0, k) if talks or k in ("mode", "T") else text(None)
                for k in ("mode", "T", "top_k", "router")]
        row.append(num(run, (p, bench0, "paths_per_problem"), "int"))
        for b in run.benchmarks:
            for key in ("pass@1", "cons@N"):
                row.append(num(run, (p, b, key)))
                if has_ind:
                    row.append(num(run, (p, b, "vs_independent", key), "delta"))
                if has_cm:
                    row.append(num(run, (p, b, "vs_compute_matched", key), "delta"))
            if apart:
                row.append(ungraded_cell(run, (p, b)))
        rows.append(row)
    note = ("Pass@1: mean over problems of the fraction of correct paths; Cons@N: majority vote "
            "over a problem's N paths. Δ indep.: minus the independent-sampling point; Δ matched: "
            "minus the compute-matched point that matches this LeaP point's token usage.")
    if apart:
        note += (" Ungraded: paths no check could decide (a check timed out, or its grading worker died), "
                 "left out of Pass@1 and Cons@N, never counted wrong.")
    return Table("main", "Accuracy by configuration", headers, rows, note, groups)


def has_ungraded(run: Run) -> bool:
    """Whether summary.json counts an ungraded path anywhere (the key is absent when none)."""
    return any(run.metric(p, b, "ungraded") for p in run.order for b in run.benchmarks)


def ungraded_cell(run: Run, keys: tuple) -> Cell:
    """The count of ungraded paths at `keys` (absent in summary.json means none: 0)."""
    value = run.metric(*keys, "ungraded")
    if value is None:  # not a number summary.json holds: a plain cell
        return Cell("0")
    return num(run, (*keys, "ungraded"), "int")


def ungraded_note(run: Run) -> str:
    """One sentence for the top of the report and the console; empty when everything was graded."""
    paths = sum(run.metric(p, b, "ungraded") or 0 for p in run.order for b in run.benchmarks)
    if not paths:
        return ""
    votes = sum(run.metric(p, b, "ungraded_votes") or 0 for p in run.order for b in run.benchmarks)
    text = (f"{paths} path(s) could not be graded (a check timed out, or its grading worker died): they are "
            f"left out of Pass@1, pass@k and Cons@N, not counted wrong")
    if votes:
        text += f"; {votes} problem vote(s) could not be graded and are left out of Cons@N"
    return text + ". See the `ungraded` columns."


def _cons_label(run: Run) -> str:
    ns = {run.metric(p, b, "paths_per_problem") for p in run.order for b in run.benchmarks} - {None}
    return f"Cons@{ns.pop()}" if len(ns) == 1 else "Cons@N"


def _point_bench(run: Run):
    for p in run.order:
        for b in run.benchmarks:
            if run.metric(p, b) is not None:
                yield p, b


def _label(run: Run, p: str, b: str) -> list[Cell]:
    return [Cell(p, kind="head")] + ([Cell(b)] if len(run.benchmarks) > 1 else [])


def _label_headers(run: Run, first: str = "configuration") -> list[str]:
    return [first] + (["benchmark"] if len(run.benchmarks) > 1 else [])


def efficiency_table(run: Run) -> Table:
    headers = _label_headers(run) + ["sampled/path", "injected/path", "total/path", "rounds",
                                     "cache hit", "Pass@1 (compat)", "Cons@N shortest"]
    rows = []
    for p, b in _point_bench(run):
        rows.append(_label(run, p, b) + [
            num(run, (p, b, "tokens_per_path", "sampled"), "tokens"),
            num(run, (p, b, "tokens_per_path", "injected"), "tokens"),
            num(run, (p, b, "tokens_per_path", "total"), "tokens"),
            num(run, (p, b, "rounds_mean")),
            num(run, (p, b, "prefix_cache_hit_rate")),
            num(run, (p, b, "pass@1_compat")),
            num(run, (p, b, "cons@N_shortest")),
        ])
    note = ("Tokens per path: sampled (written by the model) and injected (summary prompts, peer "
            "messages, answer forcing). Cache hit: prompt tokens served from the prefix cache. "
            "Pass@1 (compat): the reference code's lenient scorer.")
    if any(run.metric(p, b, "tokens_per_path", "probe") is not None for p, b in _point_bench(run)):
        note += " Total also counts the answer probes' tokens (sampled and sent) of the points that probed."
    return Table("tokens", "Tokens and efficiency", headers, rows, note)


TRANSITION_HEADERS = (("paths", "paths"), ("answered", "with an answer"), ("changed", "changed"),
                      ("wrong_to_right", "wrong→right"), ("right_to_wrong", "right→wrong"),
                      ("wrong_to_wrong", "wrong→other wrong"), ("right_to_right", "right→other right"),
                      ("no_answer_to_right", "none→right"), ("no_answer_to_wrong", "none→wrong"))


def transitions_table(run: Run) -> Table:
    columns = list(TRANSITION_HEADERS)
    if any(run.metric(p, b, "round_transitions", r, "ungraded")
           for p, b in _point_bench(run) for r in (run.metric(p, b, "round_transitions") or {})):
        columns.append(("ungraded", "ungraded"))
    headers = _label_headers(run) + ["round"] + [h for _, h in columns]
    rows = []
    for p, b in _point_bench(run):
        table = run.metric(p, b, "round_transitions") or {}
        for r in sorted(table, key=sort_key):
            rows.append(_label(run, p, b) + [Cell(str(r))] + [
                ungraded_cell(run, (p, b, "round_transitions", r)) if k == "ungraded"
                else num(run, (p, b, "round_transitions", r, k), "int") for k, _ in columns])
    note = ("After each communication round: of the paths that wrote a summary in that round (its "
            "answer written before reading peers), how many changed their answer by the next "
            "checkpoint (the next summary, or the final answer after the last one), split by the "
            "verdicts before and after; none→right / none→wrong: the summary had no answer and the "
            "next checkpoint has one (not counted as changed).")
    if len(columns) > len(TRANSITION_HEADERS):
        note += " Ungraded: a verdict before or after was undecided, so the change is not sorted."
    return Table("transitions", "Answer changes after peer messages", headers, rows, note)


def pass_at_k_table(run: Run) -> Table:
    ks = sorted({int(k) for p, b in _point_bench(run) for k in (run.metric(p, b, "pass@k") or {})})
    headers = _label_headers(run) + [f"pass@{k}" for k in ks]
    rows = [_label(run, p, b) + [num(run, (p, b, "pass@k", str(k))) for k in ks]
            for p, b in _point_bench(run)]
    return Table("pass_at_k", "pass@k (unbiased estimator)", headers, rows)


def problem_table(run: Run) -> Table:
    """Pass@1 and Cons@N per problem (rows) and configuration (column pairs)."""
    headers = ["benchmark", "problem"]
    groups = [("", 2)]
    apart = has_ungraded(run)
    for p in run.order:
        headers += ["Pass@1", "Cons@N", "majority"] + (["ungraded"] if apart else [])
        groups.append((p, 3 + apart))
    rows = []
    for b in run.benchmarks:
        pids = sorted({pid for p in run.order for pid in (run.metric(p, b, "per_problem") or {})},
                      key=sort_key)
        for pid in pids:
            row = [Cell(b), Cell(pid, kind="head")]
            for p in run.order:
                row += [num(run, (p, b, "per_problem", pid, "pass@1")),
                        num(run, (p, b, "per_problem", pid, "cons@N"))]
                answer = run.metric(p, b, "per_problem", pid, "majority_answer")
                row.append(Cell("-" if answer is None else str(answer),
                                src=(p, b, "per_problem", pid, "majority_answer") if answer is not None else None))
                if apart:
                    row.append(ungraded_cell(run, (p, b, "per_problem", pid)) if run.metric(p, b, "per_problem", pid)
                               else text(None))
            rows.append(row)
    return Table("problems", "Per problem", headers, rows, groups=groups)


# --------------------------------------------------------------------------- run facts

# headline facts from run_info.json: (label, candidate key paths, unit)
HEADLINE = (
    ("wall time", (("wall_s",),), "s"),
    ("model preparation", (("model_prepare_s",),), "s"),
    ("replica start-up", (("replicas_start_s",),), "s"),
    ("generation time", (("generation_s",),), "s"),
    ("grading time", (("grading_s",),), "s"),
    ("grading workers restarted", (("grading_restarts",),), ""),
    ("paths left ungraded", (("ungraded_paths",),), ""),
    ("tokens/s (sampled)", (("tokens_per_s",), ("sampled_tokens_per_s",)), ""),
    ("prefix-cache hit rate", (("prefix_cache_hit_rate",), ("cache_hit_rate",)), ""),
    ("groups run", (("groups_run",),), ""),
    ("groups already complete (resume)", (("groups_skipped",),), ""),
    ("groups resumed from a checkpoint", (("groups_resumed",), ("resumed_groups",), ("checkpoint", "resumed")), ""),
    ("failovers (paths moved)", (("failovers",), ("coordinator", "moved_paths")), ""),
    ("replica deaths", (("replica_deaths",), ("coordinator", "replica_deaths")), ""),
    ("coordinator restarts", (("coordinator_restarts",),), ""),
)


def _show(value: Any, unit: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"
    elif isinstance(value, int):
        text = f"{value:,}" if abs(value) >= 10000 else str(value)
    elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        text = ", ".join(str(v) for v in value) if value else "none"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def facts_table(run: Run) -> Table:
    """Model, replicas and nodes, times, throughput, cache, failovers and resumes, with the file
    each came from; run_info.json keys the headline does not name are in `run_info_table`."""
    cfg = run.config
    rows: list[list[Cell]] = []

    def add(label: str, value: Any, source: str, unit: str = "") -> None:
        if value is None or value == "":
            return
        rows.append([Cell(label, kind="head"), Cell(_show(value, unit)), Cell(source)])

    model = cfg.get("model") or {}
    engine = cfg.get("engine") or {}
    ds = cfg.get("dataset") or {}
    rep = cfg.get("replicas") or {}
    add("experiment", cfg.get("experiment"), "config.json")
    add("model", model.get("name") or model.get("path"), "config.json")
    add("engine", engine.get("kind"), "config.json")
    add("dataset", " ".join(str(x) for x in (ds.get("name"), ds.get("path") or "") if x), "config.json")
    add("dataset.limit", ds.get("limit"), "config.json")
    if rep:
        add("replicas", f"{rep.get('count')} x ({rep.get('gpus_per_replica')} GPU, "
            f"{rep.get('cpus_per_replica')} CPU)", "config.json")
    nodes = sorted({str(r.get("node")) for r in run.rows if r.get("node")})
    if nodes:
        add("nodes that served paths", f"{len(nodes)}: " + ", ".join(n[:12] for n in nodes[:8]), "paths.parquet")
    for label, candidates, unit in HEADLINE:
        for keys in candidates:
            value = lookup(run.run_info, keys)
            if value is not None:
                add(label, len(value) if isinstance(value, list) else value, "run_info.json", unit)
                break
        else:
            if label.startswith("tokens/s") and run.run_info.get("generation_s"):
                sampled = sum(int(r.get("sampled_tokens") or 0) for r in run.rows)
                if sampled:
                    add("tokens/s (sampled tokens / generation time)",
                        sampled / run.run_info["generation_s"], "paths.parquet, run_info.json")
            elif label.startswith("prefix-cache"):
                add("prefix-cache hit rate (all paths)", metrics.cache_hit_rate(run.rows), "paths.parquet")
            elif label == "groups resumed from a checkpoint":
                resumed = {(r["sweep_point"], r["problem_id"]) for r in run.rows
                           if r.get("resumed_from_round") is not None}
                if resumed:
                    add(label, len(resumed), "paths.parquet")
    add("paths", len(run.rows) or None, "paths.parquet")
    add("peer messages delivered", len(run.messages) or None, "messages.parquet")
    return Table("facts", "Run", ["fact", "value", "from"], rows)


def replica_table(run: Run) -> Table:
    """One row per replica: run_info.json's `replicas` (static facts) beside `replica_stats`."""
    infos = run.run_info.get("replicas") if _records(run.run_info.get("replicas")) else []
    stats = run.run_info.get("replica_stats") if _records(run.run_info.get("replica_stats")) else []
    columns = ["index", "node", "device", "gpu_names", "capacity", "max_model_len",
               "attention_backend", "startup_s", "requests", "new_tokens", "prompt_tokens",
               "cached_tokens", "busy_s", "occupancy"]
    rows = []
    for i in range(max(len(infos), len(stats))):
        merged = {**(stats[i] if i < len(stats) else {}), **(infos[i] if i < len(infos) else {})}
        phases = merged.get("startup")
        if _records(phases):
            merged["startup_s"] = sum(float(p.get("seconds") or 0) for p in phases)
        if merged.get("node"):
            merged["node"] = str(merged["node"])[:12]
        rows.append([Cell(_show(merged.get(c)) if merged.get(c) is not None else "-") for c in columns])
    keep = [j for j, c in enumerate(columns) if any(r[j].text != "-" for r in rows)]
    return Table("replicas", "Replicas", [columns[j] for j in keep], [[r[j] for j in keep] for r in rows],
                 "From run_info.json: each replica's engine facts and its counters over the run.")


def run_info_table(run: Run) -> Table:
    """Every other run_info.json entry, flattened (`coordinator.barrier_ms_mean`, ...)."""
    shown = {".".join(keys) for _, candidates, _ in HEADLINE for keys in candidates}
    tables = {"replicas", "replica_stats"}  # see replica_table
    rows = [[Cell(k, kind="head"), Cell(_show(v))] for k, v in _flatten(run.run_info)
            if k not in shown and k not in tables]
    return Table("run_info", "All of run_info.json", ["key", "value"], rows)


# --------------------------------------------------------------------------- plan vs run

# the rows of "Plan vs run": (label, run_info.json's predicted key, how the measured figure is found, style)
PLAN_ROWS = (
    ("generation time (s)", "generation_s", "generation_s", "seconds"),
    ("wall time (s)", "wall_s", "wall_s", "seconds"),
    ("sampled tokens", "sampled_tokens", "sampled_tokens", "tokens"),
    ("injected tokens", "injected_tokens", "injected_tokens", "tokens"),
    ("prefix-cache hit rate", "cache_hit_rate", "cache_hit_rate", "frac"),
)


def _measured(run: Run, key: str) -> Any:
    """The run's own figure beside a predicted one: run_info.json's times, the tokens and cache
    hit rate of paths.parquet."""
    if key in ("generation_s", "wall_s"):
        return run.run_info.get(key)
    if key == "cache_hit_rate":
        return metrics.cache_hit_rate(run.rows)
    return sum(int(r.get(key) or 0) for r in run.rows) if run.rows else None


def plan_error(predicted: Any, measured: Any, style: str) -> str:
    """How far the plan was off: (predicted - measured) / measured in %, or for a rate the
    difference in percentage points; "-" when either is missing (or the measure is 0)."""
    if not isinstance(predicted, (int, float)) or not isinstance(measured, (int, float)):
        return "-"
    if style == "frac":
        return f"{100 * (predicted - measured):+.1f} pt"
    if not measured:
        return "-"
    return f"{100 * (predicted - measured) / measured:+.1f}%"


def plan_table(run: Run) -> Table:
    """What the run's plan predicted (run_info.json's `predicted`, written before the run started)
    against what the run measured, with the error, and beside them the plan made again with the
    run's own path lengths (`replanned`) when there is one; no rows when the run made no plan,
    and a note only when its plan failed."""
    predicted = run.run_info.get("predicted")
    again = run.run_info.get("replanned")
    again = again if isinstance(again, dict) and not again.get("error") else None
    headers = ["figure", "predicted", "measured", "error"] + (["run's lengths", "error"] if again else [])
    if not isinstance(predicted, dict):
        return Table("plan", "Plan vs run", headers, [])
    if predicted.get("error"):
        return Table("plan", "Plan vs run", headers, [],
                     f"The run's plan failed ({predicted['error']}): nothing to compare.")
    rows = []
    for label, key, measured_key, style in PLAN_ROWS:
        value, measured = predicted.get(key), _measured(run, measured_key)
        if value is None:
            continue
        row = [Cell(label, kind="head"), Cell(fmt(value, style), kind="num"),
               Cell(fmt(measured, style), kind="num"), Cell(plan_error(value, measured, style), kind="num")]
        if again:
            row += [Cell(fmt(again.get(key), style), kind="num"),
                    Cell(plan_error(again.get(key), measured, style), kind="num")]
        rows.append(row)
    note = (f"Predicted before the run by the plan ({predicted.get('profile') or 'profile not named'}), "
            f"measured by the run. Error: (predicted - measured) / measured; for the hit rate, the "
            f"difference in percentage points.")
    if again:
        note += (f" Run's lengths: the same plan made again after the run with the path lengths it "
                 f"sampled ({again.get('paths')} paths) instead of the budget's, an upper bound where paths "
                 f"stop early; what is left of its error is the time model's.")
    if predicted.get("bound"):
        note += f" Bound: {predicted['bound']}."
    return Table("plan", "Plan vs run", headers, rows, note)


def build_tables(run: Run) -> dict[str, Table]:
    """Every table of the report, by key (the key is also each `Table.key`'s section)."""
    return {
        "facts": facts_table(run),
        "plan": plan_table(run),
        "replicas": replica_table(run),
        "run_info": run_info_table(run),
        "main": main_table(run),
        "tokens": efficiency_table(run),
        "transitions": transitions_table(run),
        "pass_at_k": pass_at_k_table(run),
        "problems": problem_table(run),
    }


__all__ = [
    "Cell",
    "NUMERIC",
    "Run",
    "Table",
    "build_tables",
    "efficiency_table",
    "facts_table",
    "fmt",
    "has_ungraded",
    "load_run",
    "lookup",
    "main_table",
    "pass_at_k_table",
    "plan_error",
    "plan_table",
    "problem_table",
    "read_rows",
    "replica_table",
    "run_info_table",
    "sort_key",
    "transitions_table",
    "ungraded_cell",
    "ungraded_note",
]
