"""VLLMReplica on the real vLLM CPU engine with the tiny model (no Ray).

One engine serves the whole module (engine start takes 16-36 s). AsyncLLM binds its output
handler to the event loop it first runs on, so every test runs on one shared loop
(`asyncio.Runner`) instead of a fresh `asyncio.run` each.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.e2e

pytest.importorskip("vllm")

from orchestrator.core.types import GenRequest, PathStateMissing, SamplingSpec  # noqa: E402
from orchestrator.engines.vllm_replica import VLLMReplica  # noqa: E402
from orchestrator.models import resolve_model  # noqa: E402

MAX_MODEL_LEN = 2048
ENGINE = dict(
    max_model_len=MAX_MODEL_LEN,
    enforce_eager=True,
    kv_cache_space_gib=1,
    max_num_seqs=8,
    block_size=32,  # the smallest the CPU attention accepts (it needs a multiple of 32)
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
def replica(runner, model_dir):
    async def make():
        return VLLMReplica(0, model_dir, ENGINE, seed=1234)

    rep = runner.run(make())
    yield rep
    runner.run(rep.shutdown())


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
