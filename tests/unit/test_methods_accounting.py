"""Every method of issue 18 through the coordinator, in-process over fake replicas (one with a
latency model): the replicas' own counters equal what the rows record, request by request
(prompt, cached and new tokens, answer probes included), each point's busy seconds add up to the
replicas' busy time, two runs write the same rows, and a replica dying mid-run (probes and
confidence-asking segments move with their paths) changes nothing a path wrote."""

import asyncio

from aiotools import VirtualClock

from orchestrator.config import CONF_DIR
from orchestrator.coordinator.actor import Coordinator
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem, SamplingSpec
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle
from tests.inprocess import Dies, drain

PROMPTS = load_prompts(CONF_DIR / "prompts" / "default.yaml")
PROBLEMS = [Problem(f"p{i}", "synthetic", f"What is {i} + {i}?", str(2 * i)) for i in range(3)]
BASE = dict(paths=4, T=120, max_rounds=3, top_k=2, summary_tokens=40, answer_tokens=24, probe_tokens=16,
            confidence_warmup=2, confidence_window=64, consensus_checks=1, consensus_share=0.75)
POINTS = {
    "consensus": LeapParams(mode="consensus", **BASE),
    "deepconf": LeapParams(mode="deepconf", **BASE),
    "pool": LeapParams(mode="pool", **BASE),
    "leap_consensus": LeapParams(mode="leap", stopping="consensus", **BASE),
}
ENGINES = [{"think_end_prob": 0.05, "summary_words": 6},
           {"think_end_prob": 0.05, "summary_words": 6, "latency": {"step_base_s": 0.01, "max_num_seqs": 8}}]


def run(replicas=None):
    replicas = replicas or [FakeReplica(i, engine=e) for i, e in enumerate(ENGINES)]

    async def main():
        with VirtualClock().patch_loop():
            coord = Coordinator([LocalHandle(r) for r in replicas], "fake", POINTS, PROMPTS, SamplingSpec(),
                                capacity=[8, 8], epoch=1)
            await coord.submit([(pt, p, {}) for pt in POINTS for p in PROBLEMS])
            rows, errors = await drain(coord)
            return rows, errors, [await r.stats() for r in replicas]

    return asyncio.run(main())


def test_replica_counters_equal_the_rows_and_runs_repeat():
    rows, errors, stats = run()
    assert not errors and len(rows) == len(POINTS) * len(PROBLEMS) * 4
    requests = [q for r in rows for q in r["requests"]]
    assert sum(s["requests"] for s in stats) == len(requests)
    for field in ("prompt_tokens", "cached_tokens", "new_tokens"):
        assert sum(s[field] for s in stats) == sum(q[field] for q in requests), field
    by_point = {}
    for s in stats:
        for point, seconds in s["busy_by_point"].items():
            by_point[point] = by_point.get(point, 0.0) + seconds
    assert set(by_point) <= set(POINTS)
    assert abs(sum(by_point.values()) - sum(s["busy_s"] for s in stats)) < 1e-3
    again, _, _ = run()

    def order(r):
        return r["sweep_point"], r["problem_id"], r["path"]

    assert sorted(again, key=order) == sorted(rows, key=order)


def test_a_replica_dying_mid_run_changes_nothing_the_paths_wrote():
    def written(rows):
        keep = ("sweep_point", "problem_id", "path", "text", "answer", "finish_reason", "stop_reason",
                "stopped_at_round", "sampled_tokens", "probe_tokens", "confidence", "vote_weight", "warmup")
        return sorted(tuple(r[k] for k in keep) for r in rows)

    rows, errors, _ = run()
    moved, moved_errors, _ = run([Dies(0, ENGINES[0], good=40), FakeReplica(1, engine=ENGINES[1])])
    assert not errors and not moved_errors
    assert any(q["kind"] == "probe" for r in moved for q in r["requests"])
    assert any(len({q["replica"] for q in r["requests"]}) == 2 for r in moved)  # paths did move
    assert written(moved) == written(rows)
