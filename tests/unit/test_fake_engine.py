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
    assert abs(stats["batch_full_s"] - 0.5) < 1e-6 and stats["kv_wait_s"] == 0  # c waited for a slot


def test_step_time_grows_with_batch_and_a_prefill_step_samples_the_first_token():
    async def go():
        r = FakeReplica(0, engine={"latency": {"step_base_s": 0.01, "step_per_seq_s": 0.01,
                                               "prefill_s_per_token": 0.001}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(r.generate(request("a/0", 10, prompt=100)),
                             r.generate(request("b/0", 10, prompt=100)))
        return loop.time() - t0

    # one step prefills 2 x 100 tokens (0.01 + 0.2 s) and samples both first tokens, then 9
    # decode steps of 0.03 s at batch 2
    assert abs(run(go) - 0.48) < 1e-6


def test_chunked_prefill_shares_steps_with_the_decoding_batch():
    async def go():
        r = replica(prefill_s_per_token=0.001, chunk_tokens=64)
        loop = asyncio.get_running_loop()
        ends = {}

        async def one(key, n, prompt, after=0.0):
            await asyncio.sleep(after)
            res = await r.generate(request(key, n, prompt))
            ends[key] = (round(loop.time(), 6), len(res.token_ids))

        await asyncio.gather(one("b/0", 50, 16), one("a/0", 5, 200, after=0.1))
        return ends

    ends = run(go)
    # b: a prefill step (0.01 + 0.016 s), then 0.01 s decode steps. a arrives at 0.1 and joins
    # at the end of the step under way (0.106); its 200 tokens take 4 chunks of at most 64
    # (3 x 0.074 s + 0.018 s), b decoding beside them, so a's first token comes at 0.346
    assert ends["a/0"] == (0.386, 5)  # + 4 decode steps
    assert ends["b/0"] == (0.716, 50)  # 1 + 8 + 4 tokens by 0.346, 37 more steps


def test_decode_cost_grows_with_the_context():
    async def go():
        r = replica(step_per_context_token_s=0.001)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await r.generate(request("a/0", 10, prompt=100))
        return loop.time() - t0

    # the prefill step (0.01 s, no decoding sequence) samples token 1; tokens 2..10 are decode
    # steps over contexts of 101..109 tokens
    assert abs(run(go) - (0.01 + 9 * 0.01 + 0.001 * sum(range(101, 110)))) < 1e-9


def follow(key: str, keep: int, n: int = 1, append: int = 7) -> GenRequest:
    return GenRequest(path_key=key, keep=keep, append=[66] * append, max_tokens=n, kind="floor",
                      ignore_eos=True)


def test_kv_cache_evicts_the_least_recently_used_path_and_it_is_recomputed():
    async def go():
        # 4 blocks of 16 tokens; one request at a time
        r = replica(kv_capacity_tokens=64, block_size=16, max_num_seqs=1)
        for key in ("a/0", "b/0", "c/0"):  # 32-token prompts: 2 blocks cached each after
            await r.generate(request(key, 1, prompt=32))
        after_c = await r.stats()
        b = await r.generate(follow("b/0", keep=33))  # b was used after a: still cached
        a = await r.generate(follow("a/0", keep=33))  # a was evicted to make room for c
        return after_c, b, a, await r.stats()

    after_c, b, a, stats = run(go)
    assert after_c["evictions"] == 1 and after_c["evicted_tokens"] == 32 and after_c["recomputed_tokens"] == 0
    assert b.cached_tokens == 32 and a.cached_tokens == 0
    assert stats["recomputed_tokens"] == 32  # a's two blocks, prefilled again
    assert stats["peak_kv_tokens"] == 48 and stats["kv_capacity_tokens"] == 64


def test_running_requests_that_outgrow_the_cache_preempt_the_newest():
    async def go():
        r = replica(kv_capacity_tokens=64, block_size=16)
        loop = asyncio.get_running_loop()
        ends = {}

        async def one(key):
            res = await r.generate(request(key, 40, prompt=16))
            ends[key] = (round(loop.time(), 6), len(res.token_ids))

        await asyncio.gather(one("a/0"), one("b/0"))
        return ends, await r.stats()

    ends, stats = run(go)
    # both compute a token a step; after 17 tokens each (KV of 32 tokens, 2 blocks each) the
    # next step needs a third block each, so b (admitted last) gives its blocks back. a ends after
    # 40 steps, having evicted b's cached blocks on the way; b then recomputes its 33 tokens
    # (the step samples its 18th) and makes its last 22
    assert ends["a/0"] == (0.4, 40) and ends["b/0"] == (0.63, 40)
    assert stats["preemptions"] == 1 and stats["recomputed_tokens"] == 32
    assert stats["peak_kv_tokens"] <= 64


def test_no_latency_model_returns_at_once():
    async def go():
        r = FakeReplica(0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await r.generate(request("a/0", 4000))
        return loop.time() - t0
    assert run(go) == 0.0
