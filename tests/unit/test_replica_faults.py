"""Replica faults inside the coordinator, in-process over fake replicas on a virtual clock:
a replica that stops answering is retired at its request deadline, paths wait for a
replacement when none is left, and requests of an earlier coordinator generation never change
what a replica holds. Every disturbed run must write exactly the undisturbed run's paths."""

import asyncio

import pytest
from aiotools import VirtualClock

from orchestrator.coordinator.assign import ReplicaPool
from orchestrator.config import CONF_DIR
from orchestrator.coordinator.actor import Coordinator, RequestDeadline
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import GenRequest, PathStateMissing, Problem, ReplicaDead, SamplingSpec, StaleRequest
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle
from tests.inprocess import Dies, drain

PROMPTS = load_prompts(CONF_DIR / "prompts" / "default.yaml")
PROBLEMS = [Problem(f"p{i}", "synthetic", f"What is {i} + {i}?", str(2 * i)) for i in range(4)]
ENGINE = {"latency": {"step_base_s": 0.01, "max_num_seqs": 8}, "think_end_prob": 0.05, "summary_words": 8}
PARAMS = LeapParams(paths=4, T=200, max_rounds=3, top_k=2, summary_tokens=48, answer_tokens=24)


class Hangs(FakeReplica):
    """Answers its first `good` requests, then never again (an engine or NCCL hang)."""

    def __init__(self, index, engine, good):
        super().__init__(index, engine=engine)
        self.good = good

    async def generate(self, req):
        if self.served >= self.good:
            await asyncio.Event().wait()
        return await super().generate(req)


class Blinks(FakeReplica):
    """Unreachable (a network blip) for its requests number `first` to `first + n - 1`."""

    def __init__(self, index, engine, first, n):
        super().__init__(index, engine=engine)
        self.first, self.n, self.calls = first, n, 0

    async def generate(self, req):
        self.calls += 1
        if self.first <= self.calls < self.first + self.n:
            from ray.exceptions import ActorUnavailableError

            await asyncio.sleep(0.05)
            raise ActorUnavailableError("connection reset by peer", None)
        return await super().generate(req)


def run(replicas, timeout=None, wait_s=None, revive_after=None, **kw):
    """Run PROBLEMS; returns (rows, coordinator stats, errors). `revive_after`: seconds after
    which a fresh replica takes slot 0."""

    async def main():
        with VirtualClock().patch_loop():
            coord = Coordinator([LocalHandle(r) for r in replicas], "fake", {"pt": PARAMS}, PROMPTS,
                                SamplingSpec(), capacity=[8] * len(replicas), epoch=1,
                                request_timeout=timeout, replica_wait_s=wait_s, **kw)
            await coord.submit([("pt", p, {}) for p in PROBLEMS])
            if revive_after is not None:
                async def revive():
                    await asyncio.sleep(revive_after)
                    await coord.add_replica(0, LocalHandle(FakeReplica(0, engine=ENGINE)), 8)
                asyncio.ensure_future(revive())
            rows, errors = await drain(coord)
            return rows, await coord.stats(), errors

    return asyncio.run(main())


def content(rows):
    return sorted((r["problem_id"], r["path"], r["text"], r["answer"], r["sampled_tokens"]) for r in rows)


@pytest.fixture(scope="module")
def undisturbed():
    rows, _, errors = run([FakeReplica(i, engine=ENGINE) for i in range(2)])
    assert not errors and len(rows) == len(PROBLEMS) * PARAMS.paths
    return content(rows)


def test_a_stuck_replica_is_retired_at_its_deadline_and_nothing_changes(undisturbed):
    replicas = [Hangs(0, ENGINE, good=6), FakeReplica(1, engine=ENGINE)]
    rows, stats, errors = run(replicas, timeout={"floor_s": 30.0, "factor": 10.0})
    assert not errors
    assert content(rows) == undisturbed
    (death,) = stats["replica_deaths"]
    assert death["replica"] == 0 and "alive but stuck" in death["cause"]
    assert stats["moved_paths"] >= 1


def test_with_no_replica_left_paths_wait_for_a_replacement(undisturbed):
    replicas = [Dies(0, ENGINE, good=5)]
    rows, stats, errors = run(replicas, wait_s=600.0, revive_after=50.0)
    assert not errors
    assert content(rows) == undisturbed
    assert [d["replica"] for d in stats["replica_deaths"]] == [0]


def test_with_no_replica_left_and_none_coming_the_groups_fail_naming_the_wait():
    rows, stats, errors = run([Dies(0, ENGINE, good=5)], wait_s=20.0)
    assert errors and all("none replaced the dead ones within 20 s" in e for e in errors)


