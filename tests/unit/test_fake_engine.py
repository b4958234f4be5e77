"""The fake replica's continuous-batching latency model, on a virtual clock (no real waiting)."""

import asyncio

from aiotools import VirtualClock

from orchestrator.core.types import GenRequest
from orchestrator.engines.fake import FakeReplica


def run(coro):
    async def main():
        with VirtualClock().patch_loop():
            return await coro()
    return asyncio.run(main())


def request(key: str, n: int, prompt: int = 32) -> GenRequest:
    return GenRequest(path_key=key, keep=0, append=[65] * prompt, max_tokens=n, full=[],
                      kind="floor", ignore_eos=True)


def replica(**latency) -> FakeReplica:
    return FakeReplica(0, engine={"latency": {"step_base_s": 0.01, **latency}})


def test_ignore_eos_gives_exactly_max_tokens():
    async def go():
        r = FakeReplica(0)
        res = await r.generate(request("a/0", 777))
        return res
    res = run(go)
    assert len(res.token_ids) == 777 and res.finish_reason == "length"


def test_capacity_queues_requests_first_come_first_served():
    async def go():
        r = replica(max_num_seqs=2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ends = {}

        async def one(key, n):
            await r.generate(request(key, n))
            ends[key] = round(loop.time() - t0, 6)

        await asyncio.gather(one("a/0", 100), one("b/0", 50), one("c/0", 100))
        return ends, await r.stats()

    ends, stats = run(go)
    # a and b run together; c starts when b leaves after 50 steps and needs 100 more
    assert ends["b/0"] == 0.5 and ends["a/0"] == 1.0 and ends["c/0"] == 1.5
    assert stats["requests"] == 3 and stats["new_tokens"] == 250
    assert abs(stats["busy_s"] - 1.5) < 1e-6
    assert abs(stats["occupancy"] - 250 / 150) < 1e-3  # 2 running for 1.0 s, 1 for 0.5 s


def test_step_time_grows_with_batch_and_prefill_stalls_the_batch():
    async def go():
        r = FakeReplica(0, engine={"latency": {"step_base_s": 0.01, "step_per_seq_s": 0.01,
                                               "prefill_s_per_token": 0.001}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(r.generate(request("a/0", 10, prompt=100)),
                             r.generate(request("b/0", 10, prompt=100)))
        return loop.time() - t0

    # prefill 2 x 100 tokens x 1 ms = 0.2 s, then 10 steps of 0.03 s at batch 2
    assert abs(run(go) - 0.5) < 1e-6


def test_no_latency_model_returns_at_once():
    async def go():
        r = FakeReplica(0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await r.generate(request("a/0", 4000))
        return loop.time() - t0
    assert run(go) == 0.0
