""""Plan vs run" in the console text, report.html and report.md, from a hand-made run_info.json."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import report
from orchestrator.core import metrics
from orchestrator.report import data as D

PREDICTED = {"profile": "exact profile smollm2-cpu.json", "generation_s": 360.0, "wall_s": 380.0,
             "gpu_hours": 0.0, "sampled_tokens": 1100, "injected_tokens": 150, "cache_hit_rate": 0.85,
             "peak_kv_tokens": 9000, "evictions": 0, "replica_busy": [0.9, 0.8],
             "bound": "batch size (engine.max_num_seqs=16)", "points": {}, "plan_s": 0.7}


def results(root: Path, run_info: dict) -> Path:
    rows = [{"sweep_point": "lp", "benchmark": "aime24", "problem_id": "p1", "path": i, "correct": i % 2 == 0,
             "correct_compat": i % 2 == 0, "gold": "7", "answer": "7", "sampled_tokens": 250, "injected_tokens": 40, "cached_tokens": 80,
             "uncached_tokens": 20} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), root / "paths.parquet")
    (root / "summary.json").write_text(json.dumps(metrics.summarize(rows), default=str))
    (root / "run_info.json").write_text(json.dumps(run_info))
    return root


def test_plan_table_compares_predicted_with_measured(tmp_path):
    run = report.load_results(results(tmp_path, {"generation_s": 342.7, "wall_s": 400.0, "plan_s": 0.8,
                                                 "predicted": PREDICTED}))
    t = D.plan_table(run)
    cells = {r[0].text: [c.text for c in r[1:]] for r in t.rows}
    assert cells["generation time (s)"] == ["360.0", "342.7", "+5.0%"]
    assert cells["wall time (s)"] == ["380.0", "400.0", "-5.0%"]
    assert cells["sampled tokens"] == ["1,100", "1,000", "+10.0%"]  # 4 paths x 250 in paths.parquet
    assert cells["injected tokens"] == ["150", "160", "-6.2%"]
    assert cells["prefix-cache hit rate"] == ["0.850", "0.800", "+5.0 pt"]
    assert "exact profile smollm2-cpu.json" in t.note and "batch size" in t.note


def test_plan_vs_run_in_the_console_text_and_both_documents(tmp_path):
    root = results(tmp_path, {"generation_s": 342.7, "wall_s": 400.0, "predicted": PREDICTED})
    written = report.write_report(root, plots=False)
    text = written["text"]
    assert "Plan vs run\nfigure" in text and "planned with: exact profile smollm2-cpu.json" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("generation time (s)"))
    assert line.split()[-3:] == ["360.0", "342.7", "+5.0%"]
    html = written["html"].read_text()
    assert 'id="plan"' in html and 'data-table="plan"' in html and "+5.0%" in html
    md = written["md"].read_text()
    assert "## Plan vs run" in md and "<!-- table:plan -->" in md and "| generation time (s) | 360.0 | 342.7 | +5.0% |" in md


def test_the_plan_made_again_with_the_runs_lengths_sits_beside_the_plan(tmp_path):
    again = {"generation_s": 336.0, "wall_s": 356.0, "sampled_tokens": 1000, "injected_tokens": 150,
             "cache_hit_rate": 0.8, "paths": 4, "plan_s": 0.6}
    root = results(tmp_path, {"generation_s": 342.7, "wall_s": 400.0, "predicted": PREDICTED, "replanned": again})
    t = D.plan_table(report.load_results(root))
    assert t.headers[-2:] == ["run's lengths", "error"] and "4 paths" in t.note
    cells = {r[0].text: [c.text for c in r[1:]] for r in t.rows}
    assert cells["generation time (s)"] == ["360.0", "342.7", "+5.0%", "336.0", "-2.0%"]
    assert cells["sampled tokens"] == ["1,100", "1,000", "+10.0%", "1,000", "+0.0%"]
    md = report.write_report(root, plots=False)["md"].read_text()
    assert "| generation time (s) | 360.0 | 342.7 | +5.0% | 336.0 | -2.0% |" in md
    # a plan that failed the second time leaves the table as it was
    failed = results(tmp_path, {"generation_s": 342.7, "predicted": PREDICTED, "replanned": {"error": "E: x"}})
    assert D.plan_table(report.load_results(failed)).headers == ["figure", "predicted", "measured", "error"]


def test_a_failed_plan_says_so_and_a_run_without_one_shows_nothing(tmp_path):
    (tmp_path / "failed").mkdir()
    failed = results(tmp_path / "failed", {"generation_s": 3.0, "predicted": {"error": "NotImplementedError: no planner"}})
    written = report.write_report(failed, plots=False)
    assert "Plan vs run: The run's plan failed (NotImplementedError: no planner)" in written["text"]
    assert "The run&#x27;s plan failed" in written["html"].read_text() and "## Plan vs run" in written["md"].read_text()
    (tmp_path / "none").mkdir()
    plain = report.write_report(results(tmp_path / "none", {"generation_s": 3.0}), plots=False)
    assert "Plan vs run" not in plain["text"] and 'id="plan"' not in plain["html"].read_text()
    assert "Plan vs run" not in plain["md"].read_text()


@pytest.mark.parametrize("predicted,measured,style,expected", [
    (110, 100, "seconds", "+10.0%"), (90, 100, "tokens", "-10.0%"), (1, 0, "seconds", "-"),
    (None, 100, "seconds", "-"), (0.5, 0.75, "frac", "-25.0 pt"), (100, None, "seconds", "-"),
])
def test_plan_error(predicted, measured, style, expected):
    assert D.plan_error(predicted, measured, style) == expected
