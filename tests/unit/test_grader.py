"""The driver's grading pool: results in submission order, and no worker fault decides a grade:
a killed worker is replaced and its group regraded, a path that keeps killing it is ungraded,
Ctrl-C does not reach the workers, and no worker outlives the grader or the driver."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.core.grading import grade_rows, math_verdict
from orchestrator.errors import RunFailed
from orchestrator.driver.grader import Grader

REPO = Path(__file__).resolve().parents[2]


def _row(text: str, gold: str, path: int = 0, summaries=()) -> dict:
    return {"path": path, "text": text, "gold": gold, "summaries": list(summaries), "answer_first_summary": None}


def _group(problem_id: str, *rows: dict) -> dict:
    return {"point": "pt", "problem_id": problem_id, "kind": "math", "paths": list(rows), "messages": []}


def _one(problem_id: str, text: str, gold: str) -> dict:
    return _group(problem_id, _row(text, gold))


def _workers(grader: Grader) -> list[int]:
    return sorted((grader.pool._processes or {}).keys()) if grader.pool is not None else []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited process its parent has not reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# checks the spawned workers run instead of math-verify (module level, so they pickle by name)


def _sleepy_verify(text, gold):
    time.sleep(2.0)
    return True


def _kill_on_marker(text, gold):
    """Kills its own worker (as the OOM killer would) when the text says so."""
    if "KILL-ME" in text:
        os.kill(os.getpid(), signal.SIGKILL)
    return math_verdict(text, gold)


def _stuck_on_marker(text, gold):
    """Never finishes (in time) when the text says so."""
    if "STUCK" in text:
        time.sleep(120)
    return math_verdict(text, gold)


def _raise_on_marker(text, gold):
    if "RAISE" in text:
        raise ValueError("a bug in a check")
    return math_verdict(text, gold)


def _hold_first_check(flag_dir, text, gold):
    """The first check anywhere writes its worker's pid and waits (to be killed mid-grade);
    later ones grade normally."""
    flag = Path(flag_dir) / "started"
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return math_verdict(text, gold)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(120)  # killed long before this
    return math_verdict(text, gold)


def _dies() -> int:
    os._exit(3)


# --------------------------------------------------------------------------- order


def test_grades_in_submission_order():
    grader = Grader(workers=1)
    try:
        grader.submit(_one("a", "so \\boxed{70}", "70"))
        grader.submit(_one("b", "so \\boxed{12}", "70"))
        out = grader.drain()
    finally:
        grader.close()
    assert [g["problem_id"] for g in out] == ["a", "b"]
    assert [g["paths"][0]["correct"] for g in out] == [True, False]
    assert grader.busy_s > 0
    assert grader.facts()["grading_restarts"] == 0 and grader.facts()["ungraded_paths"] == 0


# --------------------------------------------------------------------------- worker deaths


def test_a_worker_killed_mid_grade_is_replaced_and_the_group_graded_as_if_undisturbed(tmp_path):
    rows = [_row("so \\boxed{70}", "70", 0, ["I think \\boxed{70}"]), _row("so \\boxed{12}", "70", 1),
            _row("no answer", "70", 2)]
    grader = Grader(workers=1, check=functools.partial(_hold_first_check, str(tmp_path)))
    try:
        grader.submit(_group("p1", *rows))
        flag = tmp_path / "started"
        for _ in range(600):  # the worker is spawned and reaches the first check
            if flag.is_file() and flag.read_text():
                break
            grader.ready()
            time.sleep(0.1)
        pid = int(flag.read_text())
        os.kill(pid, signal.SIGKILL)
        out = grader.drain()
        assert not _running(pid)
        assert _workers(grader) and pid not in _workers(grader)
    finally:
        grader.close()
    undisturbed, _ = grade_rows(rows)
    assert [g["problem_id"] for g in out] == ["p1"]
    assert out[0]["paths"] == undisturbed
    assert [r["correct"] for r in out[0]["paths"]] == [True, False, False]
    assert grader.restarts == 1 and grader.ungraded == 0


def test_a_worker_killed_while_idle_is_replaced():
    grader = Grader(workers=1)
    try:
        grader.submit(_one("a", "\\boxed{1}", "1"))
        grader.drain()
        (pid,) = _workers(grader)
        os.kill(pid, signal.SIGKILL)
        grader.submit(_one("b", "\\boxed{2}", "2"))
        out = grader.drain()
    finally:
        grader.close()
    assert out[0]["paths"][0]["correct"] is True
    assert grader.restarts == 1 and grader.ungraded == 0


def test_a_path_that_keeps_killing_its_worker_is_ungraded_and_the_rest_graded():
    grader = Grader(workers=2, attempts=2, check=_kill_on_marker)
    try:
        grader.submit(_group("p1", _row("so \\boxed{5}", "5", 0), _row("KILL-ME \\boxed{5}", "5", 1),
                             _row("so \\boxed{4}", "5", 2)))
        grader.submit(_one("p2", "so \\boxed{9}", "9"))
        out = grader.drain()
    finally:
        grader.close()
    assert [g["problem_id"] for g in out] == ["p1", "p2"]
    first = out[0]["paths"]
    assert [r["correct"] for r in first] == [True, None, False]
    killer = first[1]
    assert killer["answer"] is None and killer["correct_compat"] is None and killer["text"].startswith("KILL-ME")
    assert out[1]["paths"][0]["correct"] is True
    # the group's first try, the group alone, then the killer path alone, twice
    assert grader.restarts == 4
    assert grader.facts()["ungraded_paths"] == 1


def test_a_group_past_its_deadline_is_ungraded_and_the_run_goes_on():
    grader = Grader(workers=1, attempts=1, check=_stuck_on_marker,
                    deadline_s=lambda rows: 0.5 if any("STUCK" in r["text"] for r in rows) else 600.0)
    try:
        grader.submit(_group("p7", _row("STUCK", "1", 0), _row("\\boxed{1}", "1", 1)))
        grader.submit(_one("p8", "\\boxed{1}", "1"))
        out = grader.drain()
    finally:
        grader.close()
    assert [g["problem_id"] for g in out] == ["p7", "p8"]
    assert [r["correct"] for r in out[0]["paths"]] == [None, True]
    assert out[1]["paths"][0]["correct"] is True
    assert grader.restarts == 3  # the group's first try, the group alone, the stuck path alone


def test_workers_that_cannot_start_fail_the_run_naming_it(monkeypatch):
    import orchestrator.driver.grader as module

    grader = Grader(workers=1, check=_kill_on_marker)
    grader.submit(_one("p1", "KILL-ME", "1"))
    monkeypatch.setattr(module, "_probe", _dies)  # a rebuilt pool whose workers die at once
    with pytest.raises(RunFailed, match="grading workers cannot start"):
        grader.drain()
    assert grader.pool is None and grader.pending == []


def test_a_check_that_raises_leaves_only_its_path_ungraded():
    grader = Grader(workers=1, check=_raise_on_marker)
    try:
        grader.submit(_group("p1", _row("\\boxed{2}", "2", 0), _row("RAISE \\boxed{2}", "2", 1)))
        out = grader.drain()
    finally:
        grader.close()
    assert [r["correct"] for r in out[0]["paths"]] == [True, None]
    assert grader.restarts == 0


# --------------------------------------------------------------------------- undecided checks


def test_a_check_that_times_out_in_a_worker_is_ungraded():
    check = functools.partial(math_verdict, timeout_s=0.2, verify=_sleepy_verify)
    grader = Grader(workers=1, check=check)
    try:
        grader.submit(_one("p1", "so \\boxed{3}", "3"))
        out = grader.drain()
    finally:
        grader.close(kill=True)
    row = out[0]["paths"][0]
    assert row["correct"] is None and row["answer"] == "3" and row["correct_compat"] is True
    assert grader.restarts == 0 and grader.facts()["ungraded_paths"] == 1


# --------------------------------------------------------------------------- signals and orphans


def test_workers_ignore_ctrl_c():
    grader = Grader(workers=1)
    try:
        grader.submit(_one("a", "\\boxed{1}", "1"))
        assert grader.drain()[0]["paths"][0]["correct"] is True
        pids = _workers(grader)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        grader.submit(_one("b", "\\boxed{2}", "2"))
        assert grader.drain()[0]["paths"][0]["correct"] is True
        assert _workers(grader) == pids and all(_running(p) for p in pids)
        assert grader.restarts == 0
    finally:
        grader.close()


@pytest.mark.parametrize("kill", [False, True])
def test_close_leaves_no_worker(kill):
    grader = Grader(workers=2)
    grader.submit(_one("a", "\\boxed{1}", "1"))
    grader.submit(_one("b", "\\boxed{1}", "1"))
    grader.drain()
    grader.submit(_one("c", "\\boxed{1}", "1"))  # in flight when closed
    pids = _workers(grader)
    assert pids
    grader.close(kill=kill)
    assert not [p for p in pids if _running(p)]


def test_close_stops_a_stuck_worker_after_its_grace():
    grader = Grader(workers=1, check=_stuck_on_marker, close_grace_s=0.5)
    grader.submit(_one("a", "\\boxed{1}", "1"))
    grader.drain()
    pids = _workers(grader)
    grader.submit(_one("b", "STUCK", "1"))  # its worker will not finish nor exit by itself
    grader.close()
    assert not [p for p in pids if _running(p)]


def test_an_exception_while_waiting_leaves_no_worker():
    grader = Grader(workers=1)
    grader.submit(_one("a", "\\boxed{1}", "1"))
    grader.drain()
    pids = _workers(grader)

    def interrupted():
        raise KeyboardInterrupt

    grader._wait_all = interrupted  # as if Ctrl-C arrived while draining
    grader.submit(_one("b", "\\boxed{1}", "1"))
    with pytest.raises(KeyboardInterrupt):
        grader.drain()
    assert grader.pool is None and grader.pending == []
    assert not [p for p in pids if _running(p)]


DRIVER = """
import sys, time
from orchestrator.driver.grader import Grader
g = Grader(workers=2)
g.submit({"point": "pt", "problem_id": "a", "kind": "math", "messages": [],
          "paths": [{"path": 0, "text": "\\\\boxed{1}", "gold": "1", "summaries": []}]})
g.drain()
print(" ".join(str(p) for p in g.pool._processes), flush=True)
time.sleep(600)
"""


def test_workers_exit_when_the_driver_dies_without_closing():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert pids, "the driver printed no worker pids"
    finally:
        driver.kill()
        driver.wait()
    for _ in range(600):  # each worker looks for its parent twice a second
        alive = [p for p in pids if _running(p)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"orphaned grading workers: {alive}"