def test_deadline_follows_the_measured_speed_with_a_floor():
    d = RequestDeadline(floor_s=60.0, factor=10.0)
    assert d.seconds(0, 1000) == 240.0  # nothing measured yet: 4 x the floor
    d.observe(1, 3.2, 320)  # 10 ms a token on replica 1
    assert d.seconds(0, 1000) == pytest.approx(100.0)  # replica 0 borrows what replica 1 shows
    d.observe(0, 0.64, 64)
    assert d.seconds(0, 100) == 60.0  # the floor
    d.observe(0, 10.0, 5)  # a short answer that queued: counted as 32 tokens
    assert d.seconds(0, 1000) == pytest.approx(10.0 * 1000 * 10.0 / 32)
    assert RequestDeadline(None).seconds(0, 10**6) is None


def test_pool_routes_paths_of_a_dead_replica_once_one_is_back():
    pool = ReplicaPool(2)
    pool.place(["a", "b", "c"])
    assert pool.died(0, "gone", 1.0) is True and pool.died(0, "gone", 2.0) is False
    assert set(pool.assign.values()) == {1}
    pool.died(1, "gone too", 3.0)
    assert not pool.any_alive()
    with pytest.raises(ReplicaDead):
        pool.route("a")
    pool.revive(0)
    assert pool.route("a") == 0 and pool.needs_full("a")
    assert [d["replica"] for d in pool.deaths] == [0, 1]


def test_fenced_replica_refuses_earlier_generations_and_keeps_its_state():
    async def main():
        rep = FakeReplica(0, engine={"latency": {"step_base_s": 0.01}})
        first = GenRequest("g/0", keep=0, append=[], max_tokens=50, full=list(b"hello"), epoch=1)
        await rep.generate(first)
        held = list(rep.paths["g/0"])
        # a long request of generation 1 is running when generation 2 takes over
        slow = asyncio.ensure_future(rep.generate(
            GenRequest("g/0", keep=len(held), append=list(b" more"), max_tokens=400, epoch=1)))
        await asyncio.sleep(0.05)
        assert await rep.fence(2) == 1
        new = GenRequest("g/0", keep=len(held), append=[], max_tokens=20, full=held, epoch=2)
        res = await rep.generate(new)
        after = list(rep.paths["g/0"])
        assert after == held + res.token_ids
        with pytest.raises(StaleRequest):
            await slow
        assert list(rep.paths["g/0"]) == after  # the stale request changed nothing
        with pytest.raises(StaleRequest):
            await rep.generate(GenRequest("g/0", keep=3, append=[], max_tokens=5, epoch=1))
        await rep.drop(["g/0"], epoch=1)  # an earlier generation cannot drop it either
        assert list(rep.paths["g/0"]) == after
        await rep.drop(["g/0"], epoch=2)
        with pytest.raises(PathStateMissing):
            await rep.generate(GenRequest("g/0", keep=0, append=[], max_tokens=5, epoch=2))

    asyncio.run(main())


def test_a_blip_is_retried_and_the_replica_kept(undisturbed):
    pytest.importorskip("ray")
    blinks = Blinks(1, ENGINE, first=3, n=4)
    rows, stats, errors = run([FakeReplica(0, engine=ENGINE), blinks], unavailable_retry_s=30)
    assert not errors and content(rows) == undisturbed
    assert stats["replica_deaths"] == [] and blinks.calls > 6  # it went on serving after the blip


def test_unavailable_for_longer_than_the_retry_window_counts_as_dead(undisturbed):
    pytest.importorskip("ray")
    rows, stats, errors = run([FakeReplica(0, engine=ENGINE), Blinks(1, ENGINE, first=3, n=10 ** 6)],
                              unavailable_retry_s=5)
    assert not errors and content(rows) == undisturbed
    (death,) = stats["replica_deaths"]
    assert death["replica"] == 1 and "ActorUnavailableError" in death["cause"]


def test_a_slow_replica_that_keeps_finishing_work_is_never_retired(undisturbed):
    """Requests queue behind each other (2 decode slots, 8 paths a replica) far past their
    deadlines (factor 1), but the replicas finish requests all along: slow, not stuck. Without
    the progress check the queued requests would get their replicas killed."""
    slow = {**ENGINE, "latency": {"step_base_s": 0.05, "max_num_seqs": 2}}
    rows, stats, errors = run([FakeReplica(i, engine=slow) for i in range(2)],
                              timeout={"floor_s": 3.0, "factor": 1.0})
    assert not errors and content(rows) == undisturbed
    assert stats["replica_deaths"] == []
