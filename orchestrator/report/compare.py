"""The method comparison: every method and baseline point of a run set against what it cost.

- `methods` table: one row per sweep point (and benchmark): its method, its vote, tokens per path
  (sampled + injected + probe tokens, from the rows: `costs`), the engines' generation time for the
  point (run_info.json `points.<point>.engine_s`, "not recorded" otherwise), Pass@1 and Cons@N as
  the main table shows them (from summary.json), and whether the point is on the Pareto front of
  accuracy against tokens (and against time).
- `stopping` table: one row per point that stops paths or problems early (consensus, confidence):
  its tokens per path against those of the point with the same communication and no early
  stopping (else the run's independent baseline; the table names which), the paths stopped by
  each `stop_reason`, the rounds they stopped at, the paths whose answer changed (summary.json's
  `answer_changed_frac`) and the problems whose vote differs from the reference point's.

Both tables are empty for a run whose rows lack the method columns (`costs.has_method_columns`):
such a run reports exactly as before; the methods table (and its plot) also for a single point.
Cells computed here from the rows carry kind "calc" (a number with no summary.json key); Pass@1,
Cons@N, answer_changed_frac and tokens per path where summary.json holds the same figure keep
their keys.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import point_name
from ..core.grading import canonical_answer
from ..core.methods import COMMUNICATIONS, STOPPING_RULES, find_method
from ..core.metrics import baseline_of
from . import data as D
from .costs import PointCost, engine_seconds, has_method_columns, point_costs, round_spread
from .data import Cell, Run, Table

# modes of the methods comparison that a reading version may not register: (communication, stopping)
UNREGISTERED = {"pool": ("pool", "rounds"), "consensus": ("none", "consensus"),
                "deepconf": ("none", "confidence")}
MODE_NAMES = {"independent": "independent sampling", "compute_matched": "compute-matched",
              "leap": "LeaP", "leap_t": "LeaP-T", "pool": "shared pool",
              "consensus": "consensus stopping (ESC)", "deepconf": "DeepConf online"}
EARLY_STOPS = ("consensus", "confidence")  # stopping rules that end paths or problems early
ACCURACY = (("pass@1", "Pass@1"), ("cons@N", "Cons@N"))
# settings that must agree for a point to be another's "same communication without stopping"
SAME_SHAPE = ("paths", "T", "max_rounds")
SAME_TALK = ("top_k", "router", "similarity", "comm_rounds")
NOT_RECORDED = "not recorded"


def calc(value: Any, style: str = "tokens") -> Cell:
    """A number computed by the report (from the rows or run_info.json), not read from summary.json."""
    return Cell(D.fmt(value, style), kind="calc")


def tokens_cell(run: Run, keys: tuple, value: float) -> Cell:
    """Tokens per path as counted from the rows; with summary.json's key where summary.json holds
    the same figure (a summary written before probes were counted holds sampled + injected only)."""
    recorded = run.metric(*keys)
    if isinstance(recorded, (int, float)) and abs(float(recorded) - value) < 0.5:
        return D.num(run, keys, "tokens")
    return calc(value)


def seconds_cell(seconds: float | None) -> Cell:
    """Generation time: three significant digits below 100 s (a fake engine's points take
    milliseconds), whole seconds above; `not recorded` without a figure."""
    if seconds is None:
        return Cell(NOT_RECORDED)
    return Cell(f"{seconds:.3g}" if seconds < 100 else f"{seconds:,.0f}", kind="calc")


# --------------------------------------------------------------------------- what a point is


def knobs(run: Run, point: str) -> dict:
    """The point's leap settings: config.json's `leap`, under the settings the report has for it
    (summary.json's, or rebuilt from config.json or the point's name), under its own sweep entry
    (what the user wrote for it: a name-derived setting may miss it)."""
    config = run.config or {}
    entry = next((e for e in config.get("sweep") or [] if isinstance(e, dict) and point_name(e) == point), {})
    settings = {k: v for k, v in (run.settings.get(point) or {}).items() if v is not None}
    return {**(config.get("leap") or {}), **settings, **entry}


def _registered(registry, item) -> str | None:
    return next((n for n in registry.names() if registry.find(n) is item), None)


def parts(mode: Any) -> tuple[str | None, str | None]:
    """(communication, stopping rule) that `mode` names by default."""
    found = find_method(mode)
    if found is not None:
        return _registered(COMMUNICATIONS, found.communication), _registered(STOPPING_RULES, found.stopping)
    return UNREGISTERED.get(str(mode), (None, None))


def stopping_of(run: Run, point: str) -> str | None:
    """The stopping rule the point ran: `leap.stopping` when set, else its method's own."""
    k = knobs(run, point)
    return k.get("stopping") or parts(k.get("mode"))[1]


