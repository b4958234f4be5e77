"""The whole LeaP loop on the real vLLM CPU engine: Ray, 2 replica actors, the tiny model.

Checks what only a real engine can show: token state stays on the replicas across rounds and the
engine's prefix cache serves what each continuing request could reuse.
"""

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from orchestrator.driver.runner import run  # noqa: E402
from tests.conftest import compose  # noqa: E402

pytestmark = pytest.mark.e2e

BLOCK = 32


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("leap_vllm")
    cfg = compose(["+experiment=demo", "model=tiny", "leap.T=256", "leap.max_rounds=4",
                   "leap.segment_min_tokens=200", "leap.summary_tokens=32", "dataset.limit=3",
                   f"engine.block_size={BLOCK}", f"output_dir={out}", "progress=false", "plots=false"])
    ray.init(address="local", num_cpus=3, namespace="orchestrator", include_dashboard=False)
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    return (pq.read_table(out / "paths.parquet").to_pylist(),
            pq.read_table(out / "messages.parquet").to_pylist(), summary)


def test_every_path_ran_on_one_real_replica(results):
    paths, messages, _ = results
    assert len(paths) == 3 * 4
    assert {p["replica"] for p in paths} == {0, 1}
    for p in paths:
        assert {r["replica"] for r in p["requests"]} == {p["replica"]}
        assert p["finish_reason"] in ("eos", "think_end", "forced", "context")
    assert messages and all(m["sender"] != m["recipient"] for m in messages)


def test_prefix_cache_serves_what_continuing_requests_could_reuse(results):
    paths, _, summary = results
    reusable = cached = 0
    for p in paths:
        for r in p["requests"][1:]:  # every request after the first continues the path
            whole = (min(r["reusable_tokens"], r["prompt_tokens"] - 1) // BLOCK) * BLOCK
            reusable += whole
            cached += min(r["cached_tokens"], whole)
            assert r["cached_tokens"] >= 0.9 * whole, r
    assert reusable > 0 and cached >= 0.9 * reusable
    hit = summary["default"]["synthetic"]["prefix_cache_hit_rate"]
    assert hit is not None and hit > 0.5


def test_paths_carry_rounds_summaries_and_peer_comments(results):
    paths, _, _ = results
    talked = [p for p in paths if p["summaries"]]
    assert talked, "no path reached a communication round"
    for p in talked:
        assert "<summarize>" in p["text"] and "<comment>" in p["text"]
        kinds = [s["kind"] for s in p["spans"]]
        assert "summary_prompt" in kinds and "comment" in kinds and "segment" in kinds
