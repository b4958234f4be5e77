"""The console: phase lines, tables and final lines on the terminal; everything else in run.log."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.driver import console

SCRIPT = textwrap.dedent("""
    import logging, os, sys, types, warnings
    from orchestrator.core.params import LeapParams
    from orchestrator.driver import console
    from orchestrator.driver.progress import WorkMeter
    logging.basicConfig(level=logging.INFO)  # as Hydra does: a root handler on the terminal
    cfg = types.SimpleNamespace(output_dir=sys.argv[1], verbose=sys.argv[2] == "1", progress=False)
    console.prelude(cfg)
    logging.getLogger("orchestrator.config").warning("CONFIG WARNING")
    logging.getLogger("somelib").warning("LIBRARY WARNING BEFORE")
    with console.session(cfg):
        with console.step("preparing the model m") as s:
            os.write(2, b"C-LEVEL NOISE\\n")
            print("STRAY PRINT")
            warnings.warn("DEPRECATED THING")
            logging.getLogger("vllm").info("LOADING SAFETENSORS")
            logging.getLogger("ray").info("STARTED A LOCAL RAY")
            s.done("m-ready")
        with console.step("starting 2 replicas") as s:
            s.done(console.placement([{"index": 0, "node": "n1aaaaaaaaaaaaa", "device": "cpu"},
                                      {"index": 1, "node": "n1aaaaaaaaaaaaa", "device": "cpu"}]))
        logging.getLogger("orchestrator.driver.runner").error("group failed: G")
        console.line("running 6 groups")
        meter = WorkMeter({"pt": LeapParams()}, [("pt", f"p{i}") for i in range(6)])
        bar = console.progress_bar(cfg, meter)
        console.show(bar, meter)
        console.tables("TABLE")
        console.finish(sys.argv[1], sys.argv[1] + "/report.html")
    logging.getLogger("ray").info("SHUTTING DOWN")
    os.write(2, b"")
""")


def _run(tmp_path: Path, verbose: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def test_default_console_shows_phases_tables_and_final_lines_only(tmp_path):
    proc = _run(tmp_path, verbose=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("preparing the model m ... ready in ") and out[0].endswith(": m-ready")
    assert out[1].startswith("starting 2 replicas ... ready in ") and out[1].endswith(": 0-1 on node n1aaaaaaaaaa (cpu)")
    assert out[2] == "running 6 groups"
    assert "TABLE" in out
    assert out[-3:] == [f"results  {tmp_path.resolve()}", f"report   {tmp_path.resolve()}/report.html",
                        f"log      {(tmp_path / 'logs' / 'run.log').resolve()}"]
    assert proc.stderr.splitlines() == ["warning: CONFIG WARNING", "error: group failed: G"]
    noise = ("C-LEVEL NOISE", "STRAY PRINT", "DEPRECATED THING", "LOADING SAFETENSORS", "STARTED A LOCAL RAY",
             "SHUTTING DOWN")
    for word in noise:
        assert word not in proc.stdout + proc.stderr
    log = (tmp_path / "logs" / "run.log").read_text()
    for word in noise:
        assert word in log, word
    assert "group failed: G" in log and "TABLE" in log


def test_verbose_shows_everything(tmp_path):
    proc = _run(tmp_path, verbose=True)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    for word in ("C-LEVEL NOISE", "STRAY PRINT", "DEPRECATED THING", "LOADING SAFETENSORS", "group failed: G"):
        assert word in both, word
    assert "LOADING SAFETENSORS" in (tmp_path / "logs" / "run.log").read_text()


def test_error_inside_a_session_reaches_the_terminal(tmp_path):
    script = textwrap.dedent("""
        import sys, types
        from orchestrator.driver import console
        cfg = types.SimpleNamespace(output_dir=sys.argv[1], verbose=False, progress=False)
        try:
            with console.session(cfg):
                with console.step("starting 1 replicas"):
                    raise RuntimeError("engine died")
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.startswith("starting 1 replicas ... failed after ")
    assert proc.stderr.splitlines() == ["error: engine died"]  # after the session: the terminal


def test_replica_failure_shows_the_tail_of_its_log(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "replica-1.log").write_text("\n".join(f"line {i}" for i in range(50)) + "\n")
    s = console.Session(tmp_path, verbose=True)  # no fd redirection inside pytest
    console._session = s
    try:
        console.replica_failed(1, lines=3)
    finally:
        console._session = None
    err = capsys.readouterr().err
    assert "replica 1 failed" in err and "line 49" in err and "line 46" not in err


@pytest.mark.parametrize("ids, text", [([0, 1, 2, 5], "0-2, 5"), ([3], "3"), ([], "")])
def test_ranges(ids, text):
    assert console._ranges(ids) == text
