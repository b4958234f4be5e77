"""The report of the methods experiment on rows the round state machine wrote: the points of
`+experiment=methods_demo` run in-process on the fake replica (the core's methods, the fake
engine's confidences and probes), then reported. The rows' own token counts must agree with
summary.json's, each early-stopping point must be set against its unstopped twin, and the stop
counts must be the rows'."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from orchestrator.config import validate
from orchestrator.driver.phases import matched_items, split_phases
from orchestrator.core import metrics
from orchestrator.core.types import Problem
from orchestrator.engines.fake import FakeReplica
from orchestrator.report import console_text, write_report
from orchestrator.report.compare import method_tables
from orchestrator.report.data import load_run
from tests.conftest import compose
from tests.unit.test_report_document import _cheap_grade, run_jobs

PROBLEMS = [Problem(id=f"q{i}", benchmark="synthetic", question=f"What is {i} + 2?", gold=str(i + 2))
            for i in range(2)]
TWINS = {"leap_consensus": "leap", "consensus": "independent", "deepconf_low": "independent",
         "deepconf_high": "independent"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    cfg = compose(["+experiment=methods_demo", "engine=fake"])
    points = validate(cfg)
    replica = FakeReplica(0, engine={"think_end_prob": 0.1, "run_seed": 5, "max_model_len": 8192})

    async def go():
        first, later = split_phases(points, [(pt, pb) for pt in points for pb in PROBLEMS])
        out = await run_jobs(replica, [(name, points[name], pb) for name, pb, _ in first])
        matched = matched_items([r for rows, _ in out for r in rows], points, later)  # as the driver does
        out += await run_jobs(replica, [(name, replace(points[name], **b), pb) for name, pb, b in matched],
                              start=False)
        return out, await replica.stats()

    groups, stats = asyncio.run(go())
    rows = [_cheap_grade(r) for rows, _ in groups for r in rows]
    messages = [m for _, msgs in groups for m in msgs]
    pq.write_table(pa.Table.from_pylist(rows), root / "paths.parquet")
    pq.write_table(pa.Table.from_pylist(messages), root / "messages.parquet")
    summary = metrics.summarize(rows, points=points)
    (root / "summary.json").write_text(json.dumps(summary, default=str))
    (root / "config.json").write_text(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg))))
    busy = stats.get("busy_by_point") or {}
    (root / "run_info.json").write_text(json.dumps({"points": {p: {"engine_s": s} for p, s in busy.items()}}))
    return load_run(root)


def test_every_point_is_compared_and_tokens_agree_with_summary_json(run):
    table = method_tables(run)["methods"]
    assert [r[0].text for r in table.rows] == run.order and len(run.order) == 8
    col = table.headers.index("tokens/path")
    for row in table.rows:  # counted from the rows, and equal to summary.json's total (probes in)
        assert row[col].src == (row[0].text, "synthetic", "tokens_per_path", "total"), row[0].text
    probes = {r[0].text: r[table.headers.index("probe/path")].text for r in table.rows}
    assert probes["consensus"] != "0" and probes["leap"] == "0"  # only ESC probes
    assert all(r[table.headers.index("generation s")].text != "not recorded" for r in table.rows)


def test_each_early_stop_is_set_against_its_twin_and_counts_the_rows_stops(run):
    table = method_tables(run)["stopping"]
    got = {r[0].text: {h: c.text for h, c in zip(table.headers, r)} for r in table.rows}
    assert {p: got[p]["against"] for p in got} == TWINS
    assert {got[p]["basis"] for p in got} == {"same communication, no early stop"}
    for point, cells in got.items():
        stops = Counter(r["stop_reason"] for r in run.rows if r["sweep_point"] == point and r["stop_reason"])
        paths = sum(r["sweep_point"] == point for r in run.rows)
        shown = ", ".join(f"{n}/{paths} {k}" for k, n in sorted(stops.items())) or f"0/{paths}"
        assert cells["paths stopped"] == shown
    assert got["deepconf_low"]["warm-up"] == str(2 * len(PROBLEMS))  # confidence_warmup 2 per problem
    assert "low_confidence" in got["deepconf_low"]["paths stopped"]  # the fake engine's low paths


def test_the_run_reports_with_the_comparison(run):
    text = console_text(run)
    assert "Methods: accuracy against cost" in text and "Tokens saved by stopping" in text
    written = write_report(run.root)
    assert (run.root / "plots" / "accuracy_vs_tokens.png").is_file()
    assert "<!-- table:stopping -->" in written["md"].read_text()
