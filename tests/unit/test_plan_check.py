"""The run plans itself when a profile applies (`driver.plan_check`); a plan that fails never fails
the run. The profile lookup and the planner are stubbed here (`find_profile`, `planner.predict`)."""

import json
import logging

import pytest

from orchestrator.config import validate
from orchestrator.core.types import Problem
from orchestrator.driver import calibration, plan_check, planner
from orchestrator.engines import profile as profiles
from tests.conftest import compose

# a hand-written profile with the contract's fields (a vllm-cpu-like SmolLM2 on one core)
PROFILE = {
    "version": 1,
    "key": {"model": "builtin:smollm2", "engine": "vllm 0.0", "dtype": "float32", "device": "cpu"},
    "decode": {"step_base_s": 0.02, "step_per_seq_s": 0.004, "step_per_context_token_s": 1e-6},
    "prefill": {"s_per_token": 2e-4, "s_per_cached_token": 1e-6, "chunk_tokens": 2048},
    "kv_capacity_tokens": 46000, "block_size": 32, "max_num_seqs": 16,
    "startup_s": {"engine": 9.0}, "model_bytes": {"weights": 538_000_000, "kv_per_token": 46080},
    "fitted_from": "hand-written for the tests", "notes": [],
}
PROBLEMS = [Problem(f"q{i}", "synthetic", f"What is {i}+{i}?", str(2 * i)) for i in range(3)]


def prediction(**kw) -> planner.Prediction:
    """A Prediction whose totals are W2-like figures; `kw` may set any total or Prediction field."""
    figures = dict(generation_s=342.7, wall_s=371.0, gpu_hours=0.0, sampled_tokens=60_000, injected_tokens=20_000,
                   cache_hit_rate=0.8, peak_kv_tokens=30_000, evictions=0, replica_busy=[0.9, 0.8])
    figures.update({k: kw.pop(k) for k in list(kw) if k in planner.Figures.__dataclass_fields__})
    base = dict(profile="", total=planner.Figures(**figures), points={}, bound="batch size (engine.max_num_seqs=16)",
                plan_s=0.4)
    return planner.Prediction(**{**base, **kw})


@pytest.fixture
def lookup(monkeypatch):
    """find_profile stubbed: the explicit file when given, else what `lookup.found` says."""
    state = {"found": None, "calls": []}

    def find_profile(key, model_config, explicit):
        state["calls"].append((key, model_config, explicit))
        if explicit:
            return profiles.load(explicit), f"profile {explicit}"
        return state["found"]

    monkeypatch.setattr(profiles, "find_profile", find_profile, raising=False)
    return state


def setup(tmp_path, *overrides):
    cfg = compose(["+experiment=demo", f"output_dir={tmp_path / 'out'}", *overrides])
    points = validate(cfg)
    todo = [(pt, pb) for pt in points for pb in PROBLEMS]
    return cfg, points, todo


def test_a_fake_run_without_a_profile_plans_nothing(tmp_path, lookup):
    cfg, points, todo = setup(tmp_path, "engine=fake")
    assert plan_check.check(cfg, points, None, PROBLEMS, todo, "fake") == {}
    assert lookup["calls"] == []


def test_no_profile_for_the_engines_no_plan(tmp_path, lookup, caplog):
    cfg, points, todo = setup(tmp_path)
    with caplog.at_level(logging.INFO):
        assert plan_check.check(cfg, points, None, PROBLEMS, todo, str(tmp_path)) == {}
    (key, _, explicit), = lookup["calls"]
    assert key == calibration.profile_key(cfg, str(tmp_path))  # the key calibration writes for this config
    assert key["model"] == cfg.model.path and key["device"].startswith("cpu") and key["engine"].startswith("vllm")
    assert explicit is None and "no engine profile" in caplog.text


def test_a_profile_found_records_the_prediction_and_prints_one_line(tmp_path, lookup, monkeypatch, capsys):
    cfg, points, todo = setup(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 576}))
    lookup["found"] = (profiles.from_dict(PROFILE), "exact profile smollm2-cpu.json")
    asked = {}

    def predict(cfg_, points_, prompts, problems, profile, lengths=None, **kw):
        asked.update(points=set(points_), problems=[p.id for p in problems], profile=profile, **kw)
        return prediction()

    monkeypatch.setattr(planner, "predict", predict)
    facts = plan_check.check(cfg, points, None, PROBLEMS, todo[:2], str(tmp_path))
    assert facts["predicted"]["generation_s"] == 342.7 and facts["predicted"]["wall_s"] == 371.0
    assert facts["predicted"]["profile"] == "exact profile smollm2-cpu.json"  # the plan named none
    assert facts["plan_s"] >= 0 and facts["predicted"]["plan_s"] == 0.4
    assert asked["problems"] == ["q0", "q1"] and asked["profile"].kv_capacity_tokens == 46000
    assert lookup["calls"][0][1] == {"hidden_size": 576}  # the model's config.json, for scaling
    assert asked["tokenizer"] == str(tmp_path)  # the run's own tokenizer counts its prompts, as the CLI's plan
    out = capsys.readouterr().out
    assert out.startswith("plan: generation ~05:42, wall ~06:11 (exact profile smollm2-cpu.json; planned in ")


