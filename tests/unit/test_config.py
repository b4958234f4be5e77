"""Hydra composition of every experiment, and config validation that fails before Ray starts."""

from pathlib import Path

import pytest

from orchestrator.config import sweep_points, validate
from orchestrator.errors import ConfigError
from tests.conftest import REPO, compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_there_are_the_documented_experiments():
    assert {"demo", "aime_sweep", "paper_main", "single_comm", "t_granularity", "methods", "methods_demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = compose([f"+experiment={name}"])
    points = validate(cfg)
    assert cfg.experiment == name and points


def test_demo_is_the_issue_shape():
    cfg = compose(["+experiment=demo"])
    (params,) = validate(cfg).values()
    assert (params.paths, params.max_rounds, params.top_k, params.router) == (4, 3, 2, "dispersed")
    assert cfg.replicas.count == 2 and cfg.engine.kind == "vllm" and cfg.model.path == "builtin:smollm2"
    assert cfg.dataset.name == "synthetic"


def test_aime_sweep_grid():
    cfg = compose(["+experiment=aime_sweep"])
    points = validate(cfg)
    leap = [p for p in points.values() if p.mode == "leap"]
    assert {(p.T, p.top_k, p.router) for p in leap} == {
        (t, k, r) for t in (2048, 4096) for k in (2, 4) for r in ("dispersed", "clustered", "hybrid")}
    assert [p.mode for p in points.values()].count("independent") == 1
    assert all(p.T * p.max_rounds == 16384 for p in points.values())
    assert cfg.dataset.name == "aime24" and cfg.leap.paths == 32


@pytest.mark.parametrize("overrides, expected", [
    (["engine=cpu", "replicas.gpus_per_replica=0"], 2.0),  # vLLM on CPU: compute-bound steps
    (["engine=vllm", "replicas.gpus_per_replica=1"], 1.5),  # a GPU: memory-bound decode
    (["engine=fake"], 1.5),  # the fake replica models a GPU
    (["engine=cpu", "replicas.gpus_per_replica=0", "replicas.oversubscribe=1.25"], 1.25),  # set by hand
])
def test_oversubscription_defaults_by_hardware(overrides, expected):
    from orchestrator.config import oversubscription

    cfg = compose(overrides)
    assert cfg.replicas.oversubscribe is None or "replicas.oversubscribe=1.25" in overrides
    assert oversubscription(cfg) == expected


def test_the_cpu_engine_asks_ray_for_no_gpu_unless_told():
    cfg = compose(["engine=cpu"])
    assert cfg.replicas.gpus_per_replica == 0 and cfg.engine.kind == "vllm" and cfg.engine.max_num_seqs == 16
    assert compose(["engine=cpu", "replicas.gpus_per_replica=2"]).replicas.gpus_per_replica == 2
    assert compose(["engine=vllm"]).replicas.gpus_per_replica == 1


def test_gpqa_uses_eight_paths():
    assert compose(["dataset=gpqa_diamond"]).leap.paths == 8


@pytest.mark.parametrize("override, key", [
    ("leap.router=nearest", "leap.router"),
    ("engine=fake engine.kind=tpu", "engine.kind"),
    ("leap.top_k=0", "leap.top_k"),
    ("leap.similarity=cosine", "leap.similarity"),
    ("leap.mode=compute_matched", "token_budget"),
    ("leap.token_budget=5000", "leap.token_budget=5000 has no effect with leap.mode=leap"),
    ("leap.comm_rounds=[4]", "comm_rounds"),
    ("replicas.count=0", "replicas.count"),
    ("replicas.cpus_per_replica=0 replicas.gpus_per_replica=0", "replicas.cpus_per_replica"),
    ("replicas.placement=random", "replicas.placement"),
    ("dataset.path=/no/such/file.json", "dataset.path"),
    ("leap.prompts=/no/such/prompts.yaml", "leap.prompts"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("replicas.oversubscribe=0.5", "replicas.oversubscribe"),
])
def test_bad_values_name_their_key(override, key):
    cfg = compose(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_type_errors_are_config_errors():
    with pytest.raises(Exception, match="leap.T|T"):
        compose(["leap.T=many"])


def test_sweep_points_are_named_and_checked():
    cfg = compose(["engine=fake", "+sweep=[{T: 512, router: clustered}, {name: base, mode: independent}]"])
    assert list(sweep_points(cfg)) == ["T=512,router=clustered", "base"]
    cfg = compose(["engine=fake", "+sweep=[{T: 512}, {T: 512}]"])
    with pytest.raises(ConfigError, match="repeats"):
        validate(cfg)
    cfg = compose(["engine=fake", "+sweep=[{topk: 2}]"])
    with pytest.raises(ConfigError, match="unknown leap key 'topk'"):
        validate(cfg)


def test_bad_config_fails_before_any_work(tmp_path):
    """The command line exits with status 2 and the key's name; nothing is written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "engine=fake", "leap.router=nearest",
                           f"output_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "leap.router" in proc.stderr + proc.stdout and "dispersed" in proc.stderr + proc.stdout
    assert not (out / "parts").exists()


# -- issue 9: settings that will not do what the user may think, model paths, exit codes --------
import logging  # noqa: E402

from orchestrator.config import check_model_path, model_kind, setting_warnings  # noqa: E402
from orchestrator.errors import USER_ERROR, paragraph, remote_cause, report  # noqa: E402


def warnings_for(*overrides):
    cfg = compose(["engine=fake", *overrides])
    return setting_warnings(cfg, sweep_points(cfg))


def test_top_k_at_least_the_peers_is_named_with_the_effective_value():
    (msg,) = warnings_for("leap.paths=2", "leap.top_k=5")
    assert "leap.top_k=5" in msg and "effective top_k=1" in msg
    assert warnings_for("leap.paths=4", "leap.top_k=2") == []
    # no communication, nothing to clamp
    assert warnings_for("leap.paths=2", "leap.top_k=5", "leap.mode=independent") == []


def test_context_and_summary_length_warnings():
    (msg,) = warnings_for("leap.T=20000", "leap.max_rounds=2", "engine.max_model_len=32768")
    assert "engine.max_model_len=32768" in msg and "40000" in msg
    (msg,) = warnings_for("leap.T=8000", "leap.max_rounds=4", "engine.max_model_len=32768")
    assert "may be too short" in msg and "32000" in msg
    (msg,) = warnings_for("leap.T=64", "leap.summary_tokens=128")
    assert "leap.summary_tokens=128 > leap.T=64" in msg
    assert warnings_for() == []  # the fake defaults fit


def test_a_sweep_warns_once_per_topic_naming_the_worst_point():
    msgs = warnings_for("+sweep=[{top_k: 5, paths: 3}, {top_k: 4, paths: 3}, {top_k: 1, paths: 3}]")
    (msg,) = msgs
    assert "leap.top_k=5" in msg and "2 of 3 sweep points" in msg


def test_validate_logs_each_warning_once(caplog):
    cfg = compose(["engine=fake", "leap.paths=3", "leap.top_k=7"])
    with caplog.at_level(logging.WARNING, logger="orchestrator.config"):
        validate(cfg)
        validate(cfg)
    assert sum("leap.top_k=7" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("spec, kind", [
    ("builtin:tiny", "builtin"), ("random:qwen2.5-1.5b", "builtin"), ("/abs/model", "local"),
    ("./rel", "local"), ("../up/m", "local"), ("~/m", "local"), (".", "local"), ("Qwen/QwQ-32B", "hub"), ("gpt2", "hub"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "hub"), ("a/b/c", "local"), ("org/name/", "local"),
])
def test_model_path_kinds(spec, kind):
    assert model_kind(spec) == kind


def test_existing_relative_dir_is_local(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_kind("org/name") == "local"


@pytest.mark.parametrize("path, match", [
    ("/no/such/model", "no such directory"),
    ("./no/such/model", "no such directory"),
    ("builtin:huge", "unknown builtin"),
    ("random:huge", r"unknown model shape random:huge: choose one of random:qwen2\.5-1\.5b, random:qwen2\.5-7b"),
    ("org/name/extra", "no such directory"),
])
def test_missing_model_paths_are_refused_before_ray(path, match):
    cfg = compose(["engine=vllm", f"model.path={path}"])
    with pytest.raises(ConfigError, match=match) as info:
        validate(cfg)
    assert "model.path" in str(info.value)


def test_model_specs_the_project_builds_pass_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAP_CACHE_DIR", str(tmp_path))
    for spec in ("builtin:tiny", "random:qwen2.5-1.5b", "random:qwen2.5-7b", "random:tiny"):
        check_model_path(compose(["engine=vllm", f"model.path={spec}"]))
    assert list(tmp_path.iterdir()) == []


def test_model_dir_must_be_a_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    cfg = compose(["engine=vllm", f"model.path={tmp_path}"])
    with pytest.raises(ConfigError, match="config.json"):
        check_model_path(cfg)
    (tmp_path / "config.json").write_text("{}")
    check_model_path(cfg)  # fine now
    cfg = compose(["engine=vllm", f"model.path={tmp_path / 'weights.bin'}"])
    with pytest.raises(ConfigError, match="is a file"):
        check_model_path(cfg)
    check_model_path(compose(["engine=fake", "model.path=/no/such"]))  # the fake loads no model


def test_hub_id_offline_without_a_cached_copy_is_refused(tmp_path, monkeypatch):
    cfg = compose(["engine=vllm", "model.path=nobody/no-such-model"])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    check_model_path(cfg)  # online: the hub decides
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        check_model_path(cfg)


@pytest.mark.parametrize("override, key", [
    ("ray.address=http://head:8265", "dashboard"),
    ("ray.address=head:port", "not a number"),
    ("ray.address=tcp://head:6379", "HOST:PORT"),
    ("ray.connect_timeout_s=0", "ray.connect_timeout_s"),
    ("replicas.placement_timeout_s=-1", "replicas.placement_timeout_s"),
    ("replicas.coordinator_restarts=-1", "replicas.coordinator_restarts"),
])
def test_bad_cluster_keys_are_refused(override, key):
    cfg = compose(["engine=fake", override])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


def test_report_is_one_paragraph_and_traceback_only_on_request(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        raise ConfigError("leap.T=0 must be an integer >= 1\n\nsecond line")
    except ConfigError as exc:
        err = exc
    assert report(err) == USER_ERROR
    text = capsys.readouterr().err
    assert "Traceback" not in text and "\n\n" not in text.strip() and text.startswith("error: leap.T=0")
    assert report(RuntimeError("boom"), debug=False) == 1
    assert "run failed: RuntimeError: boom" in capsys.readouterr().err
    report(err, debug=True)
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    report(err)
    assert "Traceback" in capsys.readouterr().err


def test_remote_cause_keeps_the_error_and_drops_the_frames():
    wrapped = RuntimeError(
        "ray::VLLMReplica.start() (pid=123, ip=10.0.0.1, actor_id=abc)\n"
        "Traceback (most recent call last):\n"
        '  File "/x/vllm_replica.py", line 80, in start\n'
        "    self.engine = AsyncLLM.from_engine_args(args)\n"
        "orchestrator.core.types.EngineStartError: ValueError: The model's max seq len (2048) is larger "
        "than the maximum number of tokens that can be stored in KV cache\n")
    cause = remote_cause(wrapped)
    assert cause.startswith("orchestrator.core.types.EngineStartError: ValueError: The model's max seq len")
    assert "File" not in cause and "pid=" not in cause
    assert paragraph("a\n\n  b   c\n") == "a b c"


def test_user_errors_exit_2_without_a_traceback(tmp_path):
    """A dataset row without an answer, an unknown key: one paragraph on stderr, status 2."""
    import subprocess
    import sys

    data = tmp_path / "rows.jsonl"
    data.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b", "problem": "2+2?"}\n')
    for args, needle in (([f"dataset.path={data}"], "row 1: missing answer"), (["leap.nokey=1"], "leap.nokey")):
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "engine=fake", *args,
                               f"output_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr.replace("\n", " ")
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.stderr.strip().startswith("error:") and "\n\n" not in proc.stderr.strip()
