"""Issue 18's methods on the real vLLM CPU engine: one sweep, Ray, 2 replica actors, the tiny model.

One run holds a point of each new method (consensus stopping with answer probes, DeepConf online,
the shared pool, LeaP with consensus stopping), so the engines load once. What only a real engine
shows: probes branch off a path and reuse its cached prefix without entering it, confidences come
from vLLM's own logprobs reduced inside the replica, and the replicas' counters still equal what
the rows record. Few tokens: the tiny model writes noise, so no method is expected to stop early.

The row columns read here (`stop_reason`, `probe_tokens`, `warmup`, `confidence`, `vote_weight`,
`vote`) and the request kind `probe` are those of CONTRACT18.md, written by the core's side.
"""

import json

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from orchestrator.driver.runner import run  # noqa: E402
from tests.conftest import compose  # noqa: E402

pytestmark = pytest.mark.e2e

BLOCK = 32
PATHS, PROBLEMS, WARMUP = 4, 2, 2
POINTS = ("consensus", "deepconf", "pool", "leap_consensus")
SWEEP = ("+sweep=[{name: consensus, mode: consensus}, {name: deepconf, mode: deepconf}, "
         "{name: pool, mode: pool}, {name: leap_consensus, mode: leap, stopping: consensus}]")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods_vllm")
    cfg = compose(["+experiment=demo", "model=tiny", f"leap.paths={PATHS}", "leap.T=48", "leap.max_rounds=3",
                   "leap.segment_min_tokens=40", "leap.summary_tokens=24", "leap.answer_tokens=16",
                   "leap.probe_tokens=8", f"leap.confidence_warmup={WARMUP}", "leap.confidence_window=32",
                   "leap.consensus_checks=1", f"dataset.limit={PROBLEMS}", f"engine.block_size={BLOCK}",
                   f"output_dir={out}", "progress=false", "plots=false", SWEEP])
    ray.init(address="local", num_cpus=3, namespace="orchestrator", include_dashboard=False)
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    return (pq.read_table(out / "paths.parquet").to_pylist(), summary,
            json.loads((out / "run_info.json").read_text()))


def point_rows(rows, point):
    return [r for r in rows if r["sweep_point"] == point]


def test_every_method_ran_every_problem_on_the_real_replicas(results):
    rows, summary, info = results
    assert {r["sweep_point"] for r in rows} == set(POINTS)
    for point in POINTS:
        assert len(point_rows(rows, point)) == PROBLEMS * PATHS, point
        assert point in summary
    assert {r["replica"] for r in rows} == {0, 1}
    # engine time per point, from the replicas' busy seconds (what the report plots against)
    assert set(info["points"]) == set(POINTS) and all(v["engine_s"] > 0 for v in info["points"].values())


def test_replica_counters_equal_what_the_rows_record(results):
    rows, _, info = results
    stats = info["replica_stats"]
    assert not any(s.get("dead") for s in stats)
    requests = [q for r in rows for q in r["requests"]]
    assert sum(s["requests"] for s in stats) == len(requests)
    for field in ("prompt_tokens", "cached_tokens", "new_tokens"):
        assert sum(s[field] for s in stats) == sum(q[field] for q in requests), field


def test_answer_probes_reuse_the_paths_prefix_and_never_enter_it(results):
    rows, _, _ = results
    probed = 0
    for r in point_rows(rows, "consensus"):
        probes = [q for q in r["requests"] if q["kind"] == "probe"]
        probed += len(probes)
        assert r["probe_tokens"] == sum(q["new_tokens"] for q in probes)
        # a probe's tokens are not the path's: the sampled tokens count only the path's own requests
        assert r["sampled_tokens"] == sum(q["new_tokens"] for q in r["requests"] if q["kind"] != "probe")
        for q in probes:  # it continues the path's whole token list, cached on its replica
            assert q["cached_tokens"] >= 0.9 * ((min(q["reusable_tokens"], q["prompt_tokens"] - 1) // BLOCK) * BLOCK)
        assert r["stop_reason"] in (None, "consensus")
    assert probed > 0, "no answer probe ran"


def test_deepconf_paths_carry_confidences_from_vllm_logprobs(results):
    rows, _, _ = results
    deep = point_rows(rows, "deepconf")
    assert sum(bool(r["warmup"]) for r in deep) == PROBLEMS * WARMUP
    for r in deep:
        assert r["vote"] == "confidence"
        assert r["confidence"] is not None and r["confidence"] > 0  # minus a mean of real logprobs
        assert r["stop_reason"] in (None, "low_confidence")
        if r["stop_reason"] == "low_confidence":
            assert r["finish_reason"] == "stopped" and r["vote_weight"] == 0.0 and not r["warmup"]
    for point in ("consensus", "pool", "leap_consensus"):  # nobody else asked for logprobs
        assert all(r["confidence"] is None and r["vote"] == "majority" for r in point_rows(rows, point))


def test_pool_and_leap_with_consensus_communicate(results):
    rows, _, _ = results
    for point in ("pool", "leap_consensus"):
        assert any(r["summaries"] for r in point_rows(rows, point)), point
