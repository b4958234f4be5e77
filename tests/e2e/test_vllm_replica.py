"""VLLMReplica on the real vLLM CPU engine with the tiny model (no Ray).

One engine serves the whole module (engine start takes 16-36 s). AsyncLLM binds its output
handler to the event loop it first runs on, so every test runs on one shared loop (the `runner`
fixture, an `asyncio.Runner`) instead of a fresh `asyncio.run` each. The engine starts the way
the driver starts it: `start()` in the background while `startup_status()` is polled, with a log file
(phases read from the engine's own lines) and a `vllm_args` key that must reach the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytestmark = pytest.mark.e2e

pytest.importorskip("vllm")

from orchestrator.core.types import EngineStartError, GenRequest, PathStateMissing  # noqa: E402
from orchestrator.engines.vllm_args import names_from_source  # noqa: E402
from orchestrator.engines.vllm_replica import PHASES, VLLMReplica  # noqa: E402
from orchestrator.models import resolve_model  # noqa: E402
from tests.seam import SAMPLING, check_prefix_cache, gen, long_prompt, prompt_ids, start_replica  # noqa: E402

MAX_MODEL_LEN = 2048
ENGINE = dict(
    max_model_len=MAX_MODEL_LEN,
    enforce_eager=True,
    kv_cache_space_gib=1,
    max_num_seqs=8,
    block_size=32,  # the smallest the CPU attention accepts (it needs a multiple of 32)
    vllm_args={"max_num_batched_tokens": 384},  # vLLM's own default here is 2048 or more
)


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_model("builtin:tiny")  # cached under $LEAP_CACHE_DIR or ~/.cache


@pytest.fixture(scope="module")
def started(runner, model_dir, tmp_path_factory):
    """(replica, what start() returned, the startup_status() answers seen while it ran)."""
    log_file = str(tmp_path_factory.mktemp("logs") / "replica-{index}.log")
    rep, info, polls = runner.run(start_replica(model_dir, ENGINE, 1234, log_file))
    yield rep, info, polls
    runner.run(rep.shutdown())


@pytest.fixture(scope="module")
def replica(started):
    return started[0]


@pytest.fixture(scope="module")
def block(runner, replica) -> int:
    return runner.run(replica.info())["block_size"]


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
    check_prefix_cache(runner, replica, tok, block)


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
              full=filler, logprobs=20)
    assert res.finish_reason == "context"
    assert res.token_ids == [] and res.text == "" and res.confidences == []
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


def test_logprobs_give_one_confidence_per_token(runner, replica, tok):
    ids = prompt_ids(tok, "What is 6 + 9?")
    plain = gen(runner, replica, path_key="lp0", keep=len(ids), append=[], max_tokens=12, full=ids,
                ignore_eos=True)
    asked = gen(runner, replica, path_key="lp1", keep=len(ids), append=[], max_tokens=12, full=ids,
                ignore_eos=True, logprobs=20)
    few = gen(runner, replica, path_key="lp2", keep=len(ids), append=[], max_tokens=12, full=ids,
              ignore_eos=True, logprobs=2)
    assert plain.confidences is None
    assert len(asked.confidences) == len(asked.token_ids) == 12 and len(few.confidences) == 12
    # minus a mean of logprobs: positive; more (less likely) alternatives make it larger
    assert all(0 < c < 100 for c in asked.confidences + few.confidences)
    assert sum(asked.confidences) > sum(few.confidences)
    runner.run(replica.drop(["lp0", "lp1", "lp2"]))


def test_a_probe_leaves_the_stored_path_and_reuses_its_prefix(runner, replica, tok, block):
    ids = long_prompt(tok, 2 * block + 5)
    runner.run(replica.stats(reset=True))
    first = gen(runner, replica, path_key="pt|q/0", keep=len(ids), append=[], max_tokens=16, full=ids)
    stored = list(replica._paths["pt|q/0"])
    assert stored == ids + first.token_ids
    force = tok.encode("\n\nThe final answer is \\boxed{", add_special_tokens=False)
    probe = gen(runner, replica, path_key="pt|q/0", keep=len(stored), append=force, max_tokens=6,
                branch=True, logprobs=20, kind="probe")
    assert replica._paths["pt|q/0"] == stored  # nothing of the probe entered the path
    assert probe.prompt_tokens == len(stored) + len(force)
    assert probe.cached_tokens >= ((len(stored) - 1) // block) * block  # the path's prefix, reused
    assert len(probe.confidences) == len(probe.token_ids) >= 1
    # the path goes on from its own tokens, not the probe's
    nxt = gen(runner, replica, path_key="pt|q/0", keep=len(stored), append=[], max_tokens=4)
    assert nxt.prompt_tokens == len(stored) and nxt.cached_tokens >= ((len(stored) - 1) // block) * block
    # a probe with the path's whole token list on a replica that does not hold it stores nothing
    other = gen(runner, replica, path_key="pt|q/1", keep=len(stored), append=force, max_tokens=2,
                full=stored, branch=True)
    assert other.token_ids and "pt|q/1" not in replica._paths
    st = runner.run(replica.stats())
    assert st["requests"] == 4
    assert st["new_tokens"] == sum(len(r.token_ids) for r in (first, probe, nxt, other))
    assert st["prompt_tokens"] == sum(r.prompt_tokens for r in (first, probe, nxt, other))
    assert set(st["busy_by_point"]) == {"pt"} and st["busy_by_point"]["pt"] == pytest.approx(st["busy_s"], abs=1e-3)
    runner.run(replica.drop(["pt|q/0"]))
