"""VLLMReplica on the real vLLM CPU engine with the tiny model (no Ray).

One engine serves the whole module (engine start takes 16-36 s). AsyncLLM binds its output
handler to the event loop it first runs on, so every test runs on one shared loop
(`asyncio.Runner`) instead of a fresh `asyncio.run` each. The engine starts the way the driver
starts it: `start()` in the background while `startup_status()` is polled, with a log file
(phases read from the engine's own lines) and a `vllm_args` key that must reach the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytestmark = pytest.mark.e2e

pytest.importorskip("vllm")

from orchestrator.core.types import (  # noqa: E402
    EngineStartError, GenRequest, PathStateMissing, SamplingSpec,
)
from orchestrator.engines.vllm_args import names_from_source  # noqa: E402
from orchestrator.engines.vllm_replica import PHASES, VLLMReplica  # noqa: E402
from orchestrator.models import resolve_model  # noqa: E402

MAX_MODEL_LEN = 2048
ENGINE = dict(
    max_model_len=MAX_MODEL_LEN,
    enforce_eager=True,
    kv_cache_space_gib=1,
    max_num_seqs=8,
    block_size=32,  # the smallest the CPU attention accepts (it needs a multiple of 32)
    vllm_args={"max_num_batched_tokens": 384},  # vLLM's own default here is 2048 or more
)
SAMPLING = SamplingSpec(temperature=0.6, top_p=0.95, top_k=40, min_p=0.05)


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_model("builtin:tiny")  # cached under $LEAP_CACHE_DIR or ~/.cache


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def started(runner, model_dir, tmp_path_factory):
    """(replica, what start() returned, the startup_status() answers seen while it ran)."""
    log_file = str(tmp_path_factory.mktemp("logs") / "replica-{index}.log")

    async def start():
        rep = VLLMReplica(0, model_dir, dict(ENGINE, log_file=log_file), seed=1234)
        task = asyncio.create_task(rep.start())
        polls = []
        while not task.done():
            polls.append(await rep.startup_status())
            await asyncio.wait([task], timeout=0.5)
        return rep, task.result(), polls

    rep, info, polls = runner.run(start())
    yield rep, info, polls
    runner.run(rep.shutdown())


@pytest.fixture(scope="module")
def replica(started):
    return started[0]


@pytest.fixture(scope="module")
def block(runner, replica) -> int:
    return runner.run(replica.info())["block_size"]


def prompt_ids(tok, question: str) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tok.encode(text + "<think>\n", add_special_tokens=False)


def long_prompt(tok, min_tokens: int) -> list[int]:
    q = "Compute 12 + 35, then check the result by subtraction. "
    ids = prompt_ids(tok, q)
    while len(ids) < min_tokens:
        q += "Let me check: 47 - 35 = 12. "
        ids = prompt_ids(tok, q)
    return ids


def gen(runner, replica, **kw):
    kw.setdefault("sampling", SAMPLING)
    return runner.run(replica.generate(GenRequest(**kw)))


def test_info(runner, replica, model_dir, block):
    info = runner.run(replica.info())
    assert info["index"] == 0
    assert info["model"] == model_dir
    assert info["max_model_len"] == MAX_MODEL_LEN
    assert info["node"]
    assert block == 32
    assert info["device"] == "cpu" and info["capacity"] == ENGINE["max_num_seqs"]
    assert info["per_request_seed"] is False  # null resolves to off on CPU
    assert info["versions"]["vllm"] and info["versions"]["torch"]
    assert info["gpu_names"] == [] and info["attention_backend"]


def test_start_reports_phases_while_it_runs(started):
    rep, info, polls = started
    assert polls and not polls[0]["ready"]  # the actor answered while the engine was loading
    assert any(p["phases"] and not p["phases"][-1]["done"] for p in polls)
    names = [p["name"] for p in info["startup"]]
    assert names[0] == "importing" and names[-1] == "ready"
    assert "loading_weights" in names  # a line of the engine's worker process, from the log file
    assert set(names) <= set(PHASES) and all(p["done"] for p in info["startup"])
    assert all(p["seconds"] >= 0 for p in info["startup"])


def test_vllm_args_reach_the_engine(replica):
    assert replica.engine.vllm_config.scheduler_config.max_num_batched_tokens == 384
    from vllm.engine.arg_utils import AsyncEngineArgs  # already imported by the engine

    assert names_from_source() == frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def test_a_failed_start_says_why_in_one_paragraph(runner, model_dir):
    rep = VLLMReplica(1, model_dir, dict(ENGINE, vllm_args={"kv_cache_dtype": "fp4_bogus"}), 0)
    with pytest.raises(EngineStartError) as err:
        runner.run(rep.start())
    msg = str(err.value)
    assert "replica 1" in msg and "fp4_bogus" in msg and "\n" not in msg
    assert runner.run(rep.startup_status())["error"] == msg


def test_generation_returns_tokens(runner, replica, tok):
    ids = prompt_ids(tok, "What is 2 + 3?")
    res = gen(runner, replica, path_key="g", keep=len(ids), append=[], max_tokens=24, full=ids)
    assert res.path_key == "g"
    assert 1 <= len(res.token_ids) <= 24
    assert all(isinstance(t, int) for t in res.token_ids)
    assert isinstance(res.text, str)
    assert res.finish_reason in ("eos", "length")
    if res.finish_reason == "length":
        assert len(res.token_ids) == 24
    else:
        assert res.token_ids[-1] == tok.eos_token_id
    assert res.prompt_tokens == len(ids)
    assert res.replica == 0 and res.node


def test_concurrent_paths(runner, replica, tok):
    ids = prompt_ids(tok, "What is 7 times 8?")

    async def many():
        return await asyncio.gather(*[
            replica.generate(GenRequest(path_key=f"c{i}", keep=len(ids), append=[],
                                        max_tokens=16, full=ids, sampling=SAMPLING))
            for i in range(6)
        ])

    results = runner.run(many())
    assert [r.path_key for r in results] == [f"c{i}" for i in range(6)]
    assert all(r.token_ids for r in results)
    runner.run(replica.drop([f"c{i}" for i in range(6)]))


def test_continuation_hits_prefix_cache_and_truncation(runner, replica, tok, block):
    ids = long_prompt(tok, 3 * block + 5)
    first = gen(runner, replica, path_key="p", keep=len(ids), append=[], max_tokens=40, full=ids)
    total = len(ids) + len(first.token_ids)

    # continue the stored path: keep everything, append a few injected tokens
    append = tok.encode(" <comment> ok </comment>\n\n", add_special_tokens=False)
    second = gen(runner, replica, path_key="p", keep=total, append=append, max_tokens=8)
    assert second.prompt_tokens == total + len(append)
    # every whole block of the previous sequence whose KV was computed (all but its last
    # sampled token) comes from the prefix cache
    assert second.cached_tokens >= ((total - 1) // block) * block
    assert second.cached_tokens >= 3 * block

    # truncate back into the prompt (like the paragraph cut) and append a trigger
    keep = 2 * block + 7
    trigger = tok.encode(" <summarize>", add_special_tokens=False)
    third = gen(runner, replica, path_key="p", keep=keep, append=trigger, max_tokens=8)
    assert third.prompt_tokens == keep + len(trigger)
    assert third.cached_tokens >= (keep // block) * block

    # the stored state is exactly the edited prompt plus the new tokens: a later keep of that
    # length with `full` given must see the same prompt length
    state = ids[:keep] + trigger + third.token_ids
    fourth = gen(runner, replica, path_key="p2", keep=len(state), append=[], max_tokens=4,
                 full=state)
    assert fourth.prompt_tokens == len(state)
    assert fourth.cached_tokens >= (keep // block) * block  # same prefix, another path key


def test_keep_beyond_state_is_rejected(runner, replica, tok):
    ids = prompt_ids(tok, "1 + 1?")
    with pytest.raises(ValueError):
        gen(runner, replica, path_key="k", keep=len(ids) + 1, append=[], max_tokens=4, full=ids)


def test_unknown_path_without_full_raises(runner, replica, tok):
    with pytest.raises(PathStateMissing):
        gen(runner, replica, path_key="never-seen", keep=0, append=[1, 2], max_tokens=4)
    ids = prompt_ids(tok, "2 + 2?")
    gen(runner, replica, path_key="d", keep=len(ids), append=[], max_tokens=2, full=ids)
    runner.run(replica.drop(["d"]))
    with pytest.raises(PathStateMissing):
        gen(runner, replica, path_key="d", keep=len(ids), append=[], max_tokens=2)


def test_full_prompt_returns_context_without_engine_call(runner, replica, tok):
    ids = long_prompt(tok, 64)
    filler = (ids * (MAX_MODEL_LEN // len(ids) + 1))[:MAX_MODEL_LEN]
    res = gen(runner, replica, path_key="full", keep=len(filler), append=[], max_tokens=16,
              full=filler)
    assert res.finish_reason == "context"
    assert res.token_ids == [] and res.text == ""
    assert res.prompt_tokens == MAX_MODEL_LEN


def test_max_tokens_clamped_to_room_left(runner, replica, tok):
    ids = long_prompt(tok, 64)
    room = 3
    filler = (ids * (MAX_MODEL_LEN // len(ids) + 1))[: MAX_MODEL_LEN - room]
    res = gen(runner, replica, path_key="near", keep=len(filler), append=[], max_tokens=50,
              full=filler)
    assert res.finish_reason in ("length", "eos")
    assert 1 <= len(res.token_ids) <= room
    # now the path fills the context: the next request has no room
    nxt = gen(runner, replica, path_key="near", keep=len(filler) + len(res.token_ids),
              append=[], max_tokens=5)
    if len(res.token_ids) == room:
        assert nxt.finish_reason == "context"


def test_stop_string_is_reported_and_kept(runner, replica, tok):
    ids = prompt_ids(tok, "Say something.")
    stops = [" ", "e", "a", "1"]  # the random model emits one of these almost at once
    res = gen(runner, replica, path_key="s", keep=len(ids), append=[], max_tokens=64, full=ids,
              stop=stops)
    if res.finish_reason == "stop":
        assert res.stop_str in stops
        assert res.text.endswith(res.stop_str)
    else:  # EOS first: legitimate, just unlikely
        assert res.finish_reason == "eos"


def test_ignore_eos_generates_exactly_max_tokens(runner, replica, tok):
    ids = prompt_ids(tok, "Say something.")
    runner.run(replica.stats(reset=True))
    res = gen(runner, replica, path_key="floor", keep=len(ids), append=[], max_tokens=48,
              full=ids, stop=[" ", "e", "a"], ignore_eos=True)
    assert res.finish_reason == "length" and len(res.token_ids) == 48
    st = runner.run(replica.stats())
    assert st["requests"] == 1 and st["new_tokens"] == 48 and st["prompt_tokens"] == len(ids)
    assert 0 < st["busy_s"] <= st["window_s"] and st["occupancy"] == pytest.approx(1.0)
    assert st["first_request_t"] <= st["last_token_t"]