def method_label(run: Run, point: str) -> str:
    """`LeaP + consensus stopping`, `DeepConf online, keep 10%`, `compute-matched (matches leap)`."""
    k = knobs(run, point)
    mode = k.get("mode")
    label = MODE_NAMES.get(str(mode), str(mode))
    stop = stopping_of(run, point)
    if stop and stop != parts(mode)[1]:
        label += f" + {stop} stopping"
    if stop == "confidence" and k.get("confidence_keep") is not None:
        label += f", keep {float(k['confidence_keep']):g}%"  # a float in the config: 10.0 -> 10
    if baseline_of(mode) == "compute_matched" and k.get("match_point"):
        label += f" (matches {k['match_point']})"
    return label


def stops_early(run: Run, point: str, cost: PointCost | None) -> bool:
    return stopping_of(run, point) in EARLY_STOPS or bool(cost and cost.stops)


def reference(run: Run, point: str, stopped: set[str]) -> tuple[str | None, str]:
    """(the point `point`'s tokens are compared with, why): the first point, in report order,
    with the same communication and settings that runs its whole round budget (stopping rule
    `rounds`: neither stopped early nor cut to a token budget); else the independent baseline;
    else (None, "")."""
    k = knobs(run, point)
    talk = parts(k.get("mode"))[0]
    keys = SAME_SHAPE + (SAME_TALK if talk not in (None, "none") else ())
    for q in run.order:
        if q == point or q in stopped or stopping_of(run, q) != "rounds":
            continue
        kq = knobs(run, q)
        if parts(kq.get("mode"))[0] == talk and all(kq.get(x) == k.get(x) for x in keys):
            return q, "same communication, no early stop"
    independent = next((q for q in run.order if baseline_of(knobs(run, q).get("mode")) == "independent"), None)
    if independent is not None and independent != point:
        return independent, "independent baseline"
    return None, ""


# --------------------------------------------------------------------------- Pareto front


def pareto_front(entries: Sequence[tuple[Any, float | None, float | None]]) -> set:
    """The keys of (key, cost, accuracy) entries that no other entry beats: none costs at most as
    much and is at least as accurate, and strictly better in one. Entries missing either figure
    are neither on the front nor beat anyone."""
    known = [(k, c, a) for k, c, a in entries if c is not None and a is not None]
    return {k for k, c, a in known
            if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for _, c2, a2 in known)}


def fronts(run: Run, costs: dict[tuple[str, str], PointCost]) -> dict[tuple[str, str, str], set[str]]:
    """{(benchmark, "tokens" | "time", metric): the points on that front}."""
    out = {}
    for b in run.benchmarks:
        points = [p for p in run.order if (p, b) in costs and run.metric(p, b) is not None]
        for axis in ("tokens", "time"):
            for key, _ in ACCURACY:
                out[(b, axis, key)] = pareto_front([
                    (p, costs[(p, b)].total if axis == "tokens" else engine_seconds(run.run_info, p),
                     run.metric(p, b, key)) for p in points])
    return out


def _front_cell(front: dict, b: str, axis: str, p: str) -> Cell:
    on = [label for key, label in ACCURACY if p in front.get((b, axis, key), set())]
    return Cell(", ".join(on) if on else "-")


