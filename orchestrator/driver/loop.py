"""The run loop: one run's groups on the cluster, from start-up to teardown, in named phases.

    loop = RunLoop(cfg, points, prompts, store, recovery, fp, model)
    facts = loop.run(phases, meter)      # run_info.json's timing and fault record (meter: the bar's
                                         # `progress.WorkMeter` of the groups the phases hold)

1. `start`: Ray, the replicas (their engines start loading) and the coordinator (it loads its
   tokenizer meanwhile).
2. `await_ready`: the engines and the coordinator are up; the coordinator learns the replicas'
   capacity.
3. `run_phase`, for each phase of items (compute-matched points run after the points they
   match): submit, then poll until the coordinator hands every group back (`drive`); each poll
   (`on_update`) writes checkpoints, grades and writes finished groups, records failed ones,
   replaces dead replicas and moves the bar.
4. `collect_figures`: generation time, each replica's and the coordinator's figures.
5. `finish` (always): the last groups graded and written, the actors and Ray gone.

A coordinator that dies is replaced (`ask`) and given every group it had, from their checkpoints;
a replica that dies is replaced when the cluster has room (`replacement.py`).

`drive(ask, items, on_update)` is the submit-and-poll loop itself, for any way of calling a
coordinator; `benchmarks/overhead.py` runs its schedules through it.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import ray
from ray.exceptions import RayActorError, RayError

from . import console, fingerprint, replicas
from .actors import answer, unavailable
from .checkpoint import Recovery
from .cluster import Cluster
from .grader import Grader
from .progress import WorkMeter
from .replacement import Replacements
from .results import ResultStore
from ..config import Config, oversubscription, sampling_spec
from ..coordinator.messages import Poll, Progress

log = logging.getLogger(__name__)

POLL_S = 1.0  # how long one poll waits for news from the coordinator


def drive(ask: Callable, items: list, on_update: Callable[[Poll], None], poll_s: float = POLL_S) -> None:
    """Submit `items` (sweep point, problem, overrides[, checkpoint]) to the coordinator and poll
    it until it has handed every group back, passing each `Poll` to `on_update`.
    `ask(method, *args)` calls the coordinator and returns its answer, or None when a new
    coordinator took over meanwhile (already given what was out): that one is polled next."""
    ask("submit", items)
    while True:
        update = ask("poll", poll_s)
        if update is None:
            continue
        on_update(update)
        if update.all_done:
            return


class RunLoop:
    def __init__(self, cfg: Config, points, prompts, store: ResultStore, recovery: Recovery, fp: dict, model: str):
        self.cfg, self.points, self.prompts, self.model = cfg, points, prompts, model
        self.store, self.recovery, self.fp = store, recovery, fp
        self.facts: dict = {}
        self.failed: list[str] = []  # 'point|problem_id: cause' of each group that failed
        self.cluster: Cluster | None = None
        self.replaced: Replacements | None = None
        self.grader: Grader | None = None
        self.bar = None
        self.meter: WorkMeter | None = None
        self.capacity: list[int] = []
        self.progress: Progress | None = None  # the current coordinator's latest
        self.moved_before = 0  # paths moved by coordinators that have since died
        self.t_coordinator = 0.0

    def run(self, phases: list[Callable[[], list]], meter: WorkMeter) -> dict:
        """Run every phase's groups; returns the run's timing and fault record. Ctrl-C stops it
        within seconds, the checkpoints kept; the caller consolidates what finished."""
        interrupted = False
        self.meter = meter
        starting = self.start()
        try:
            self.await_ready(starting)
            for i, phase in enumerate(phases):
                items = phase()
                meter.plan(items, final=i == len(phases) - 1)
                if items:
                    self.run_phase(items)
            self.collect_figures()
        except KeyboardInterrupt:
            interrupted = True
            console.terminal().write("\nstopping: no new work; the actors are torn down and the checkpoints kept "
                                     "(Ctrl-C again to exit at once)\n")
            raise
        finally:
            self.finish(interrupted)
        self.facts["failed_groups"] = self.failed  # the caller consolidates what finished, then fails the run
        return self.facts

    # -- 1. start ----------------------------------------------------------------------------------
    def start(self) -> console.Step:
        cfg = self.cfg
        starting = console.begin(f"starting Ray and {cfg.replicas.count} {cfg.engine.kind} replica(s)")
        self.cluster = Cluster.start(cfg)
        self.facts["ray"] = self.cluster.ray
        self.facts["run_id"] = self.cluster.run_id  # actors are named <run_id>-leap-replica-<i>, ...
        self.facts["namespace"] = cfg.ray.namespace
        self.facts["oversubscribe"] = oversubscription(cfg)  # the value applied (null resolves by engine)
        self.grader = Grader()
        self.cluster.create_replicas(self.model)
        self.replaced = Replacements(self.cluster)
        # the coordinator loads its tokenizer and prompts while the engines load
        self.t_coordinator = time.monotonic()
        self.cluster.launch_coordinator(self.points, self.prompts, sampling_spec(cfg))
        return starting

    # -- 2. ready ----------------------------------------------------------------------------------
    def await_ready(self, starting: console.Step) -> None:
        t0 = time.monotonic()
        infos = self.cluster.await_replicas()
        self.facts["replicas_start_s"] = round(time.monotonic() - t0, 3)
        self.facts["replicas"] = infos
        console.end(starting, console.placement(infos))
        self.facts["coordinator"] = self.cluster.await_coordinator()
        self.facts["coordinator"]["ready_after_s"] = round(time.monotonic() - self.t_coordinator, 3)
        self.capacity = [int(i.get("capacity") or self.cfg.engine.max_num_seqs) for i in infos]
        answer(self.cluster.coordinator.set_capacity.remote(self.capacity), "the coordinator (set_capacity)")
        replicas.reset_stats(self.cluster.replicas)
        console.line(f"running {self.meter.groups_total} group(s) (problem x configuration) on {len(infos)} "
                     f"replica(s)")
        self.bar = console.progress_bar(self.cfg, self.meter)

    # -- 3. the groups -----------------------------------------------------------------------------
    def run_phase(self, items: list) -> None:
        # a coordinator replaced meanwhile is given the items from `recovery`
        drive(self.ask, self.recovery.attach(items), self.on_update)
        # a later phase (compute-matched) reads this one's results: finish grading first
        for g in self.grader.drain():
            self.write(g)

    def ask(self, method: str, *args):
        """A call to the coordinator that survives it: unreachable for a moment, it is retried
        with backoff (replicas.unavailable_retry_s); dead, or unreachable for longer, it is
        replaced (and the call's answer is None)."""
        backoff, waited = 0.25, 0.0
        while True:
            try:
                return answer(getattr(self.cluster.coordinator, method).remote(*args), f"the coordinator ({method})")
            except RayActorError as exc:  # dead or unreachable; anything else is not the coordinator's loss
                if unavailable(exc) and waited < self.cfg.replicas.unavailable_retry_s:
                    log.warning("the coordinator is unreachable (%s); retrying in %.2f s", type(exc).__name__, backoff)
                    time.sleep(backoff)
                    waited, backoff = waited + backoff, min(backoff * 2, 8.0)
                    continue
                self.replace_coordinator(exc)
                return None

    def replace_coordinator(self, cause: BaseException) -> None:
        self.moved_before += self.progress.failovers if self.progress is not None else 0
        self.progress = None
        self.cluster.restart_coordinator(self.recovery, self.capacity, cause, dead=self.replaced.dead())

    def on_update(self, update: Poll) -> None:
        """One poll's news: replicas to replace, checkpoints, finished and failed groups, the bar."""
        self.progress = update.progress
        self.replaced.saw(update.progress.replica_deaths)
        self.replaced.step()
        for point, problem_id, blob in update.checkpoints:
            self.recovery.checkpoint(point, problem_id, blob)
        for g in update.groups:
            self.recovery.returned(g["point"], g["problem_id"])
            self.grader.submit(g)
        for g in self.grader.ready():
            self.write(g)
        self.failed.extend(update.errors)
        for err in update.errors:
            self.recovery.failed(err)
            log.error("group failed: %s", err)
        self.meter.update(update)
        console.show(self.bar, self.meter)

    def write(self, g: dict) -> None:
        write_group(self.store, self.recovery, g, self.fp)

    # -- 4. figures --------------------------------------------------------------------------------
    def collect_figures(self) -> None:
        self.facts.update(generation_facts(replicas.live_stats(self.cluster.replicas)))
        coordinator = self.facts["coordinator"]
        try:
            coordinator.update(ray.get(self.cluster.coordinator.stats.remote(), timeout=30))
        except RayError as exc:  # a replaced coordinator's figures are gone with it
            log.warning("coordinator stats unavailable: %s", exc)
        self.replaced.saw(coordinator.get("replica_deaths", []), replace=False)
        self.facts["moved_paths"] = self.moved_before + coordinator.get("moved_paths", 0)

    # -- 5. finish ---------------------------------------------------------------------------------
    def finish(self, interrupted: bool) -> None:
        if self.bar is not None:
            self.bar.close()
        t_tail = time.monotonic()
        try:
            if not interrupted:
                for g in self.grader.drain():  # groups that finished before a failure are saved
                    self.write(g)
        finally:  # the actors go even when grading could not finish
            self.facts.update(self.replaced.facts())
            self.facts["grading_tail_s"] = round(time.monotonic() - t_tail, 3)
            self.facts.update(self.grader.facts())
            self.grader.close(kill=interrupted)
            self.cluster.teardown()  # and the placement group(s)


def write_group(store: ResultStore, recovery: Recovery, g: dict, fp: dict) -> None:
    """A finished group's result part, then its checkpoint is no longer needed."""
    store.write_group(g["point"], g["problem_id"], g["paths"], g["messages"],
                      fingerprint.for_group(fp, g["point"], g["problem_id"]))
    recovery.written(g["point"], g["problem_id"])


def generation_facts(stats: list[dict]) -> dict:
    """Generation time from the first request reaching a replica to the last token any replica
    produced, how busy each replica was in that window, and per sweep point the engine seconds
    its requests took (`points.<point>.engine_s`: each replica's busy time split equally among
    the requests in flight, summed over the replicas that answered)."""
    firsts = [s["first_request_t"] for s in stats if s.get("first_request_t")]
    lasts = [s["last_token_t"] for s in stats if s.get("last_token_t")]
    gen = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    engine_s: dict[str, float] = {}
    for s in stats:
        for point, seconds in (s.get("busy_by_point") or {}).items():
            engine_s[point] = engine_s.get(point, 0.0) + seconds
    return {
        "generation_s": round(gen, 3),
        "replica_stats": [{**s, "busy_fraction": round(s["busy_s"] / gen, 4) if gen and s.get("busy_s") else None}
                          for s in stats],
        "points": {point: {"engine_s": round(seconds, 4)} for point, seconds in sorted(engine_s.items())},
    }
