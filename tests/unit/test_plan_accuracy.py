"""benchmarks/plan_accuracy.py without running anything real: its workloads compose, the fake swap
replaces the engine, and planned and measured figures become rows, a table and JSON."""

import importlib.util
import json

import pytest

from orchestrator.config import validate
from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("plan_accuracy", REPO / "benchmarks" / "plan_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_workloads_are_the_issues(bench):
    w2 = bench.compose(bench.WORKLOADS["w2"])
    (p,) = validate(w2).values()
    assert (p.paths, p.T, p.max_rounds, p.summary_tokens, p.top_k, p.mode) == (8, 128, 3, 64, 2, "leap")
    assert (w2.dataset.limit, w2.engine.kind, w2.engine.dtype, w2.replicas.count) == (8, "vllm", "float32", 2)
    (ind,) = validate(bench.compose(bench.WORKLOADS["w2_independent"])).values()
    assert ind.mode == "independent"
    fake = bench.compose(bench.merged(bench.WORKLOADS["w2"], bench.FAKE, ["leap.T=64"]))
    assert fake.engine.kind == "fake" and fake.leap.T == 64


def test_rows_table_and_json(bench, tmp_path, monkeypatch, capsys):
    planned = {"w2": {"predicted": {"generation_s": 330.0, "wall_s": 360.0, "profile": "exact profile P"},
                      "plan_s": 1.25},
               "demo": {"predicted": None, "plan_s": None}}
    measured = {"w2": {"rc": 0, "elapsed_s": 400.0, "generation_s": 300.0, "wall_s": 400.0, "run_predicted": None,
                       "run_replanned": {"generation_s": 291.0, "paths": 64}},  # the run's plan with its lengths
                "demo": {"rc": 1, "elapsed_s": 10.0, "generation_s": None, "wall_s": None, "run_predicted": None}}
    current = {}

    def plan(overrides):
        current["name"] = "w2" if "dataset.limit=8" in overrides else "demo"
        return planned[current["name"]]

    monkeypatch.setattr(bench, "plan", plan)
    monkeypatch.setattr(bench, "measure", lambda overrides, out, timeout: measured[current["name"]])
    out = tmp_path / "acc.json"
    rows = bench.main(["--only", "w2", "--only", "demo", "--fake", "--json", str(out)])
    assert rows[0]["generation_s_error_pct"] == 10.0 and rows[0]["wall_s_error_pct"] == -10.0
    assert rows[0]["replanned_generation_s"] == 291.0 and rows[0]["replanned_error_pct"] == -3.0
    assert rows[1]["generation_s_error_pct"] is None and rows[1]["replanned_error_pct"] is None
    text = capsys.readouterr().out
    assert "+10.0%" in text and "-3.0%" in text and "w2: exact profile P" in text and "demo: no profile: nothing predicted" in text
    assert "the run failed (exit 1)" in text
    data = json.loads(out.read_text())
    assert data["fake"] is True and [r["workload"] for r in data["workloads"]] == ["w2", "demo"]
    assert "engine=fake" in data["workloads"][0]["overrides"] and "engine=cpu" not in data["workloads"][0]["overrides"]
