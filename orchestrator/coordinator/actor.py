"""The coordinator: runs every group's round state machine and moves requests to replicas.

It is an async Ray actor (its own CPU bundle, off the GPUs); it also runs in-process over local
replica handles (`engines/local.py`) for the simulation benchmark. Each group (sweep point x
problem) runs as its own asyncio task, so problems advance independently and a slow one never
holds back another; barriers are per group. Paths stay on one replica (`assign.ReplicaPool`) and
the coordinator keeps every path's token state, so a dead replica's paths move to live ones.

Admission keeps the replicas' batches full: groups are admitted while the paths still alive stay
under `oversubscribe` x the replicas' combined capacity (their `max_num_seqs`); when paths finish
or wait at a barrier the engines' queues refill from the groups admitted beyond capacity, and
finished paths make room for new groups at once.

Schedules:
  leap      per-group barriers, a path's next request goes out the moment its barrier releases.
  lockstep  the reference's scheme, for comparison: groups run in waves, and inside a wave every
            phase is a global barrier (all paths of all groups of the wave finish their segment
            before any summary starts, and so on).

The driver calls `submit()` and then `poll()` until every group is done; `poll` hands back the
finished groups' rows (ungraded: the driver grades off this process) and checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError

from ..core.group import Group
from ..core.params import LeapParams
from ..core.prompts import PromptSet
from ..core.snapshot import CheckpointError
from ..core.types import GenRequest, GenResult, PathStateMissing, Problem, ReplicaDead, SamplingSpec, StaleRequest
from ..engines import node_id
from ..engines.tokenizer import load_tokenizer, render_prompt
from ..telemetry import Telemetry
from .assign import ReplicaPool
from .embedding import load_embedder
from .messages import Poll, Progress

log = logging.getLogger(__name__)
DROP_TIMEOUT_S = 60.0  # a replica's `drop` (freeing a finished path's state) answers within this

SCHEDULES = ("leap", "lockstep")


@dataclass
class _Pending:
    point: str
    problem: Problem
    params: LeapParams
    checkpoint: bytes | None = None


@dataclass
class _GroupProgress:
    point: str
    problem: str
    paths: int
    budget: int  # the group's work in all: paths x LeapParams.sampled_budget
    round: int = 1
    active: int = 0
    done: bool = False
    work: int = 0  # sampled tokens done (`Group.work`)


@dataclass
class _Timing:
    """Coordinator-side measurements, reported by `stats()`."""

    barrier_ms: list[float] = field(default_factory=list)  # CPU time to release one barrier
    barrier_paths: list[int] = field(default_factory=list)
    barrier_wait_s: float = 0.0  # path-seconds spent waiting at barriers
    request_ms: float = 0.0  # coordinator time handling results (incl. barriers)
    requests: int = 0
    first_send: float | None = None
    last_result: float | None = None


class Coordinator:
    def __init__(
        self,
        replicas: list,
        tokenizer: str,
        params: dict[str, LeapParams],
        prompts: PromptSet,
        sampling: SamplingSpec,
        placement: str = "spread",
        max_groups_in_flight: int | None = None,
        embed_model: str | None = None,
        schedule: str = "leap",
        oversubscribe: float = 1.5,
        capacity: list[int] | None = None,
        epoch: int = 0,
        request_timeout: dict | None = None,
        unavailable_retry_s: float = 30.0,
        replica_wait_s: float | None = None,
        dead: list[int] | None = None,
        plan: bool = False,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"replicas.schedule must be one of {SCHEDULES}, got {schedule!r}")
        t0 = time.perf_counter()
        self.replicas = list(replicas)
        self.pool = ReplicaPool(len(self.replicas), placement)
        self.tok = load_tokenizer(tokenizer)
        self.params = params
        self.prompts = prompts
        self.sampling = sampling
        self.schedule = schedule
        self.max_groups = max_groups_in_flight
        self.oversubscribe = float(oversubscribe)
        self.capacity = list(capacity) if capacity else None
        self.embed = None
        if any(p.similarity == "embedding" for p in params.values()):
            self.embed = load_embedder(embed_model)
        self.queue: deque[_Pending] = deque()
        self.live_paths = 0  # paths of admitted groups not yet done
        self.finished: list[dict] = []
        self.checkpoints: list[tuple[str, str, bytes]] = []
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task] = set()
        self.progress: dict[str, _GroupProgress] = {}
        self.started = time.monotonic()
        self.sampled_tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.timing = _Timing()
        self.peak_paths = 0
        self.rss_start = _rss_bytes()
        self.wake = asyncio.Event()  # binds to the running loop at first use
        self.node = node_id()
        self.tm = Telemetry("coordinator")  # Ray metrics; a no-op outside Ray
        # fault handling: this coordinator's generation (replicas refuse requests of earlier
        # ones), request deadlines, retries of a replica unreachable for a moment, and how long
        # paths wait for a replacement when no replica is left
        self.epoch = int(epoch)
        self.deadline = RequestDeadline(**(request_timeout or {}))
        self._inflight: dict[int, Counter] = {}  # replica -> {request tokens: requests in flight}
        self.unavailable_retry_s = float(unavailable_retry_s)
        self.replica_wait_s = replica_wait_s
        self.revived = asyncio.Event()
        # a plan's coordinator (driver/planner.py) takes no checkpoints (a plan never resumes)
        # and hands back rows of counts, no text
        self.plan = plan
        for r in dead or []:  # known dead before this coordinator started (a restart)
            self.pool.alive[r] = False
        self.init_s = time.perf_counter() - t0

    # -- driver API ---------------------------------------------------------------------------
    async def ready(self) -> dict:
        """Answers once the tokenizer (and embedder) are loaded: the driver calls it while the
        engines load, so the coordinator is never on the critical path."""
        return {"node": self.node, "init_s": round(self.init_s, 3)}

    async def set_capacity(self, capacity: list[int]) -> None:
        """Each replica's concurrent-sequence capacity (from its `info()`), once they are up."""
        self.capacity = [max(1, int(c)) for c in capacity]
        self._admit()

    async def add_replica(self, r: int, handle, capacity: int) -> None:
        """A new replica (started by the driver) takes the place of dead replica r; paths that
        waited for a live replica go on."""
        self.replicas[r] = handle
        if self.capacity:
            self.capacity[r] = max(1, int(capacity))
        self.pool.revive(r)
        self.revived.set()
        self._admit()

    async def submit(self, items: list[tuple]) -> int:
        """Queue groups: (sweep point, problem, per-group overrides of the point's LeapParams[,
        checkpoint bytes]); they are admitted as capacity allows."""
        for item in items:
            point, problem, overrides = item[:3]
            checkpoint = item[3] if len(item) > 3 else None
            params = replace(self.params[point], **(overrides or {}))
            key = f"{point}|{problem.id}"
            self.progress[key] = _GroupProgress(point, problem.id, params.paths,
                                                params.paths * params.sampled_budget)
            self.queue.append(_Pending(point, problem, params, checkpoint))
        self._admit()
        return len(items)

    async def poll(self, timeout: float = 1.0) -> Poll:
        """Finished groups and checkpoints since the last poll, plus a progress snapshot."""
        if not self.finished and not self.errors and not self.checkpoints and not self._all_done():
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        done, self.finished = self.finished, []
        errors, self.errors = self.errors, []
        ckpts, self.checkpoints = self.checkpoints, []
        snap = self.snapshot()
        self.tm.active_paths(snap.active_paths)
        per_round: dict[int, int] = {}
        for r in snap.rounds.values():
            per_round[r] = per_round.get(r, 0) + 1
        self.tm.groups_per_round(per_round)
        return Poll(groups=done, errors=errors, checkpoints=ckpts, progress=snap, all_done=self._all_done())

    def snapshot(self) -> Progress:
        groups = list(self.progress.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return Progress(
            groups_total=len(groups),
            groups_done=sum(g.done for g in groups),
            active_paths=sum(g.active for g in groups if not g.done),
            rounds={f"{g.point}|{g.problem}": g.round for g in groups if not g.done and g.active},
            work={f"{g.point}|{g.problem}": g.work for g in groups if not g.done and g.work},
            work_done=sum(g.budget if g.done else min(g.work, g.budget) for g in groups),
            work_budget=sum(g.budget for g in groups),
            tokens_per_s=self.sampled_tokens / elapsed,
            sampled_tokens=self.sampled_tokens,
            cache_hit_rate=self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None,
            replicas_alive=sum(self.pool.alive),
            failovers=self.pool.moved,
            replica_deaths=list(self.pool.deaths),
            node=self.node,
        )

    async def stats(self) -> dict:
        """What the benchmark and run_info.json report about the coordinator itself."""
        t = self.timing
        ms = sorted(t.barrier_ms)
        rss = _rss_bytes()
        return {
            "schedule": self.schedule,
            "barriers": len(ms),
            "barrier_ms_mean": round(sum(ms) / len(ms), 3) if ms else None,
            "barrier_ms_p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3) if ms else None,
            "barrier_ms_max": round(ms[-1], 3) if ms else None,
            "barrier_paths_mean": round(sum(t.barrier_paths) / len(t.barrier_paths), 1) if ms else None,
            "barrier_wait_path_s": round(t.barrier_wait_s, 3),
            "result_handling_ms_per_request": round(t.request_ms / t.requests, 4) if t.requests else None,
            "requests": t.requests,
            "first_send_t": t.first_send,
            "last_result_t": t.last_result,
            "peak_paths_in_flight": self.peak_paths,
            "rss_bytes": rss,
            "rss_growth_per_path_bytes": round((rss - self.rss_start) / self.peak_paths) if self.peak_paths else None,
            "init_s": round(self.init_s, 3),
            "replica_deaths": list(self.pool.deaths),
            "moved_paths": self.pool.moved,
        }

    def _all_done(self) -> bool:
        return not self.queue and not self.tasks

    # -- admission ----------------------------------------------------------------------------
    def _target_paths(self) -> int | None:
        if not self.capacity:
            return None
        live = [c for c, ok in zip(self.capacity, self.pool.alive) if ok]
        return max(1, math.ceil(self.oversubscribe * sum(live)))

    def _admit(self) -> None:
        if self.schedule == "lockstep":
            if not self.tasks and self.queue:
                self._spawn(self._run_wave(self._take_wave()))
            return
        while self.queue and self._room_for(self.queue[0].params.paths):
            pend = self.queue.popleft()
            self._reserve(pend)
            self._spawn(self._guarded(pend))

    def _reserve(self, pend: _Pending) -> None:
        """Count an admitted group's paths as live at once (its task opens it a moment later)."""
        self.live_paths += pend.params.paths
        self.peak_paths = max(self.peak_paths, self.live_paths)

    def _room_for(self, paths: int, groups: int | None = None, live: int | None = None) -> bool:
        """Whether a group of `paths` may join `groups` admitted groups holding `live` paths
        (default: what is admitted now). The first group always may: the run makes progress."""
        groups = len(self.tasks) if groups is None else groups
        live = self.live_paths if live is None else live
        if not groups:
            return True
        if self.max_groups is not None and groups >= self.max_groups:
            return False
        target = self._target_paths()
        if target is None:  # capacity unknown: the fixed cap (or 8 groups) decides
            return groups < (self.max_groups or 8)
        return live + paths <= target

    def _take_wave(self) -> list[_Pending]:
        """Lock-step: the next wave, admitted by the same rule as groups are one by one."""
        wave: list[_Pending] = []
        paths = 0
        while self.queue and self._room_for(self.queue[0].params.paths, len(wave), paths):
            wave.append(self.queue.popleft())
            self._reserve(wave[-1])
            paths += wave[-1].params.paths
        return wave

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def _done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            self._admit()
            self.wake.set()

        task.add_done_callback(_done)

    # -- groups -------------------------------------------------------------------------------
    def _open(self, pend: _Pending) -> Group:
        prompt = render_prompt(self.tok, self.prompts, pend.problem, pend.params)
        key = f"{pend.point}|{pend.problem.id}"
        group = None
        if pend.checkpoint is not None:
            try:
                group = Group.restore(pend.checkpoint, pend.problem, prompt, pend.params, self.prompts,
                                      self.tok, self.sampling, embed=self.embed, sweep_point=pend.point)
            except CheckpointError as exc:  # another prompt file or tokenizer: start afresh
                log.warning("group %s: checkpoint not usable (%s); running it from the start", key, exc)
        if group is None:
            group = Group(key, pend.problem, prompt, pend.params, self.prompts, self.tok,
                          self.sampling, embed=self.embed, sweep_point=pend.point)
        live = [p.key for p in group.paths if p.phase != "done"]
        self.pool.place(live)
        self.live_paths -= pend.params.paths - len(live)  # a restored group may have fewer
        prog = self.progress[key]
        prog.active = len(live)
        prog.work = group.work()  # a restored group's paths have done part of it
        return group

    def _close(self, group: Group, pend: _Pending, error: BaseException | None = None) -> None:
        for p in group.paths:
            if self.pool.assign.get(p.key) is not None:
                self._path_done(group, p.key)
        self.progress[group.key].done = True
        self.tm.group_done()
        if error is not None:
            log.error("group %s failed: %s: %s", group.key, type(error).__name__, error)
            self.errors.append(f"{group.key}: {type(error).__name__}: {error}")
            return
        self.finished.append({"point": pend.point, "problem_id": pend.problem.id,
                              "benchmark": pend.problem.benchmark, "kind": pend.problem.kind,
                              "paths": group.counts() if self.plan else group.records(),
                              "messages": list(group.messages)})

    def _path_done(self, group: Group, key: str) -> None:
        r = self.pool.release(key)
        self.live_paths -= 1
        if r is not None and self.pool.alive[r]:
            asyncio.ensure_future(self._drop(r, [key]))

    async def _drop(self, r: int, keys: list[str]) -> None:
        try:
            await asyncio.wait_for(_awaitable(self.replicas[r].drop.remote(keys, self.epoch)), DROP_TIMEOUT_S)
        except Exception as exc:  # freeing memory is best effort (a stuck replica is found by its requests)
            log.debug("could not drop paths on replica %d: %s", r, exc)

    async def _guarded(self, pend: _Pending) -> None:
        group = None
        try:
            group = self._open(pend)
            await self._run_group(group)
        except Exception as exc:  # one broken group must not sink the others
            if group is None:
                self.live_paths -= pend.params.paths
                self.progress[f"{pend.point}|{pend.problem.id}"].done = True
                self.errors.append(f"{pend.point}|{pend.problem.id}: {type(exc).__name__}: {exc}")
                return
            self._close(group, pend, exc)
            return
        self._close(group, pend)

    async def _run_group(self, group: Group) -> None:
        pending: set[asyncio.Future] = set()
        waiting: dict[str, float] = {}
        try:
            while not group.done:
                for req in group.requests():
                    pending.add(asyncio.ensure_future(self._send(group, req)))
                if not pending:
                    raise RuntimeError(f"group {group.key} is stuck: no request can run")
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failures = [f.exception() for f in finished]  # takes every outcome
                failure = next((e for e in failures if e is not None), None)
                if failure is not None:
                    raise failure
                for fut in finished:
                    self._apply(group, fut.result(), waiting)
        finally:  # a failed group: its other requests are of no use any more
            for fut in pending:
                fut.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _run_wave(self, wave: list[_Pending]) -> None:
        """Lock-step: every phase of every group in the wave is one global barrier."""
        opened: list[tuple[_Pending, Group]] = []
        for pend in wave:
            try:
                opened.append((pend, self._open(pend)))
            except Exception as exc:  # a group that cannot open (a damaged checkpoint, a prompt that
                # does not render) fails alone, as in `_guarded`
                self.live_paths -= pend.params.paths
                self.progress[f"{pend.point}|{pend.problem.id}"].done = True
                self.errors.append(f"{pend.point}|{pend.problem.id}: {type(exc).__name__}: {exc}")
        waiting: dict[str, float] = {}
        live = list(opened)
        arrived: list[float] = []

        async def timed(g: Group, req: GenRequest) -> GenResult:
            res = await self._send(g, req)
            arrived.append(asyncio.get_running_loop().time())
            return res

        while live:
            batch = [(pend, g, req) for pend, g in live for req in g.requests()]
            arrived.clear()
            results = await asyncio.gather(*(timed(g, req) for _, g, req in batch),
                                           return_exceptions=True)
            end = asyncio.get_running_loop().time()  # the global barrier: all waited for the last
            self.timing.barrier_wait_s += sum(end - t for t in arrived)
            failed: dict[str, BaseException] = {}
            for (pend, g, _), res in zip(batch, results):
                if g.key in failed:
                    continue
                if isinstance(res, BaseException):
                    failed[g.key] = res
                    continue
                try:
                    self._apply(g, res, waiting)
                except Exception as exc:  # this group's failure, recorded for it alone
                    failed[g.key] = exc
            still = []
            for pend, g in live:
                if g.key in failed:
                    self._close(g, pend, failed[g.key])
                elif g.done:
                    self._close(g, pend)
                elif not g.can_request():
                    self._close(g, pend, RuntimeError(f"group {g.key} is stuck: no request can run"))
                else:
                    still.append((pend, g))
            live = still
            self.wake.set()

    def _apply(self, group: Group, res: GenResult, waiting: dict[str, float]) -> None:
        """Feed one result to its group; time barrier work; hand out a checkpoint after each."""
        t0 = time.perf_counter()
        released = group.barriers_released
        before = group.path_work(res.path_key)
        group.on_result(res)
        now = asyncio.get_running_loop().time()  # the event loop's clock: virtual in simulation
        if group.barriers_released != released:
            self.timing.barrier_ms.append((time.perf_counter() - t0) * 1e3)
            self.timing.barrier_paths.append(len(waiting) + 1)
            for t in waiting.values():
                self.timing.barrier_wait_s += now - t
            if waiting:
                self.tm.barrier_wait(now - min(waiting.values()))
            waiting.clear()
            if not self.plan:
                self.checkpoints.append((group.sweep_point, group.problem.id, group.snapshot()))
            self.wake.set()
        else:
            phase = next(p.phase for p in group.paths if p.key == res.path_key)
            if phase == "barrier":
                waiting[res.path_key] = now
        self.timing.request_ms += (time.perf_counter() - t0) * 1e3
        self.timing.requests += 1
        self.timing.last_result = time.time()
        for p in group.paths:
            if p.phase == "done" and self.pool.assign.get(p.key) is not None:
                self._path_done(group, p.key)
        prog = self.progress[group.key]
        prog.round = min((p.round for p in group.paths if p.phase != "done"), default=prog.round)
        prog.active = sum(p.phase != "done" for p in group.paths)
        if group.barriers_released != released:  # a barrier may end other paths too
            prog.work = group.work()
        else:  # only this path moved: cheap enough per result for a plan's millions of requests
            prog.work += group.path_work(res.path_key) - before
        self._admit()

    async def _send(self, group: Group, req: GenRequest) -> GenResult:
        """Send one request to the path's replica and return its result (a probe, `branch`, goes
        there too: it reuses the path's cached prefix). A replica that dies,
        stays unreachable past `unavailable_retry_s`, or overruns the request's deadline is
        retired (and killed) and the request goes to another; with none alive it waits for a
        replacement (`add_replica`) at most `replica_wait_s`."""
        key = req.path_key
        req.epoch = self.epoch
        if self.timing.first_send is None:
            self.timing.first_send = time.time()
        lost = 0
        while True:
            r = await self._route(key)
            req.full = group.full_tokens(key) if self.pool.needs_full(key) else None
            try:
                res: GenResult = await self._call(r, req)
            except PathStateMissing:
                self.pool.forget(key)  # e.g. a restarted actor: send everything again
                lost += 1
            except _ReplicaLost as exc:
                self._retire(r, str(exc))
                group.replica_lost(key)
                lost += 1
            else:
                break
            if lost > 3 * len(self.replicas) + 3:
                raise ReplicaDead(f"path {key}: {lost} replicas failed to serve it")
        if not req.branch:  # a probe leaves the replica's copy of the path as it was
            self.pool.served(key, r)
        req.full = None
        self.sampled_tokens += len(res.token_ids)
        self.prompt_tokens += res.prompt_tokens
        self.cached_tokens += res.cached_tokens
        self.tm.result(len(res.token_ids), res.prompt_tokens, res.cached_tokens, replica=res.replica)
        return res

    async def _route(self, key: str) -> int:
        """The live replica for `key`; with none alive, wait for a replacement (bounded)."""
        if not self.pool.any_alive():
            wait = self.replica_wait_s
            if not wait:
                raise ReplicaDead("no live replica left")
            clock = asyncio.get_running_loop().time
            t0 = clock()
            while not self.pool.any_alive():
                left = wait - (clock() - t0)
                if _expired(left):
                    raise ReplicaDead(f"no live replica left, and none replaced the dead ones within {wait:g} s")
                self.revived.clear()
                try:
                    await asyncio.wait_for(self.revived.wait(), min(left, 5.0))
                except asyncio.TimeoutError:
                    pass
        return self.pool.route(key)

    async def _call(self, r: int, req: GenRequest) -> GenResult:
        """One `generate` on replica r, within its deadline; transient unavailability is
        retried with backoff. Raises `_ReplicaLost` when the replica must be given up."""
        backoff, waited = 0.25, 0.0
        tokens = req.max_tokens + len(req.append)
        clock = asyncio.get_running_loop().time  # the loop's clock: virtual in simulation
        while True:
            t0 = clock()
            task = asyncio.ensure_future(_awaitable(self.replicas[r].generate.remote(req)))
            inflight = self._inflight.setdefault(r, Counter())
            inflight[tokens] += 1
            try:
                res = await self._within_deadline(task, r, tokens, t0)
            except asyncio.TimeoutError:
                raise _ReplicaLost(f"no answer to a {req.kind} request of {req.max_tokens} tokens within "
                                   f"{self.deadline.seconds(r, tokens):.0f} s (replicas.request_timeout_floor_s, "
                                   f"replicas.request_timeout_factor): alive but stuck") from None
            except (PathStateMissing, StaleRequest):
                raise
            except (ReplicaDead, RayActorError) as exc:  # anything else is the request's own failure
                kind = _failure_kind(exc)
                if kind == "unavailable" and waited < self.unavailable_retry_s and self.pool.alive[r]:
                    log.warning("replica %d unavailable (%s); retrying in %.2f s", r, type(exc).__name__, backoff)
                    await asyncio.sleep(backoff)
                    waited += backoff
                    backoff = min(backoff * 2, 8.0)
                    continue
                raise _ReplicaLost(f"{type(exc).__name__}: {exc}") from None
            finally:
                inflight[tokens] -= 1
                if not inflight[tokens]:
                    del inflight[tokens]
            self.deadline.observe(r, clock() - t0, len(res.token_ids))
            return res

    async def _within_deadline(self, task: asyncio.Future, r: int, tokens: int, t0: float):
        """Await `task`; the deadline is looked at again every few seconds, since what other
        requests measure meanwhile may lengthen (or first set) it. At the deadline the replica
        is asked how far it got: one that does not answer is stuck; one that answers gets
        another window as long as it finished some request during the last one (slow, not
        stuck), so a slow cluster is never killed for being slow. A replica that answers but
        finishes nothing for a whole window (an engine or NCCL hang) is stuck; that window is
        the deadline of the longest request it holds, which a short request may queue behind."""
        if self.deadline.floor_s is None:
            return await task
        clock = asyncio.get_running_loop().time
        mark = None
        try:
            while True:
                left = t0 + self.deadline.seconds(r, tokens) - clock()
                if _expired(left):
                    now = await self._progress_mark(r)
                    if now is None or now == mark:
                        raise asyncio.TimeoutError
                    mark, t0 = now, clock()
                    tokens = max([tokens, *self._inflight.get(r, ())])
                    continue
                done, _ = await asyncio.wait({task}, timeout=min(left, 5.0))
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _progress_mark(self, r: int):
        """What replica r has finished so far (requests, tokens), or None when it does not answer
        within min(30 s, the deadline floor)."""
        ask = asyncio.ensure_future(_awaitable(self.replicas[r].stats.remote()))
        try:
            st = await asyncio.wait_for(ask, timeout=min(30.0, self.deadline.floor_s))
        except Exception:  # no answer in time, or dead: either way it serves nothing
            return None
        return st.get("new_tokens"), st.get("last_token_t")  # requests started are no progress

    def _retire(self, r: int, cause: str) -> None:
        """Replica r is lost: its paths move; a replica that is alive but stuck is killed, so
        that it frees its resources and its slot can be given to a replacement."""
        moved = self.pool.moved
        if self.pool.died(r, cause, time.time()):
            _kill(self.replicas[r])
        self.tm.failover(self.pool.moved - moved)


class _ReplicaLost(Exception):
    """A replica can no longer be used (dead, unreachable, or past a request's deadline)."""


def _failure_kind(exc: BaseException) -> str | None:
    """'unavailable' for a replica unreachable for a moment (a network blip: worth a retry),
    'dead' for a replica that is gone, None for any other failure (the request's own)."""
    if isinstance(exc, ReplicaDead):
        return "dead"
    if isinstance(exc, ActorUnavailableError):  # a subclass of RayActorError: test it first
        return "unavailable"
    if isinstance(exc, RayActorError):
        return "dead"
    return None


def _expired(left: float) -> bool:
    """Whether a deadline `left` seconds away has come. An event loop runs timers due within its
    clock's resolution at once; under a virtual clock (simulations) time does not move on for
    them, so a wait shorter than that would be asked again forever."""
    return left <= getattr(asyncio.get_running_loop(), "_clock_resolution", 0.0)


async def _awaitable(ref):
    return await ref


def _kill(handle) -> None:
    """Kill a Ray actor (no restart); in-process handles have nothing to kill."""
    if isinstance(handle, ActorHandle):
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # already gone: nothing to free
            log.debug("kill: %s", exc)


class RequestDeadline:
    """How long a request may take on a replica: `factor` x its tokens x the slowest recent
    seconds-per-token seen on that replica (on any replica before it has served one), and never
    less than `floor_s`. Queueing inside a busy engine is part of what is measured, so a busy
    replica gets a longer deadline. `floor_s` None: no deadline (in-process simulation)."""

    def __init__(self, floor_s: float | None = None, factor: float = 10.0, window: int = 32):
        self.floor_s = floor_s
        self.factor = factor
        self.recent: dict[int, deque] = {}
        self.window = window

    def observe(self, r: int, seconds: float, tokens: int) -> None:
        # a short answer that waited in a queue would claim a huge per-token time: count at
        # least 32 tokens
        self.recent.setdefault(r, deque(maxlen=self.window)).append(seconds / max(tokens, 32))

    def seconds(self, r: int, tokens: int) -> float | None:
        if self.floor_s is None:
            return None
        seen = self.recent.get(r) or [x for d in self.recent.values() for x in d]
        if not seen:  # nothing measured anywhere yet (the first wave): generous, still bounded
            return 4 * self.floor_s
        return max(self.floor_s, self.factor * tokens * max(seen))


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc; peak RSS from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
