"""The driver's grading pool: finished groups graded in spawned worker processes, results in
submission order, and no fault of a worker decides a grade.

math-verify is pure Python (~45 ms per long path), so groups are graded in a process pool, off the
coordinator and off the generation's critical path. What can go wrong there, and what happens:

- A worker dies (the OOM killer on a huge expression, a segfault, a stray kill): the pool breaks
  and every task in it fails. The pool is rebuilt (after a probe task shows that its workers
  start at all; if they do not, the run fails saying so), and each group that was in flight is
  regraded alone in the pool, so that a death names its group; a group that dies alone is then
  graded one path at a time, so that a death names its path. A path whose grading kills the pool
  `attempts` times is recorded ungraded (`grading.ungraded_record`).
- A task runs past its deadline (`deadline_s(rows)`, from when it started; every check inside is
  bounded, so this means a stuck worker): treated as a death.
- A check inside times out or raises: that verdict is None (ungraded) in the row itself
  (`grading.math_verdict`).
- Ctrl-C: workers ignore SIGINT (a terminal sends it to the whole process group); the driver
  stops and `close(kill=True)` kills them.
- The driver dies without closing (SIGKILL, `os._exit`): each worker watches its parent and exits
  when it is gone. (Not prctl's PDEATHSIG: that fires when the *thread* that spawned the worker
  exits, and workers are spawned from whichever thread submits.)
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_sentinels

from ..core.grading import grade_rows, ungraded_record
from ..errors import RunFailed

log = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often a worker looks for its parent
PROBE_DEADLINE_S = 300.0  # a fresh pool's workers must start (spawn, imports) within this


def _worker_init(parent_pid: int) -> None:
    """In each worker: ignore Ctrl-C, exit when the driver is gone, import math-verify now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="grader-parent-watch",
                     daemon=True).start()
    try:
        import math_verify  # noqa: F401  # so that no check's clock includes the import
    except ImportError:
        pass


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)  # adopted by another process: the driver died without closing the pool


def _probe() -> int:
    """A fresh pool's first task: proves its workers start."""
    return os.getpid()


@dataclass
class _Job:
    group: dict
    rows: list  # per path: the graded row, or None until graded
    sent: bool = False  # a whole-group task was submitted (normal mode)
    isolate: bool = False  # it was in a broken pool: regraded alone in the pool
    split: bool = False  # it broke the pool alone: its paths are graded one at a time
    deaths: dict = field(default_factory=dict)  # path position -> pool breaks it caused alone

    def done(self) -> bool:
        return all(r is not None for r in self.rows)


@dataclass
class _Task:
    job: _Job
    indices: list[int]  # positions of the job's rows this task grades
    alone: bool = False  # alone in the pool: a pool break is its doing
    started: float | None = None  # monotonic time it was first seen running


