"""The coordinator's schedules and admission, in-process over fake replicas on a virtual clock."""

import asyncio

from aiotools import VirtualClock

from orchestrator.config import CONF_DIR
from orchestrator.coordinator.actor import Coordinator
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem, SamplingSpec
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle

PROMPTS = load_prompts(CONF_DIR / "prompts" / "default.yaml")
PROBLEMS = [Problem(f"p{i}", "synthetic", f"What is {i} + {i}?", str(2 * i)) for i in range(12)]
ENGINE = {"latency": {"step_base_s": 0.01, "step_per_seq_s": 1e-5, "prefill_s_per_token": 1e-5,
                      "max_num_seqs": 8}, "think_end_prob": 0.05, "summary_words": 8}


def run(schedule: str, oversubscribe: float = 1.5, replicas: int = 2):
    params = LeapParams(paths=4, T=300, max_rounds=3, top_k=2, summary_tokens=64, answer_tokens=32)

    async def main():
        with VirtualClock().patch_loop():
            loop = asyncio.get_running_loop()
            reps = [FakeReplica(i, engine=ENGINE) for i in range(replicas)]
            coord = Coordinator([LocalHandle(r) for r in reps], "fake", {"pt": params}, PROMPTS,
                                SamplingSpec(), schedule=schedule, oversubscribe=oversubscribe,
                                capacity=[8] * replicas)
            t0 = loop.time()
            await coord.submit([("pt", p, {}) for p in PROBLEMS])
            rows = []
            while True:
                update = await coord.poll(10.0)
                assert not update.errors
                for g in update.groups:
                    rows.extend(g["paths"])
                if update.all_done:
                    break
            return rows, loop.time() - t0, await coord.stats()

    return asyncio.run(main())


def key(rows):
    return sorted((r["problem_id"], r["path"], r["text"]) for r in rows)


def test_schedules_write_the_same_paths_and_lockstep_is_slower():
    leap_rows, leap_s, leap_stats = run("leap")
    lock_rows, lock_s, lock_stats = run("lockstep")
    assert len(leap_rows) == len(PROBLEMS) * 4
    assert key(leap_rows) == key(lock_rows)  # the fake writes by seed: only timing differs
    assert lock_s > leap_s
    assert leap_stats["barriers"] > 0 and lock_stats["barrier_wait_path_s"] > 0


def test_admission_keeps_live_paths_near_the_capacity():
    _, _, stats = run("leap", oversubscribe=1.5)
    # 2 replicas x 8 slots x 1.5 = 24 live paths at most (6 groups of 4)
    assert 16 < stats["peak_paths_in_flight"] <= 24
    _, _, stats = run("leap", oversubscribe=1.0)
    assert stats["peak_paths_in_flight"] <= 16