# --------------------------------------------------------------------------- tables


def _entries(run: Run, costs: dict) -> list[tuple[str, str]]:
    return [(p, b) for p in run.order for b in run.benchmarks if (p, b) in costs and run.metric(p, b) is not None]


def compared(run: Run, costs: dict) -> list[tuple[str, str]]:
    """The (point, benchmark) entries of the comparison: none for a run without the method
    columns, or with a single point (nothing to compare it with)."""
    entries = _entries(run, costs) if has_method_columns(run.rows) else []
    return entries if len({p for p, _ in entries}) > 1 else []


def _vote(run: Run, p: str, b: str, cost: PointCost) -> Cell:
    if run.metric(p, b, "vote") is not None:
        return Cell(str(run.metric(p, b, "vote")), src=(p, b, "vote"))
    return D.text(", ".join(sorted(cost.votes)) or None)


def methods_table(run: Run, costs: dict[tuple[str, str], PointCost] | None = None) -> Table:
    """Accuracy against tokens per path and generation time, a row per point (see the module)."""
    costs = point_costs(run.rows) if costs is None else costs
    headers = D._label_headers(run) + ["method", "vote", "tokens/path"]
    entries = compared(run, costs)
    probes = any(costs[e].probe for e in entries)
    timed = any(engine_seconds(run.run_info, p) is not None for p, _ in entries)
    headers += (["probe/path"] if probes else []) + ["generation s", "Pass@1", "Cons@N", "front (tokens)"]
    headers += ["front (time)"] if timed else []
    front = fronts(run, costs) if entries else {}
    rows = []
    for p, b in entries:
        cost = costs[(p, b)]
        row = D._label(run, p, b) + [Cell(method_label(run, p)), _vote(run, p, b, cost),
                                     tokens_cell(run, (p, b, "tokens_per_path", "total"), cost.total)]
        row += [tokens_cell(run, (p, b, "tokens_per_path", "probe"), cost.probe)] if probes else []
        row += [seconds_cell(engine_seconds(run.run_info, p))]
        row += [D.num(run, (p, b, key)) for key, _ in ACCURACY] + [_front_cell(front, b, "tokens", p)]
        row += [_front_cell(front, b, "time", p)] if timed else []
        rows.append(row)
    note = ("Tokens/path: mean over the point's paths (DeepConf warm-up paths included) of sampled + "
            "injected + answer-probe tokens, from paths.parquet. Generation s: the engines' time on the "
            "point's requests (run_info.json points.<point>.engine_s; 'not recorded' when the run has "
            "none). Pass@1 and Cons@N as in the accuracy table (Cons@N is the point's vote: majority, "
            "or confidence-weighted for DeepConf). Front: the accuracies for which no other point of the "
            "benchmark is at least as accurate for at most as many tokens (seconds), better in one.")
    if len(run.benchmarks) > 1 and timed:
        note += " Generation time is per point, over all its benchmarks."
    return Table("methods", "Methods: accuracy against cost", headers, rows, note)


def _votes_against(run: Run, p: str, ref: str, b: str) -> tuple[str, int, int]:
    """(`changed/compared` problems whose vote answer differs, wrong→right, right→wrong)."""
    mine, theirs = run.metric(p, b, "per_problem") or {}, run.metric(ref, b, "per_problem") or {}
    shared = [pid for pid in mine if pid in theirs]
    if not shared:
        return "-", 0, 0

    def key(answer):
        return None if answer is None else canonical_answer(str(answer))

    changed = sum(key(mine[i].get("majority_answer")) != key(theirs[i].get("majority_answer")) for i in shared)
    gained = sum(theirs[i].get("cons@N") == 0 and mine[i].get("cons@N") == 1 for i in shared)
    lost = sum(theirs[i].get("cons@N") == 1 and mine[i].get("cons@N") == 0 for i in shared)
    return f"{changed}/{len(shared)}", gained, lost


