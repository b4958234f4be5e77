"""The method comparison of the report (`report.compare`, `report.costs`) on hand-made rows with
the issue-18 columns (CONTRACT18.md): tokens per path with probes, the Pareto front, generation
time, tokens saved by stopping against the right point, and runs without those columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.core import metrics
from orchestrator.report import console_text, write_report
from orchestrator.report.compare import (method_label, method_tables, pareto_front, reference,
                                         stopping_of)
from orchestrator.report.costs import engine_seconds, path_tokens, point_costs, round_spread
from orchestrator.report.data import load_run
from orchestrator.report.plots import figures

GOLD = {"p1": "7", "p2": "3"}
SWEEP = [
    {"name": "independent", "mode": "independent"},
    {"name": "leap", "mode": "leap"},
    {"name": "leap_consensus", "mode": "leap", "stopping": "consensus"},
    {"name": "consensus", "mode": "consensus"},
    {"name": "deepconf_low", "mode": "deepconf", "confidence_keep": 10.0},
    {"name": "pool", "mode": "pool"},
]


def _row(point: str, pid: str, path: int, answer: str | None, sampled: int, injected: int = 0, **extra) -> dict:
    row = {"sweep_point": point, "benchmark": "synthetic", "problem_id": pid, "path": path, "gold": GOLD[pid],
           "answer": answer, "correct": answer == GOLD[pid], "correct_compat": answer == GOLD[pid],
           "finish_reason": "forced", "rounds": 3, "sampled_tokens": sampled, "injected_tokens": injected,
           "answer_changed": None, "stop_reason": None, "stopped_at_round": None, "probe_tokens": 0,
           "probe_prompt_tokens": 0, "warmup": False, "confidence": None, "vote_weight": 1.0,
           "vote": "majority"}
    row.update(extra)
    return row


def _group(point: str, pid: str, answers, sampled: int, injected: int = 0, **extra) -> list[dict]:
    return [_row(point, pid, i, a, sampled, injected, **extra) for i, a in enumerate(answers)]


def method_rows() -> list[dict]:
    rows = []
    rows += _group("independent", "p1", ["7", "7", "8", "7"], 1000, 10)
    rows += _group("independent", "p2", ["3", "5", "3", "4"], 1000, 10)
    rows += _group("leap", "p1", ["7", "7", "7", "7"], 900, 300, answer_changed=False)
    rows += _group("leap", "p2", ["3", "3", "3", "5"], 900, 300, answer_changed=True)
    # LeaP with consensus stopping: p1 agreed at round 2 (every path answer-forced), p2 ran out
    rows += _group("leap_consensus", "p1", ["7"] * 4, 500, 200, stop_reason="consensus", stopped_at_round=2,
                   answer_changed=False)
    rows += _group("leap_consensus", "p2", ["5", "5", "3", "5"], 900, 300, answer_changed=True)
    # ESC: answer probes on independent paths; p1 agreed at round 1
    rows += _group("consensus", "p1", ["7"] * 4, 300, 20, stop_reason="consensus", stopped_at_round=1,
                   probe_tokens=32, probe_prompt_tokens=16)
    rows += _group("consensus", "p2", ["3", "5", "3", "4"], 1000, 10, probe_tokens=64, probe_prompt_tokens=32)
    # DeepConf: paths 0 and 1 warm up; 2 and 3 stopped for low confidence at round 2, out of the vote
    for pid, answer in (("p1", "7"), ("p2", "3")):
        rows += [_row("deepconf_low", pid, i, answer, 1000, 10, warmup=True, confidence=9.0 + i, vote_weight=9.0 + i,
                      vote="confidence") for i in (0, 1)]
        rows += [_row("deepconf_low", pid, i, None, 400, 0, finish_reason="stopped", stop_reason="low_confidence",
                      stopped_at_round=2, confidence=3.0, vote_weight=0.0, vote="confidence") for i in (2, 3)]
    rows += _group("pool", "p1", ["7", "7", "7", "8"], 950, 275)
    rows += _group("pool", "p2", ["3", "3", "3", "3"], 950, 275)
    return rows


def write_run(root: Path, rows: list[dict], run_info: dict | None = None, sweep=SWEEP) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "paths.parquet")
    summary = metrics.summarize(rows)
    if "deepconf_low" in summary:
        summary["deepconf_low"]["synthetic"]["vote"] = "confidence"
    (root / "summary.json").write_text(json.dumps(summary, default=str))
    config = {"experiment": "methods_unit", "leap": {"mode": "leap", "paths": 4, "T": 96, "max_rounds": 3,
                                                     "top_k": 2, "router": "dispersed", "stopping": None},
              "sweep": sweep}
    (root / "config.json").write_text(json.dumps(config))
    (root / "run_info.json").write_text(json.dumps(run_info or {"wall_s": 3.0}))
    return root


TIMES = {"independent": 10.0, "leap": 12.0, "leap_consensus": 9.0, "consensus": 8.0, "deepconf_low": 7.5}


@pytest.fixture
def run(tmp_path):
    return load_run(write_run(tmp_path / "run", method_rows(),
                              {"wall_s": 3.0, "points": {p: {"engine_s": s} for p, s in TIMES.items()}}))


def _cells(table, point: str) -> dict[str, str]:
    row = next(r for r in table.rows if r[0].text == point)
    return {h: c.text for h, c in zip(table.headers, row)}


# --------------------------------------------------------------------------- pure pieces


def test_pareto_front_keeps_what_nothing_beats():
    entries = [("a", 100, 0.5), ("b", 200, 0.5), ("c", 200, 0.8), ("d", 300, 0.7), ("e", 50, 0.2),
               ("f", 100, 0.5), ("g", None, 1.0), ("h", 10, None)]
    # b loses to a (fewer tokens, same accuracy); d to c; a and f tie and both stay
    assert pareto_front(entries) == {"a", "c", "e", "f"}
    assert pareto_front([]) == set()


def test_path_tokens_count_probes_and_old_rows_count_none():
    row = {"sampled_tokens": 100, "injected_tokens": 20, "probe_tokens": 7, "probe_prompt_tokens": 3}
    assert path_tokens(row) == 130
    assert path_tokens({"sampled_tokens": 100, "injected_tokens": None}) == 100


def test_point_costs_from_rows():
    costs = point_costs(method_rows())
    assert costs[("independent", "synthetic")].total == 1010
    assert costs[("leap_consensus", "synthetic")].total == (4 * 700 + 4 * 1200) / 8
    esc = costs[("consensus", "synthetic")]
    assert (esc.sampled, esc.injected, esc.probe) == (650, 15, 72)
    assert esc.stopped == {"consensus": 4} and esc.stopped_rounds == [1] * 4
    deep = costs[("deepconf_low", "synthetic")]
    assert deep.total == 705 and deep.warmup == 4 and deep.stopped == {"low_confidence": 4}
    assert deep.votes == {"confidence"}
    assert not costs[("pool", "synthetic")].stops


def test_round_spread_and_engine_seconds():
    assert round_spread([]) == "-" and round_spread([2, 2]) == "2.0 (2)" and round_spread([1, 2, 3, 2]) == "2.0 (1-3)"
    info = {"points": {"a": {"engine_s": 4}, "b": {}, "c": {"engine_s": True}}}
    assert engine_seconds(info, "a") == 4.0
    assert engine_seconds(info, "b") is None and engine_seconds(info, "c") is None and engine_seconds({}, "a") is None


def test_methods_are_named_from_config_and_settings(run):
    assert [method_label(run, p) for p in run.order] == [
        "independent sampling", "LeaP", "LeaP + consensus stopping", "consensus stopping (ESC)",
        "DeepConf online, keep 10%", "shared pool"]
    assert [stopping_of(run, p) for p in ("independent", "leap", "leap_consensus", "consensus", "deepconf_low")] \
        == ["rounds", "rounds", "consensus", "consensus", "confidence"]


# --------------------------------------------------------------------------- tables


def test_methods_table_tokens_time_accuracy_and_front(run):
    table = method_tables(run)["methods"]
    assert [r[0].text for r in table.rows] == [e["name"] for e in SWEEP]
    assert table.headers == ["configuration", "method", "vote", "tokens/path", "probe/path", "generation s",
                             "Pass@1", "Cons@N", "front (tokens)", "front (time)"]
    c = {p: _cells(table, p) for p in run.order}
    assert [c[p]["tokens/path"] for p in run.order] == ["1,010", "1,200", "950", "737", "705", "1,225"]
    assert c["consensus"]["probe/path"] == "72" and c["leap"]["probe/path"] == "0"
    assert c["deepconf_low"]["generation s"] == "7.5" and c["pool"]["generation s"] == "not recorded"
    assert c["deepconf_low"]["vote"] == "confidence" and c["leap"]["vote"] == "majority"
    # Pass@1 .625 .875 .625 .75 .5 .875; Cons@N 1 1 .5 1 1 1 (from summary.json)
    assert c["consensus"]["Pass@1"] == "0.750" and c["leap_consensus"]["Cons@N"] == "0.500"
    assert {p: c[p]["front (tokens)"] for p in run.order} == {
        "independent": "-", "leap": "Pass@1", "leap_consensus": "-", "consensus": "Pass@1",
        "deepconf_low": "Pass@1, Cons@N", "pool": "-"}  # pool: more tokens than LeaP, no better
    # time: LeaP 12 s, consensus 8 s, DeepConf 7.5 s; pool has no time, so no place on that front
    assert c["pool"]["front (time)"] == "-" and c["deepconf_low"]["front (time)"] == "Pass@1, Cons@N"
    row = next(r for r in table.rows if r[0].text == "leap")
    assert row[6].src == ("leap", "synthetic", "pass@1") and row[5].kind == "calc" and row[5].src is None
    # tokens counted from the rows name summary.json's key where it holds the same figure (all but
    # the probing point when summary.json leaves probes out of its total)
    assert row[3].src == ("leap", "synthetic", "tokens_per_path", "total")
    for r in table.rows:
        src = r[3].src
        assert src is None or float(r[3].text.replace(",", "")) == pytest.approx(run.metric(*src), abs=0.5)
        assert src is not None or run.metric(r[0].text, "synthetic", "tokens_per_path", "total") != pytest.approx(
            float(r[3].text.replace(",", "")), abs=0.5)


def test_generation_time_not_recorded(tmp_path):
    run = load_run(write_run(tmp_path / "r", method_rows()))
    table = method_tables(run)["methods"]
    assert "front (time)" not in table.headers
    assert {_cells(table, p)["generation s"] for p in run.order} == {"not recorded"}


def test_stopping_table_sets_each_point_against_its_unstopped_twin(run):
    table = method_tables(run)["stopping"]
    assert [r[0].text for r in table.rows] == ["leap_consensus", "consensus", "deepconf_low"]
    lc, esc, deep = (_cells(table, p) for p in ("leap_consensus", "consensus", "deepconf_low"))
    assert (lc["against"], lc["basis"], lc["its tokens/path"]) == ("leap", "same communication, no early stop", "1,200")
    assert lc["saved"] == "+20.8%" and lc["paths stopped"] == "4/8 consensus" and lc["at round"] == "2.0 (2)"
    # p2's vote went from 3 (right, under LeaP) to 5 (wrong)
    assert (lc["votes changed"], lc["wrong→right"], lc["right→wrong"]) == ("1/2", "0", "1")
    assert lc["answer changed"] == "0.500"  # summary.json's answer_changed_frac
    assert (esc["against"], esc["its tokens/path"], esc["saved"]) == ("independent", "1,010", "+27.0%")
    assert esc["basis"] == "same communication, no early stop"  # independent sampling: no communication
    assert (deep["against"], deep["saved"], deep["warm-up"]) == ("independent", "+30.2%", "4")
    assert deep["paths stopped"] == "4/8 low_confidence" and deep["at round"] == "2.0 (2)"
    assert deep["votes changed"] == "0/2"


def test_reference_falls_back_to_the_independent_baseline(tmp_path):
    rows = [r for r in method_rows() if r["sweep_point"] != "leap"]
    run = load_run(write_run(tmp_path / "r", rows, sweep=[e for e in SWEEP if e["name"] != "leap"]))
    assert reference(run, "leap_consensus", {"leap_consensus", "consensus", "deepconf_low"}) == (
        "independent", "independent baseline")
    lc = _cells(method_tables(run)["stopping"], "leap_consensus")
    assert lc["against"] == "independent" and lc["saved"] == "+5.9%"  # 1 - 950 / 1010


def test_a_token_budget_point_is_no_twin(tmp_path):
    """Without an independent point, DeepConf's unstopped twin is not the compute-matched point
    (same communication, but cut to a budget): no reference at all."""
    rows = [dict(r, sweep_point="matched") for r in method_rows() if r["sweep_point"] == "independent"]
    rows += [r for r in method_rows() if r["sweep_point"] == "deepconf_low"]
    sweep = [{"name": "matched", "mode": "compute_matched", "match_point": "deepconf_low"}, SWEEP[4]]
    run = load_run(write_run(tmp_path / "r", rows, sweep=sweep))
    assert stopping_of(run, "matched") == "token_budget"
    assert reference(run, "deepconf_low", {"deepconf_low"}) == (None, "")
    deep = _cells(method_tables(run)["stopping"], "deepconf_low")
    assert (deep["against"], deep["saved"], deep["votes changed"]) == ("-", "-", "-")


def test_a_point_with_other_settings_is_no_twin(tmp_path):
    sweep = [dict(e, T=48) if e["name"] == "leap" else e for e in SWEEP]
    run = load_run(write_run(tmp_path / "r", method_rows(), sweep=sweep))
    assert reference(run, "leap_consensus", set())[0] == "independent"


def test_console_and_documents_show_the_comparison(run):
    text = console_text(run)
    assert "Methods: accuracy against cost" in text and "Tokens saved by stopping" in text
    assert "basis" not in text  # the console leaves the reference's basis to the report's note
    written = write_report(run.root)
    md = Path(written["md"]).read_text()
    assert "<!-- table:methods -->" in md and "<!-- table:stopping -->" in md
    assert "](plots/accuracy_vs_tokens.png)" in md
    png = run.root / "plots" / "accuracy_vs_tokens.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    html = Path(written["html"]).read_text()
    assert 'data-table="methods"' in html and 'data-table="stopping"' in html and 'href="#methods"' in html


def test_a_run_without_stopping_shows_no_stopping_table(tmp_path):
    keep = ("independent", "leap", "pool")
    run = load_run(write_run(tmp_path / "r", [r for r in method_rows() if r["sweep_point"] in keep],
                             sweep=[e for e in SWEEP if e["name"] in keep]))
    tables = method_tables(run)
    assert len(tables["methods"].rows) == 3 and not tables["stopping"].rows
    assert "probe/path" not in tables["methods"].headers
    assert "Tokens saved by stopping" not in console_text(run)


def test_old_runs_report_as_before(tmp_path):
    """Rows without the method columns: no comparison table, figure or section anywhere."""
    old_columns = ("sweep_point", "benchmark", "problem_id", "path", "gold", "answer", "correct",
                   "correct_compat", "finish_reason", "rounds", "sampled_tokens", "injected_tokens")
    rows = [{k: r[k] for k in old_columns} for r in method_rows() if r["sweep_point"] in ("independent", "leap")]
    run = load_run(write_run(tmp_path / "old", rows, sweep=SWEEP[:2]))
    tables = method_tables(run)
    assert not tables["methods"].rows and not tables["stopping"].rows
    assert "methods" not in figures(run)
    assert "Methods" not in console_text(run)
    written = write_report(run.root)
    assert "table:methods" not in Path(written["md"]).read_text()
    assert 'id="methods"' not in Path(written["html"]).read_text()
    assert not (run.root / "plots" / "accuracy_vs_tokens.png").exists()


def test_a_single_point_has_nothing_to_compare_but_its_stops(tmp_path):
    rows = [r for r in method_rows() if r["sweep_point"] == "deepconf_low"]
    run = load_run(write_run(tmp_path / "one", rows, sweep=[SWEEP[4]]))
    tables = method_tables(run)
    assert not tables["methods"].rows and "methods" not in figures(run)
    deep = _cells(tables["stopping"], "deepconf_low")
    assert (deep["against"], deep["paths stopped"], deep["warm-up"]) == ("-", "4/8 low_confidence", "4")


def test_two_benchmarks_have_their_own_fronts(tmp_path):
    rows = method_rows()
    other = [dict(r, benchmark="other") for r in rows if r["sweep_point"] in ("independent", "pool")]
    for r in other:  # on "other" the pool is right everywhere: on that benchmark's front
        if r["sweep_point"] == "pool":
            r.update(answer=r["gold"], correct=True, correct_compat=True)
    run = load_run(write_run(tmp_path / "two", rows + other))
    table = method_tables(run)["methods"]
    assert table.headers[:2] == ["configuration", "benchmark"]
    fronts = {(r[0].text, r[1].text): r[table.headers.index("front (tokens)")].text for r in table.rows}
    # Pass@1 1.0 against independent's 0.625; both vote right everywhere, so independent (fewer
    # tokens) alone holds the Cons@N front there
    assert fronts[("pool", "synthetic")] == "-" and fronts[("pool", "other")] == "Pass@1"
    assert fronts[("independent", "other")] == "Pass@1, Cons@N"
    assert figures(run)["methods"].png.startswith(b"\x89PNG")
