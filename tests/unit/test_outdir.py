"""One output directory, one run, one config (issue 15): the lock, the fingerprint, unreadable
parts, failed checkpoint writes, partial results and file modes. Real files, no Ray: the group
runner is replaced by one that writes parts the way the driver does."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from orchestrator.driver import fingerprint, runner
from orchestrator.driver.checkpoint import CheckpointStore, Recovery
from orchestrator.config import prompt_file, sweep_points
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem
from orchestrator.errors import ConfigChanged, RunFailed
from orchestrator.driver.lock import OutputDirBusy, RunLock
from orchestrator.driver.loop import write_group
from orchestrator.driver.results import ResultStore
from tests.conftest import REPO, compose

PROBLEMS = [Problem(id=f"q{i}", benchmark="synthetic", question=f"What is {i} + {i}?", gold=str(2 * i))
            for i in range(3)]


def setup(overrides=(), problems=PROBLEMS, tmp_path=None):
    cfg = compose(["engine=fake", "dataset=synthetic", "leap.paths=2", "plots=false", "progress=false",
                   f"output_dir={tmp_path}", *overrides])
    points = sweep_points(cfg)
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    return cfg, points, prompts, problems


def row(point, pid, path, answer="2"):
    return {"sweep_point": point, "benchmark": "synthetic", "problem_id": pid, "path": path, "gold": "2",
            "answer": answer, "correct": answer == "2", "correct_compat": answer == "2", "finish_reason": "stop",
            "rounds": 1, "prompt_tokens": 10, "sampled_tokens": 20, "injected_tokens": 0, "cached_tokens": 0,
            "uncached_tokens": 10, "summaries": [], "text": f"path {path} of {pid}", "spans": [], "requests": []}


def fake_groups(fail=()):
    """Stands in for `_run_groups`: every group not in `fail` is written as the driver writes it."""
    def run_groups(cfg, points, prompts, phases, total, store, recovery, fp, model=None):
        failed = []
        for phase in phases:
            for point, problem, _ in phase():
                if problem.id in fail:
                    failed.append(f"{point}|{problem.id}: the engine said no")
                    continue
                write_group(store, recovery, {"point": point, "problem_id": problem.id, "messages": [],
                                         "paths": [row(point, problem.id, i) for i in range(2)]}, fp)
        return {"failed_groups": failed}
    return run_groups


def run(monkeypatch, tmp_path, overrides=(), fail=(), problems=PROBLEMS):
    monkeypatch.setattr(runner, "_run_groups", fake_groups(fail))
    return runner._run(*setup(overrides, problems, tmp_path))


def test_a_rerun_with_another_config_is_refused_naming_each_difference(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path)
    config_before = (tmp_path / "config.json").read_bytes()
    for overrides, named in [(["sampling.temperature=0.9", "leap.seed=7"], ["sampling.temperature: 0.6 -> 0.9",
                                                                           "leap.seed: 0 -> 7"]),
                             (["model.path=builtin:tiny"], ["model.path"]),
                             (["leap.summary_tokens=99"], ["leap.summary_tokens: 256 -> 99"])]:
        with pytest.raises(ConfigChanged) as err:
            run(monkeypatch, tmp_path, overrides)
        for text in named:
            assert text in str(err.value)
        assert "output_dir=" in str(err.value)
    other = [Problem(id="q1", benchmark="synthetic", question="What is 5 + 5?", gold="10"), *PROBLEMS[:1]]
    with pytest.raises(ConfigChanged, match=r"dataset content: 1 problem\(s\).*\(q1\)"):
        run(monkeypatch, tmp_path, problems=other)
    assert (tmp_path / "config.json").read_bytes() == config_before  # refused before anything was rewritten


def test_a_rerun_may_add_problems_and_speed_knobs_may_change(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path, problems=PROBLEMS[:2])
    summary = run(monkeypatch, tmp_path, ["replicas.count=3", "+engine.latency.step_base_s=0.1"])
    assert summary["default"]["synthetic"]["problems"] == 3
    recorded = json.loads((tmp_path / fingerprint.FILE).read_text())
    assert sorted(recorded["problems"]) == ["q0", "q1", "q2"]


def test_fingerprint_checked_in_parts_even_without_the_directory_record(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path)
    (tmp_path / fingerprint.FILE).unlink()
    with pytest.raises(ConfigChanged, match="sampling.top_p: 0.95 -> 0.5"):
        run(monkeypatch, tmp_path, ["sampling.top_p=0.5"])


def test_partial_results_are_consolidated_and_marked_incomplete(monkeypatch, tmp_path):
    with pytest.raises(RunFailed, match="q1: the engine said no"):
        run(monkeypatch, tmp_path, fail={"q1"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["default"]["synthetic"]["problems"] == 2
    assert summary["_incomplete"] == {"groups_missing": 1, "groups": [
        {"sweep_point": "default", "problem_id": "q1", "reason": "the engine said no"}]}
    import pyarrow.parquet as pq
    assert sorted(set(pq.read_table(tmp_path / "paths.parquet").column("problem_id").to_pylist())) == ["q0", "q2"]
    assert json.loads((tmp_path / "run_info.json").read_text())["complete"] is False
    report = (tmp_path / "report.md").read_text()
    assert "Incomplete run: 1 group(s) have no result" in report and "q1: the engine said no" in report
    assert "groups_missing" not in report  # not mistaken for a benchmark
    summary = run(monkeypatch, tmp_path)  # the rerun runs only the failed group, and is complete
    assert "_incomplete" not in summary and summary["default"]["synthetic"]["problems"] == 3


def test_a_crash_mid_run_still_consolidates_what_finished(monkeypatch, tmp_path):
    def crash(cfg, points, prompts, phases, total, store, recovery, fp, model=None):
        point, problem, _ = phases[0]()[0]
        write_group(store, recovery, {"point": point, "problem_id": problem.id, "messages": [],
                                      "paths": [row(point, problem.id, 0)]}, fp)
        raise RuntimeError("no live replica left")
    monkeypatch.setattr(runner, "_run_groups", crash)
    with pytest.raises(RuntimeError, match="no live replica"):
        runner._run(*setup((), PROBLEMS, tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["_incomplete"]["groups_missing"] == 2
    assert all("no live replica left" in g["reason"] for g in summary["_incomplete"]["groups"])


def test_a_corrupt_part_is_moved_aside_and_its_group_runs_again(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path)
    store = ResultStore(tmp_path)
    part = store.part_path("default", "q2")
    part.write_bytes(part.read_bytes()[:100])  # an interrupted copy
    calls = []

    def count(cfg, points, prompts, phases, total, store, recovery, fp, model=None):
        calls.append([pb.id for _, pb, _ in phases[0]()])
        return fake_groups()(cfg, points, prompts, phases, total, store, recovery, fp, model)
    monkeypatch.setattr(runner, "_run_groups", count)
    summary = runner._run(*setup((), PROBLEMS, tmp_path))
    assert calls == [["q2"]]
    assert summary["default"]["synthetic"]["problems"] == 3
    assert len(list((tmp_path / "corrupt").iterdir())) == 1


def test_a_failed_checkpoint_write_is_a_warning(tmp_path, caplog):
    rec = Recovery(tmp_path)
    rec.out[("pt", "p1")] = ("pt", None, {}, None)
    (tmp_path / "checkpoints").write_text("a file where the folder should be")  # writes now fail
    rec.checkpoint("pt", "p1", b"state")
    rec.checkpoint("pt", "p1", b"state 2")
    assert rec.latest[("pt", "p1")] == b"state 2"  # a coordinator restart still resumes from memory
    assert rec.facts()["checkpoint_write_failures"]["count"] == 2
    assert sum("could not be written" in r.getMessage() for r in caplog.records) == 1


def test_checkpoints_of_another_config_are_not_resumed(tmp_path):
    fp = {"run": {"sampling.temperature": 0.6}, "points": {"pt": {"seed": 0}}, "problems": {"p1": "h"}}
    CheckpointStore(tmp_path).write("pt", "p1", b"blob", fingerprint.group_digest(fp, "pt", "p1"))
    other = dict(fp, run={"sampling.temperature": 0.9})
    rec = Recovery(tmp_path, fingerprint=other)
    assert rec._usable("pt", "p1", {}, b"blob") is None
    assert "another config" in rec.ignored[0]["why"]


def test_a_second_run_on_the_directory_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from orchestrator.driver.lock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirBusy) as err:
            RunLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(err.value) and "host " in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the holder died: its lock is taken over
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert lock.fd is None


def test_result_files_follow_the_umask(monkeypatch, tmp_path):
    old = os.umask(0o022)
    try:
        run(monkeypatch, tmp_path)
    finally:
        os.umask(old)
    for name in ("paths.parquet", "summary.json", "config.json", fingerprint.FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    part = ResultStore(tmp_path).part_path("default", "q0")
    assert stat.S_IMODE(part.stat().st_mode) == 0o644