def stopped_text(cost: PointCost) -> str:
    """`4/8 consensus`: the paths each stop_reason stopped, of all the point's paths."""
    if not cost.stopped:
        return f"0/{cost.paths}"
    return ", ".join(f"{n}/{cost.paths} {reason}" for reason, n in sorted(cost.stopped.items()))


def stopping_table(run: Run, costs: dict[tuple[str, str], PointCost] | None = None) -> Table:
    """Tokens saved by early stopping and what it changed, a row per point that stops early."""
    costs = point_costs(run.rows) if costs is None else costs
    entries = _entries(run, costs) if has_method_columns(run.rows) else []
    stopped = {p for p, b in entries if stops_early(run, p, costs[(p, b)])}
    entries = [(p, b) for p, b in entries if p in stopped]
    warm = any(costs[e].warmup for e in entries)
    headers = D._label_headers(run) + ["stopping", "tokens/path", "against", "basis", "its tokens/path",
                                       "saved", "paths stopped"] + (["warm-up"] if warm else [])
    headers += ["at round", "answer changed", "votes changed", "wrong→right", "right→wrong"]
    rows = []
    for p, b in entries:
        cost = costs[(p, b)]
        ref, basis = reference(run, p, stopped)
        theirs = costs.get((ref, b)) if ref is not None else None
        saved = 1 - cost.total / theirs.total if theirs is not None and theirs.total else None
        row = D._label(run, p, b) + [D.text(stopping_of(run, p)),
                                     tokens_cell(run, (p, b, "tokens_per_path", "total"), cost.total), D.text(ref),
                                     D.text(basis or None),
                                     tokens_cell(run, (ref, b, "tokens_per_path", "total"), theirs.total)
                                     if theirs is not None else D.text(None),
                                     Cell("-" if saved is None else f"{100 * saved:+.1f}%", kind="calc"),
                                     Cell(stopped_text(cost))]
        row += [calc(cost.warmup, "int")] if warm else []
        changed, gained, lost = _votes_against(run, p, ref, b) if ref is not None else ("-", None, None)
        row += [Cell(round_spread(cost.stopped_rounds), kind="calc"), D.num(run, (p, b, "answer_changed_frac")),
                Cell(changed, kind="calc"), calc(gained, "int"), calc(lost, "int")]
        rows.append(row)
    note = ("Saved: 1 - tokens/path of the point / tokens/path of the point it is set against (the "
            "same communication and settings without early stopping when the run has one, else the "
            "independent baseline; 'basis' says which); probe and warm-up tokens are counted, so it can "
            "be negative. Paths stopped: by stop_reason, of the point's paths (consensus: the problem "
            "agreed and every live path was answer-forced; low_confidence: DeepConf stopped the path, "
            "left out of the vote). At round: mean (range) of the stopped paths' stopped_at_round. "
            "Answer changed: the share of paths whose final answer differs from their first summary's "
            "(summary.json answer_changed_frac). Votes changed: problems whose vote answer differs from "
            "the other point's; wrong→right and right→wrong count those votes' verdicts. The two points' "
            "paths sample alike until a stop only where the engine takes per-request seeds (vLLM on "
            "CUDA); elsewhere part of a change is sampling.")
    return Table("stopping", "Tokens saved by stopping", headers, rows, note)


def method_tables(run: Run) -> dict[str, Table]:
    """The comparison's tables by key (both without rows for a run without the method columns)."""
    costs = point_costs(run.rows)
    return {"methods": methods_table(run, costs), "stopping": stopping_table(run, costs)}


def report_tables(run: Run) -> dict[str, Table]:
    """Every table of the report: `data.build_tables` and the method comparison's."""
    return {**D.build_tables(run), **method_tables(run)}


__all__ = ["knobs", "method_label", "method_tables", "methods_table", "pareto_front", "reference",
           "report_tables", "stopping_of", "stopping_table"]
