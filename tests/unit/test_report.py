"""Report text tables, plots and the CLI from a small synthetic results dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import report
from orchestrator.core import metrics
from orchestrator.report.text import tokens_table

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


def _write_dir(root: Path, rows: list[dict], summary: dict | None = None) -> Path:
    """A results dir of `rows`; summary.json as the run writes it (metrics.summarize) unless given."""
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "paths.parquet")
    summary = metrics.summarize(rows) if summary is None else summary
    (root / "summary.json").write_text(json.dumps(summary, default=str))
    return root


def test_problem_table(results_dir):
    table = report.problem_table(report.load_results(results_dir))
    header = table.splitlines()[0]
    for key in ("T=1024 Pass@1", "T=1024 Cons@N", "T=1024 majority", "T=2048 Pass@1", "T=2048 majority"):
        assert key in header
    # p1: T=1024 3/4 correct, majority 7 (correct); T=2048 all correct
    assert _line(table, "synthetic", "p1")[2:] == ["0.750", "1.000", "7", "1.000", "1.000", "7"]
    # p2: T=1024 1/4, majority "3" wrong; T=2048 2/4, majority "5" right (None ignored)
    assert _line(table, "synthetic", "p2")[2:] == ["0.250", "0.000", "3", "0.500", "1.000", "5"]
    rule = table.splitlines()[1]
    assert set(rule) <= {"-", " "} and all(len(ln) <= len(rule) for ln in table.splitlines())


def test_problem_table_of_one_point_names_no_point_and_cuts_long_answers(tmp_path):
    rows = [r for r in _path_rows() if r["sweep_point"] == "T=1024"]
    for r in rows:
        if r["problem_id"] == "p1" and r["answer"] == "7":
            r["answer"] = "123456789012345678901"
    table = report.problem_table(report.load_results(_write_dir(tmp_path, rows)))
    assert table.splitlines()[0].split() == ["benchmark", "problem", "Pass@1", "Cons@N", "majority"]
    assert _line(table, "synthetic", "p1")[2:] == ["0.750", "1.000", "123456789012345~"]
    assert _line(table, "synthetic", "p2")[2:] == ["0.250", "0.000", "3"]


def test_sweep_and_tokens_tables(results_dir):
    run = report.load_results(results_dir)
    table = report.sweep_table(run)
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    assert lines[0].split() == ["configuration", "N", "Pass@1", "Cons@4"]
    assert _line(table, "T=1024") == ["T=1024", "4", "0.500", "0.500"]  # summary.json's values
    assert _line(table, "T=2048") == ["T=2048", "4", "0.750", "1.000"]
    tokens = tokens_table(run)
    for key in ("sampled/path", "injected/path", "total/path"):
        assert key in tokens.splitlines()[0]
    assert _line(tokens, "T=1024")[1:4] == ["115", "20", "135"]
    assert _line(tokens, "T=2048")[1:4] == ["115", "20", "135"]


def test_text_tables_show_ungraded_paths_apart(tmp_path):
    rows = [r for r in _path_rows() if r["sweep_point"] == "T=1024"]
    for r in rows:
        if r["problem_id"] == "p2" and r["path"] in (0, 1):  # the two wrong "3" paths: undecided
            r["correct"] = None
    run = report.load_results(_write_dir(tmp_path, rows))
    table = report.problem_table(run)
    assert table.splitlines()[0].split()[-1] == "ungraded"
    # p2: 1 of the 2 graded paths right (not 1 of 4); the majority "3" has no graded path
    assert _line(table, "synthetic", "p2")[2:] == ["0.500", "-", "3", "2"]
    assert _line(table, "synthetic", "p1")[2:] == ["0.750", "1.000", "7", "0"]
    sweep = report.sweep_table(run)
    assert sweep.splitlines()[0].split()[-1] == "ungraded"
    assert _line(sweep, "T=1024") == ["T=1024", "4", "0.625", "1.000", "2"]
    text = report.console_text(run)
    assert "2 path(s) could not be graded" in text and "not counted wrong" in text
    graded = report.load_results(_write_dir(tmp_path / "graded", _path_rows()))
    assert "ungraded" not in report.console_text(graded)
    assert "could not be graded" not in report.console_text(graded)


def test_message_line(results_dir, tmp_path):
    run = report.load_results(results_dir)
    assert report.message_line(run) == "messages: 2 delivered over 1 round(s), mean similarity 0.500"
    quiet = report.load_results(_write_dir(tmp_path / "quiet", _path_rows()))
    assert report.message_line(quiet) == "messages: none delivered"


def test_console_text(results_dir):
    text = report.console_text(report.load_results(results_dir))
    blocks = text.split("\n\n")
    # summary.json here lacks per-problem results: the report computes them and says so first
    assert blocks[0].startswith("summary.json lacks ") and "per_problem" in blocks[0]
    assert [b.splitlines()[0] for b in blocks[1:4]] == ["Per problem", "Accuracy by configuration",
                                                         "Tokens and efficiency"]
    assert blocks[4] == "messages: 2 delivered over 1 round(s), mean similarity 0.500"


def test_the_end_of_a_run_prints_what_the_cli_prints(results_dir, monkeypatch, capsys):
    """What `runner._report` hands to the console is what `python -m orchestrator.report` prints,
    whether the report files are written or fail to be."""
    from orchestrator.driver import console, runner

    shown: list[str] = []
    monkeypatch.setattr(console, "tables", shown.append)
    monkeypatch.setattr(console, "finish", lambda *a, **k: None)
    cfg, store = SimpleNamespace(plots=False), SimpleNamespace(root=results_dir)
    runner._report(cfg, store, pq.read_table(results_dir / "paths.parquet"), SUMMARY)

    def broken(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(report, "write_report", broken)
        runner._report(cfg, store, pq.read_table(results_dir / "paths.parquet"), SUMMARY)
    capsys.readouterr()
    assert report.main([str(results_dir), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert shown == [printed.removesuffix("\n")] * 2
    assert "Accuracy by configuration" in printed and "messages: 2 delivered" in printed
    assert report.main([str(results_dir)]) == 0
    assert capsys.readouterr().out.startswith(printed + "wrote ")


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
    assert "Per problem" in out and "Accuracy by configuration" in out and "Tokens and efficiency" in out
    assert "p1" in out and "T=2048" in out and "messages: 2 delivered" in out
    assert (results_dir / "plots" / "pass1.png").is_file()
    for name in ("report.html", "report.md"):
        assert f"wrote {results_dir / name}" in out and (results_dir / name).stat().st_size > 1000


def test_cli_rejects_empty_dir(tmp_path):
    assert report.main([str(tmp_path), "--no-plots"]) == 2
