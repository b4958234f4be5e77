"""The aime_sweep experiment on the fake engine over the reference AIME 2024 file."""

import json

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from orchestrator.driver.runner import run  # noqa: E402
from tests.conftest import compose  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=4, namespace="orchestrator", include_dashboard=False)
    yield
    ray.shutdown()


def test_aime_sweep_writes_every_point_and_reruns_nothing(local_ray, leap_eval, tmp_path):
    overrides = ["+experiment=aime_sweep", "engine=fake", f"dataset.path={leap_eval / 'aime.json'}",
                 "leap.paths=4", "replicas.count=2", "leap.summary_tokens=64",  # GPUs asked, none here
                 f"output_dir={tmp_path}", "progress=false", "plots=false"]
    cfg = compose(overrides)
    summary = run(cfg)
    paths = pq.read_table(tmp_path / "paths.parquet", columns=["sweep_point", "problem_id", "path"]).to_pylist()
    points = {p["sweep_point"] for p in paths}
    assert len(points) == 13 and "independent" in points
    assert len({(p["sweep_point"], p["problem_id"]) for p in paths}) == 13 * 30
    assert len(paths) == 13 * 30 * 4
    assert set(summary) == points and all(summary[p]["aime24"]["problems"] == 30 for p in points)
    msgs = pq.read_table(tmp_path / "messages.parquet", columns=["sweep_point"]).to_pylist()
    assert "independent" not in {m["sweep_point"] for m in msgs}
    run(compose(overrides))
    assert json.loads((tmp_path / "run_info.json").read_text())["groups_run"] == 0


def test_compute_matched_baseline_gets_the_tokens_leap_used(local_ray, tmp_path):
    sweep = "+sweep=[{name: leap}, {name: matched, mode: compute_matched, match_point: leap}]"
    cfg = compose(["engine=fake", "dataset=synthetic", "dataset.limit=3", "leap.paths=4", "leap.T=200",
                   "leap.max_rounds=3", "leap.top_k=2", "replicas.count=2", "replicas.gpus_per_replica=0",
                   f"output_dir={tmp_path}", "progress=false", "plots=false", sweep])
    run(cfg)
    rows = pq.read_table(tmp_path / "paths.parquet").to_pylist()
    for pid in {r["problem_id"] for r in rows}:
        leap = [r for r in rows if r["problem_id"] == pid and r["sweep_point"] == "leap"]
        matched = [r for r in rows if r["problem_id"] == pid and r["sweep_point"] == "matched"]
        budget = round(sum(r["sampled_tokens"] + r["injected_tokens"] for r in leap) / len(leap))
        assert len(matched) == 4 and all(r["summaries"] == [] for r in matched)
        # each matched path samples its budget in segments (fewer only if it ended early),
        # plus the forced answer
        for r in matched:
            seg = sum(s["end"] - s["start"] for s in r["spans"] if s["kind"] == "segment")
            assert seg == budget or (seg < budget and r["finish_reason"] in ("eos", "think_end"))


def test_missing_gpus_fail_fast_with_the_keys(local_ray, tmp_path):
    # a model that exists (a missing one is refused before Ray starts), on a Ray without GPUs
    cfg = compose(["engine=vllm", "model.path=builtin:tiny", "replicas.count=2", "replicas.gpus_per_replica=1",
                   f"output_dir={tmp_path}", "progress=false"])
    from orchestrator.errors import ClusterError

    with pytest.raises(ClusterError, match=r"needs [^.]*2 GPUs \(replicas\.count=2 x replicas\.gpus_per_replica=1\)"):
        run(cfg)