def test_a_plan_that_fails_is_a_warning_and_an_error_entry(tmp_path, lookup, monkeypatch, caplog):
    cfg, points, todo = setup(tmp_path)
    lookup["found"] = (profiles.from_dict(PROFILE), "scaled from h100-...: x0.1")

    def predict(*a, **kw):
        raise RuntimeError("the simulator broke")

    monkeypatch.setattr(planner, "predict", predict)
    facts = plan_check.check(cfg, points, None, PROBLEMS, todo, str(tmp_path))
    assert facts["predicted"] == {"error": "RuntimeError: the simulator broke", "profile": "scaled from h100-...: x0.1"}
    assert "plan failed" in caplog.text


def test_an_unreadable_explicit_profile_is_a_warning_too(tmp_path, lookup):
    cfg, points, todo = setup(tmp_path, "engine=fake")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    cfg.engine.profile = str(bad)  # engine.profile (set as an attribute until the key is in the schema)
    facts = plan_check.check(cfg, points, None, PROBLEMS, todo, "fake")
    assert facts["predicted"]["error"].startswith("ProfileError:") and "bad.json" in facts["predicted"]["error"]


def test_compute_matched_points_plan_with_the_point_they_match(tmp_path, lookup, monkeypatch):
    cfg, points, _ = setup(tmp_path, "+sweep=[{name: lp}, {name: cm, mode: compute_matched, match_point: lp}, "
                                     "{name: ind, mode: independent}]")
    lookup["found"] = (profiles.from_dict(PROFILE), "exact")
    asked = {}
    monkeypatch.setattr(planner, "predict", lambda c, pts, *a, **k: asked.update(points=set(pts)) or prediction())
    # a resume: only the matched point's groups are left
    plan_check.check(cfg, points, None, PROBLEMS, [("cm", PROBLEMS[0])], str(tmp_path))
    assert asked["points"] == {"cm", "lp"}


def test_earlier_runs_correct_the_plan_and_a_finished_run_records_its_own(tmp_path, lookup, monkeypatch, capsys):
    from orchestrator.engines import history

    monkeypatch.setenv("LEAP_PROFILE_DIR", str(tmp_path / "cache"))
    cfg, points, todo = setup(tmp_path)
    base = profiles.from_dict(PROFILE)
    lookup["found"] = (base, "exact profile smollm2-cpu.json")
    _, learned = history.corrected(base)
    history.record(learned, 110.0, 100.0, fixed_s=80.0)  # an earlier run took 1.1x its replan, and 80 s more
    used = []

    def predict(cfg_, points_, prompts, problems, profile, lengths=None, **kw):
        used.append((profile.replay_factor, lengths))
        assert kw["fixed_s"] == (80.0 if len(used) == 1 else 90.0)  # the wall's part outside generation
        return prediction(generation_s=100.0 if lengths is None else 90.0)

    monkeypatch.setattr(planner, "predict", predict)
    facts = plan_check.check(cfg, points, None, PROBLEMS, todo, str(tmp_path))
    assert used[0][0] == base.replay_factor * 1.1
    assert facts["predicted"]["history"] == {"digest": history.digest(base), "factor": 1.1, "runs": 1, "fixed_s": 80.0}
    assert "x1.100 from the last 1 run(s) on these engines" in facts["predicted"]["profile"]
    assert "x1.100 from the last 1 run(s)" in capsys.readouterr().out
    # the run is over (99 s of generation, 199 s wall): planned again with its lengths, its ratio recorded
    history.record(learned, 110.0, 100.0, fixed_s=100.0)  # (another run meanwhile: the replan's median is 90 s)
    rows = [{"sweep_point": pt, "problem_id": pb.id, "finish_reason": "eos",
             "requests": [{"kind": "segment", "new_tokens": 50}]} for pt, pb in todo]
    again = plan_check.recheck(cfg, points, None, PROBLEMS, todo, str(tmp_path), rows, 99.0, 199.0)["replanned"]
    assert used[1][1]["paths"] == len(todo) and used[1][0] == base.replay_factor * 1.1
    assert again["generation_s"] == 90.0 and again["speed_ratio"] == round(99.0 / 90.0 * 1.1, 4)
    assert [e["ratio"] for e in history.entries(history.digest(base))] == [1.1, 1.1, again["speed_ratio"]]
    assert history.entries(history.digest(base))[-1]["fixed_s"] == 100.0
    # a fake run's time is its latency model: it neither takes nor gives a correction
    fake_cfg, fake_points, fake_todo = setup(tmp_path, "engine=fake")
    fake_cfg.engine.profile = "p.json"
    lookup["found"] = None
    monkeypatch.setattr(profiles, "find_profile", lambda *a: (base, "profile p.json"))
    assert "history" not in plan_check.check(fake_cfg, fake_points, None, PROBLEMS, fake_todo, "fake")["predicted"]