class Grader:
    """Grades finished groups in a process pool; `ready()` and `drain()` return them in
    submission order with their path rows graded (see the module docstring for faults).

    `check` (picklable, `check(text, gold) -> bool | None`) replaces `grading.math_verdict` in
    the workers (tests). `attempts`: how many times a path may break the pool, alone in it,
    before it is recorded ungraded."""

    def __init__(self, workers: int | None = None, deadline_s=lambda rows: 600.0 + 30.0 * len(rows),
                 attempts: int = 2, check=None, close_grace_s: float = 10.0):
        self.workers = workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.deadline_s = deadline_s
        self.attempts = attempts
        self.check = check
        self.close_grace_s = close_grace_s
        self.pool: ProcessPoolExecutor | None = None
        self.pending: list[_Job] = []  # in submission order, until returned
        self.tasks: dict[Future, _Task] = {}
        self.probe: Future | None = None
        self.probe_started = 0.0
        self.busy_s = 0.0
        self.restarts = 0  # pools rebuilt after a worker died or overran
        self.ungraded = 0  # paths returned with `correct` None

    # ------------------------------------------------------------------ the runner's calls

    def submit(self, group: dict) -> None:
        self.pending.append(_Job(group, [None] * len(group["paths"])))
        self._guarded(self._dispatch)

    def ready(self) -> list[dict]:
        """The groups graded so far, in submission order (stops at the first unfinished one)."""
        self._guarded(self._poll)
        return self._finished()

    def drain(self) -> list[dict]:
        """Every submitted group, graded (waits)."""
        self._guarded(self._wait_all)
        return self._finished()

    def facts(self) -> dict:
        """For run_info.json."""
        return {"grading_s": round(self.busy_s, 3), "grading_restarts": self.restarts,
                "ungraded_paths": self.ungraded}

    def close(self, kill: bool = False) -> None:
        """Stop the workers and wait until they are gone: at once with `kill`, else after at most
        `close_grace_s` for what they are doing. With `kill`, pending groups are dropped."""
        self._stop_pool(kill)
        if kill:
            self.pending.clear()
            self.tasks.clear()
            self.probe = None

    # ------------------------------------------------------------------ the state machine

    def _guarded(self, step) -> None:
        """Whatever stops a step (Ctrl-C included) leaves no worker behind."""
        try:
            step()
        except BaseException:
            self.close(kill=True)
            raise

    def _wait_all(self) -> None:
        while True:
            self._poll()
            if all(job.done() for job in self.pending):
                return
            waiting = list(self.tasks) + ([self.probe] if self.probe is not None else [])
            # short waits: a task's deadline counts from when it is seen running
            wait_futures(waiting, timeout=0.5, return_when=FIRST_COMPLETED)

    def _finished(self) -> list[dict]:
        out = []
        while self.pending and self.pending[0].done():
            job = self.pending.pop(0)
            self.ungraded += sum(r.get("correct") is None for r in job.rows)
            out.append({**job.group, "paths": job.rows})
        return out

    def _poll(self) -> None:
        """Collect what finished, notice a broken or stuck pool, send what can go."""
        if self.probe is not None:
            self._check_probe()
        broken = False
        now = time.monotonic()
        for fut, task in list(self.tasks.items()):
            if fut.done():
                broken |= self._collect(fut, task)
                continue
            if task.started is None and fut.running():
                task.started = now
            limit = self.deadline_s([task.job.group["paths"][i] for i in task.indices])
            if task.started is not None and now - task.started > limit:
                log.error("grading %s did not finish in %.0f s: a grading worker is stuck; restarting the "
                          "grading workers", _name(task), limit)
                broken = True
        if broken:
            self._restart()
        self._dispatch()

    def _collect(self, fut: Future, task: _Task) -> bool:
        """A finished task's rows into its job; True when the pool broke under it."""
        try:
            rows, seconds = fut.result()
        except (BrokenProcessPool, CancelledError):
            return True
        # anything else a task raises is a bug in grading itself, on some path's text: it must
        # not stop the run, so the path(s) are found, one at a time, and recorded ungraded
        except Exception as exc:
            del self.tasks[fut]
            if len(task.indices) == 1:
                log.error("grading %s raised %s: %s; recorded ungraded", _name(task), type(exc).__name__, exc)
                task.job.rows[task.indices[0]] = ungraded_record(task.job.group["paths"][task.indices[0]])
            else:
                log.error("grading %s raised %s: %s; grading its paths one at a time", _name(task),
                          type(exc).__name__, exc)
                task.job.isolate = task.job.split = True
            return False
        del self.tasks[fut]
        self.busy_s += seconds
        for i, row in zip(task.indices, rows):
            task.job.rows[i] = row
        return False

    def _restart(self) -> None:
        """The pool broke (a worker died) or a task overran: kill it; every task that was in it
        is lost and regraded alone. A group alone in the pool is to blame: its paths are then
        graded one at a time; a path alone is to blame: it counts a death."""
        self._stop_pool(kill=True)
        self.restarts += 1
        for fut, task in list(self.tasks.items()):
            job = task.job
            job.isolate = True
            if task.alone and len(task.indices) > 1:
                job.split = True
            elif task.alone:
                i = task.indices[0]
                job.deaths[i] = job.deaths.get(i, 0) + 1
                if job.deaths[i] >= self.attempts:
                    log.error("grading %s broke the grading pool %d time(s); recorded ungraded",
                              _name(task), job.deaths[i])
                    job.rows[i] = ungraded_record(job.group["paths"][i])
        self.tasks.clear()
        self.probe = None
        log.warning("grading workers restarted (%d so far); what was in flight is regraded alone",
                    self.restarts)

    def _dispatch(self) -> None:
        """While a group is isolated, it alone (split: one of its paths alone); else whole groups."""
        if self.probe is not None:
            return
        isolated = [job for job in self.pending if job.isolate and not job.done()]
        if isolated:
            if self.tasks:
                return
            job = isolated[0]
            left = [k for k, r in enumerate(job.rows) if r is None]
            self._send(job, left[:1] if job.split else left, alone=True)
            return
        for job in self.pending:
            if not job.sent and not job.done():
                if not self._send(job, list(range(len(job.rows)))):
                    return
                job.sent = True

    def _send(self, job: _Job, indices: list[int], alone: bool = False) -> bool:
        """Submit a task; False when it could not go (a fresh pool's probe goes first, or the
        pool turned out broken: then it is rebuilt)."""
        pool = self._ensure()
        if pool is None:
            return False
        rows = [job.group["paths"][i] for i in indices]
        try:
            fut = pool.submit(grade_rows, rows, job.group.get("kind", "math"), self.check)
        except BrokenProcessPool:  # a worker died while nothing of ours was in flight
            self._restart()
            return False
        self.tasks[fut] = _Task(job, indices, alone)
        return True

    def _ensure(self) -> ProcessPoolExecutor | None:
        """The pool; None while a rebuilt pool's probe has not answered."""
        if self.pool is not None:
            return self.pool
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init, initargs=(os.getpid(),))
        if self.restarts == 0:
            return self.pool
        self.probe = self.pool.submit(_probe)
        self.probe_started = time.monotonic()
        return None

    def _check_probe(self) -> None:
        if not self.probe.done():
            if time.monotonic() - self.probe_started > PROBE_DEADLINE_S:
                raise RunFailed(f"the grading workers did not start within {PROBE_DEADLINE_S:.0f} s after a "
                                f"restart; finished groups and checkpoints are saved, rerun to retry")
            return
        try:
            self.probe.result()
        except (BrokenProcessPool, OSError) as exc:  # a worker died starting, or could not be spawned
            raise RunFailed(f"the grading workers cannot start ({type(exc).__name__}: {exc}); finished "
                            f"groups and checkpoints are saved, rerun to retry") from exc
        self.probe = None

    def _stop_pool(self, kill: bool) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        if kill:
            for proc in procs:
                _kill(proc)
        pool.shutdown(wait=False, cancel_futures=True)
        _reap(procs, 0.0 if kill else self.close_grace_s)
        if manager is not None:
            manager.join(timeout=5.0)


def _name(task: _Task) -> str:
    group = task.job.group
    what = f"path {group['paths'][task.indices[0]].get('path', task.indices[0])} of " if task.job.split else ""
    return f"{what}problem {group['problem_id']} (sweep point {group['point']})"


def _kill(proc) -> None:
    try:
        proc.kill()
    except (OSError, ValueError):  # already gone, or closed
        pass


def _reap(procs: list, grace_s: float) -> None:
    """Wait up to `grace_s` for the workers to exit, kill the rest, and wait for them."""
    end = time.monotonic() + grace_s
    alive = [p for p in procs if p.exitcode is None]
    while alive and time.monotonic() < end:
        wait_sentinels([p.sentinel for p in alive], timeout=end - time.monotonic())
        alive = [p for p in alive if p.exitcode is None]
    for proc in alive:
        _kill(proc)
    for proc in procs:
        proc.join(timeout=5.0)
