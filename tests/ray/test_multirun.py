"""Hydra multirun (-m): one job per point, all into the same result layout."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.ray


def test_multirun_writes_one_point_per_job(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "orchestrator", "-m", "engine=fake", "dataset=synthetic", "dataset.limit=2",
           "leap.paths=3", "leap.max_rounds=2", "leap.top_k=1", "leap.T=100,150", "replicas.count=1",
           "replicas.gpus_per_replica=0", f"output_dir={tmp_path}", "progress=false", "plots=false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(tmp_path / "paths.parquet", columns=["sweep_point", "problem_id"]).to_pylist()
    # a job's point is named after its leap.* overrides
    names = {"T=100,max_rounds=2,paths=3,top_k=1", "T=150,max_rounds=2,paths=3,top_k=1"}
    assert {r["sweep_point"] for r in rows} == names
    assert len(rows) == 2 * 2 * 3
    assert set(json.loads((tmp_path / "summary.json").read_text())) == names
