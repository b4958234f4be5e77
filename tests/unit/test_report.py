"""Report tables and plots from a small synthetic results dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _path_rows() -> list[dict]:
    rows = []
    # (sweep point, problem, per-path (answer, correct))
    spec = {
        ("T=1024", "p1"): [("7", True), ("7", True), ("8", False), ("7", True)],
        ("T=1024", "p2"): [("3", False), ("3", False), ("5", True), ("6", False)],
        ("T=2048", "p1"): [("7", True), ("7", True), ("7", True), ("7", True)],
        ("T=2048", "p2"): [("5", True), ("4", False), ("5", True), (None, False)],
    }
    for (sp, pid), paths in spec.items():
        for i, (ans, ok) in enumerate(paths):
            rows.append({
                "sweep_point": sp,
                "benchmark": "synthetic",
                "problem_id": pid,
                "path": i,
                "correct": ok,
                "correct_compat": ok,
                "answer": ans,
                "sampled_tokens": 100 + 10 * i,
                "injected_tokens": 20,
            })
    return rows


SUMMARY = {
    "T=1024": {"synthetic": {
        "pass@1": 0.5, "cons@N": 0.5, "pass@k": {"1": 0.5, "2": 0.7, "4": 1.0},
        "tokens_per_path": {"sampled": 115.0, "injected": 20.0, "total": 135.0},
    }},
    "T=2048": {"synthetic": {
        "pass@1": 0.75, "cons@N": 1.0, "pass@k": {"1": 0.75, "2": 0.9, "4": 1.0},
        "tokens_per_path": {"sampled": 115.0, "injected": 20.0, "total": 135.0},
    }},
}


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(_path_rows()), tmp_path / "paths.parquet")
    messages = [
        {"sweep_point": "T=1024", "problem_id": "p1", "round": 1, "recipient": 0, "sender": 2, "similarity": 0.25},
        {"sweep_point": "T=1024", "problem_id": "p1", "round": 1, "recipient": 2, "sender": 0, "similarity": 0.75},
    ]
    pq.write_table(pa.Table.from_pylist(messages), tmp_path / "messages.parquet")
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    return tmp_path


def _line(table: str, *starts: str) -> list[str]:
    for ln in table.splitlines():
        cells = ln.split()
        if cells[: len(starts)] == list(starts):
            return cells
    raise AssertionError(f"no row starting {starts} in\n{table}")


def test_problem_table(results_dir):
    table = report.problem_table(pq.read_table(results_dir / "paths.parquet"))
    header = table.splitlines()[0]
    assert "T=1024" in header and "T=2048" in header and "pass@1" in header and "cons@N" in header
    # p1: T=1024 3/4 correct, majority 7 (correct); T=2048 all correct
    assert _line(table, "synthetic", "p1")[2:] == ["4", "0.750", "1", "1.000", "1"]
    # p2: T=1024 1/4, majority "3" wrong; T=2048 2/4, majority "5" right (None ignored)
    assert _line(table, "synthetic", "p2")[2:] == ["4", "0.250", "0", "0.500", "1"]
    assert _line(table, "synthetic", "mean")[2:] == ["0.500", "0.500", "0.750", "1.000"]
    # fixed width: every line of the body as wide as the rule or narrower
    rule = table.splitlines()[1]
    assert set(rule) <= {"-", " "}


def test_problem_table_single_sweep_shows_majority_and_tokens():
    rows = [r for r in _path_rows() if r["sweep_point"] == "T=1024"]
    table = report.problem_table(rows)
    cells = _line(table, "synthetic", "p2")
    assert cells[2:6] == ["4", "0.250", "0", "3"]
    assert cells[6] == "135"  # mean of (100..130)+20
    assert report.problem_table([]) == "(no paths)"


def test_sweep_table(results_dir):
    summary = json.loads((results_dir / "summary.json").read_text())
    table = report.sweep_table(summary)
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    for key in ("sweep_point", "benchmark", "pass@1", "cons@N", "pass@4", "sampled", "injected", "total"):
        assert key in lines[0]
    assert _line(table, "T=1024", "synthetic")[2:] == ["0.500", "0.500", "1.000", "115", "20", "135"]
    assert _line(table, "T=2048", "synthetic")[2:] == ["0.750", "1.000", "1.000", "115", "20", "135"]


def test_sweep_table_numbered_cons_key_and_missing_total():
    summary = {"a": {"aime24": {"pass@1": 0.1, "cons@32": 0.2, "cons@32_shortest": 0.9,
                                "tokens_per_path": {"sampled": 1000, "injected": 50}}}}
    table = report.sweep_table(summary)
    assert "cons@32" in table.splitlines()[0]
    assert _line(table, "a", "aime24")[2:] == ["0.100", "0.200", "1,000", "50", "1,050"]


def test_text_tables_show_ungraded_paths_apart():
    rows = [r for r in _path_rows() if r["sweep_point"] == "T=1024"]
    for r in rows:
        if r["problem_id"] == "p2" and r["path"] in (0, 1):  # the two wrong "3" paths: undecided
            r["correct"] = None
    table = report.problem_table(rows)
    assert "ungraded" in table.splitlines()[0]
    # p2: 1 of the 2 graded paths right (not 1 of 4); the majority "3" has no graded path
    assert _line(table, "synthetic", "p2")[2:6] == ["4", "0.500", "-", "2"]
    assert _line(table, "synthetic", "p1")[2:6] == ["4", "0.750", "1", "0"]
    assert _line(table, "synthetic", "mean")[2:5] == ["0.625", "1.000", "2"]
    summary = {"a": {"aime24": {"pass@1": 0.5, "cons@N": 0.5, "ungraded": 3}},
               "b": {"aime24": {"pass@1": 0.25, "cons@N": 0.5}}}
    table = report.sweep_table(summary)
    assert table.splitlines()[0].split()[-1] == "ungraded"
    assert _line(table, "a", "aime24")[-1] == "3" and _line(table, "b", "aime24")[-1] == "0"
    assert "ungraded" not in report.problem_table(_path_rows()) + report.sweep_table(SUMMARY)


def test_message_line(results_dir):
    _, messages, _ = report.load_results(results_dir)
    assert report.message_line(messages) == "messages: 2 delivered over 1 round(s), mean similarity 0.500"
    assert report.message_line([]) == "messages: none delivered"


def test_plot_writes_pngs(results_dir):
    written = report.plot(results_dir)
    names = sorted(p.name for p in written)
    assert names == ["pass1.png", "pass_at_k.png", "tokens.png"]
    for p in written:
        assert p.parent == results_dir / "plots"
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_fills_what_summary_lacks_from_the_paths(results_dir):
    # summary.json without tokens or pass@k: the report computes them with metrics.summarize
    (results_dir / "summary.json").write_text(json.dumps({"T=1024": {"synthetic": {"pass@1": 0.5}}}))
    names = sorted(p.name for p in report.plot(results_dir))
    assert names == ["pass1.png", "pass_at_k.png", "tokens.png"]


def test_cli(results_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.report", str(results_dir)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "per problem" in out and "sweep" in out
    assert "p1" in out and "T=2048" in out and "messages: 2 delivered" in out
    assert (results_dir / "plots" / "pass1.png").is_file()
    for name in ("report.html", "report.md"):
        assert f"wrote {results_dir / name}" in out and (results_dir / name).stat().st_size > 1000


def test_cli_rejects_empty_dir(tmp_path):
    assert report.main([str(tmp_path), "--no-plots"]) == 2
