"""The fake replica's probes (`GenRequest.branch`), per-token confidences and per-point busy time."""

import asyncio
import statistics

from aiotools import VirtualClock

from orchestrator.core.types import GenRequest
from orchestrator.engines.busy import BusyClock
from orchestrator.engines.counted import CountedWriter
from orchestrator.engines.fake import FakeReplica, fake_confidence
from orchestrator.engines.tokenizer import FakeTokenizer

TOK = FakeTokenizer()
PROMPT = TOK.encode("Problem: add the numbers.\n<think>\n")


def run(coro):
    async def main():
        with VirtualClock().patch_loop():
            return await coro()
    return asyncio.run(main())


def segment(key: str, keep: int, append=(), n: int = 64, full=None, **kw) -> GenRequest:
    return GenRequest(path_key=key, keep=keep, append=list(append), max_tokens=n, full=full, **kw)


def probe(key: str, keep: int, n: int = 16, kind: str = "answer", **kw) -> GenRequest:
    return segment(key, keep, TOK.encode("\n\nSo the final answer is \\boxed{"), n, kind=kind,
                   branch=True, **kw)


def test_a_probe_leaves_the_path_and_its_cache_marks_as_they_were():
    async def go():
        r = FakeReplica(0, seed=3)
        first = await r.generate(segment("p|q/0", len(PROMPT), full=PROMPT))
        stored = list(r.paths["p|q/0"])
        computed = r.computed["p|q/0"]
        ans = await r.generate(probe("p|q/0", len(stored)))
        assert list(r.paths["p|q/0"]) == stored and r.computed["p|q/0"] == computed
        # the probe reused the path's prefix and answered
        assert ans.cached_tokens > 0 and ans.prompt_tokens == len(stored) + len(probe("x", 0).append)
        assert "}" in ans.text
        # the path goes on as if no probe had run: the same as a replica that never probed
        after = await r.generate(segment("p|q/0", len(stored)))
        other = FakeReplica(1, seed=3)
        await other.generate(segment("p|q/0", len(PROMPT), full=PROMPT))
        same = await other.generate(segment("p|q/0", len(stored)))
        assert first.token_ids and after.token_ids == same.token_ids and after.cached_tokens == same.cached_tokens
        return await r.stats()

    st = run(go)
    assert st["requests"] == 3  # probes are counted like any request


def test_a_probe_with_full_tokens_on_a_replica_without_the_path_stores_nothing():
    async def go():
        r = FakeReplica(0)
        tokens = PROMPT + TOK.encode("Step: one.\n\n")
        ans = await r.generate(probe("p|q/1", len(tokens), full=tokens))
        return r, ans

    r, ans = run(go)
    assert "p|q/1" not in r.paths and "p|q/1" not in r.computed and ans.token_ids


def test_confidences_one_per_token_deterministic_and_only_when_asked():
    async def go(seed, index):
        r = FakeReplica(index, seed=seed)
        plain = await r.generate(segment("p|q/0", len(PROMPT), full=PROMPT))
        r2 = FakeReplica(index, seed=seed)
        asked = await r2.generate(segment("p|q/0", len(PROMPT), full=PROMPT, logprobs=20))
        return plain, asked

    plain, asked = run(lambda: go(5, 0))
    assert plain.confidences is None
    assert asked.token_ids == plain.token_ids and asked.text == plain.text  # logprobs change no token
    assert len(asked.confidences) == len(asked.token_ids) and all(c > 0 for c in asked.confidences)
    _, again = run(lambda: go(5, 1))  # another replica, another run: the same figures
    assert again.confidences == asked.confidences
    _, reseeded = run(lambda: go(6, 0))
    assert reseeded.confidences != asked.confidences
    assert asked.confidences[0] == fake_confidence(5, "p|q/0", len(PROMPT), asked.token_ids[0])


