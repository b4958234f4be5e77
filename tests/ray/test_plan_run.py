"""A run with an engine profile plans itself and records `predicted` in run_info.json, plans again
after it with the path lengths it sampled (`replanned`), its report compares, and its progress
bar counts work to 100%. The profile lookup and the planner are
stubbed (their real modules come from another branch); the profile is a tiny hand-written file."""

import json

import pytest

ray = pytest.importorskip("ray")

from orchestrator.driver import console, planner  # noqa: E402
from orchestrator.driver.runner import run  # noqa: E402
from orchestrator.engines import profile as profiles  # noqa: E402
from tests.conftest import compose  # noqa: E402
from tests.ray.test_sweep import local_ray  # noqa: E402,F401  (the fixture)
from tests.unit.test_plan_check import PROFILE, prediction  # noqa: E402

pytestmark = pytest.mark.ray


def test_a_run_with_a_profile_records_its_plan_and_the_bar_counts_work(local_ray, tmp_path, monkeypatch):
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(json.dumps(PROFILE))
    found = []

    def find_profile(key, model_config, explicit):
        found.append(explicit)
        return profiles.load(explicit), f"profile {explicit}"

    monkeypatch.setattr(profiles, "find_profile", find_profile, raising=False)
    lengths_seen = []

    def predict(*a, lengths=None, **k):  # before the run from the budget; after it, with its lengths
        lengths_seen.append(lengths)
        return prediction(generation_s=12.5, wall_s=20.0) if lengths is None else prediction(generation_s=11.0)

    monkeypatch.setattr(planner, "predict", predict)
    shown = []
    show = console.show
    monkeypatch.setattr(console, "show", lambda bar, meter: (shown.append(
        (meter.fraction, meter.groups_done, meter.groups_total, meter.left_s()[1])), show(bar, meter)))

    out = tmp_path / "out"
    cfg = compose(["engine=fake", "dataset=synthetic", "dataset.limit=3", "leap.paths=4", "leap.T=160",
                   "leap.max_rounds=3", "leap.top_k=2", "replicas.count=2", "replicas.gpus_per_replica=0",
                   "replicas.cpus_per_replica=0.5", f"output_dir={out}", "plots=false"])
    cfg.engine.profile = str(profile_file)  # engine.profile (an attribute until the key is in the schema)
    run(cfg)

    info = json.loads((out / "run_info.json").read_text())
    assert found == [str(profile_file)] * 2  # planned before the run, and again after it
    first, again = lengths_seen
    assert first is None and again["paths"] == 12 and again["source"] == "this run"  # 3 problems x 4 paths
    assert len(again["think"]) == 12 and all(0 < n <= 3 * 160 for n, _ in again["think"])  # each path's thinking
    assert len(again["summary"]) == 12 * 2 and all(n > 0 for n in again["summary"])  # 2 barriers a path
    assert info["replanned"]["generation_s"] == 11.0 and info["replanned"]["paths"] == 12
    assert info["predicted"]["generation_s"] == 12.5 and info["predicted"]["profile"] == f"profile {profile_file}"
    assert info["plan_s"] >= 0 and info["generation_s"] > 0
    log_text = (out / "logs" / "run.log").read_text()
    assert "plan: generation ~00:12, wall ~00:20" in log_text and "plan with this run's path lengths: generation ~00:11" in log_text
    assert shown and shown[-1][:3] == (1.0, 3, 3) and {s[3] for s in shown} == {"plan"}
    assert "<!-- table:plan -->" in (out / "report.md").read_text()