def test_no_room_left_gives_no_tokens_and_no_confidences():
    async def go():
        r = FakeReplica(0, engine={"max_model_len": len(PROMPT)})
        return await r.generate(segment("p|q/0", len(PROMPT), full=PROMPT, logprobs=20))

    res = run(go)
    assert res.finish_reason == "context" and res.token_ids == [] and res.confidences == []


def test_confidence_levels_differ_between_paths_some_clearly_lower():
    means = [statistics.mean(fake_confidence(0, f"p|q/{i}", pos, 100 + pos % 7) for pos in range(200))
             for i in range(40)]
    low = [m for m in means if m < 4.5]
    assert 3 <= len(low) <= 20 and min(m for m in means if m >= 4.5) > 5.5
    assert fake_confidence(0, "p|q/0", 10, 5) != fake_confidence(0, "p|q/0", 10, 6)  # per token


def test_probe_on_the_latency_model_leaves_the_paths_cached_prefix():
    async def go(with_probe):
        r = FakeReplica(0, engine={"latency": {"step_base_s": 0.01, "prefill_s_per_token": 0.001,
                                               "block_size": 4}})
        await r.generate(segment("p|q/0", len(PROMPT), full=PROMPT, n=40))
        n = len(r.paths["p|q/0"])
        if with_probe:
            await r.generate(probe("p|q/0", 8, n=2))  # its own tokens end before the path's
        nxt = await r.generate(segment("p|q/0", n, n=8))
        return nxt.cached_tokens, await r.stats()

    without, _ = run(lambda: go(False))
    with_, st = run(lambda: go(True))
    assert with_ == without
    assert st["requests"] == 3 and set(st["busy_by_point"]) == {"p"}
    assert abs(sum(st["busy_by_point"].values()) - st["busy_s"]) < 1e-5


def test_counted_writer_probe_does_not_move_the_paths_draws_or_length():
    async def go(with_probe):
        writer = CountedWriter(TOK, {"answer": [5, 9, 13], "summary": [7, 11]}, seed=1)
        r = FakeReplica(0, writer=writer)
        await r.generate(segment("p|q/0", len(PROMPT), full=PROMPT, n=30))
        length = r.lengths["p|q/0"]
        if with_probe:
            ans = await r.generate(probe("p|q/0", length, kind="probe", logprobs=20))
            assert ans.finish_reason == "eos" and len(ans.confidences) == len(ans.token_ids) in (5, 9, 13)
            assert r.lengths["p|q/0"] == length
        res = await r.generate(segment("p|q/0", length, n=30, kind="summary"))
        return res.token_ids

    assert run(lambda: go(True)) == run(lambda: go(False))


def test_plain_fake_reports_busy_seconds_per_point():
    async def go():
        r = FakeReplica(0)
        await r.stats(reset=True)
        await r.generate(segment("a|q/0", len(PROMPT), full=PROMPT, n=2000))
        await r.generate(segment("b|q/0", len(PROMPT), full=PROMPT, n=2000))
        return await r.stats()

    st = asyncio.run(go())  # the real clock: the fake's own work takes time
    assert set(st["busy_by_point"]) == {"a", "b"}
    assert abs(sum(st["busy_by_point"].values()) - st["busy_s"]) < 1e-5


def test_busy_clock_splits_each_stretch_among_the_requests_in_flight():
    c = BusyClock(0.0)
    c.start("a|x/0", 0.0)
    c.start("b|x/0", 1.0)  # a alone for 1 s
    c.start("b|x/1", 2.0)  # a and b share 1 s
    c.end("a|x/0", 5.0)  # three share 3 s
    c.end("b|x/0", 6.0)
    c.end("b|x/1", 6.0)
    c.advance(9.0)  # idle
    assert c.busy_s == 6.0 and c.point_seconds() == {"a": 2.5, "b": 3.5}
    assert c.area == 1 + 2 + 9 + 2
    c.reset(9.0)
    assert c.busy_s == 0 and c.point_seconds() == {}
