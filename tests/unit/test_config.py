"""Hydra composition of every experiment, and config validation that fails before Ray starts."""

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, sweep_points, validate
from tests.conftest import REPO, compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_there_are_the_documented_experiments():
    assert {"demo", "aime_sweep", "paper_main", "single_comm", "t_granularity"} <= set(EXPERIMENTS)


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


def test_gpqa_uses_eight_paths():
    assert compose(["dataset=gpqa_diamond"]).leap.paths == 8


@pytest.mark.parametrize("override, key", [
    ("leap.router=nearest", "leap.router"),
    ("engine=fake engine.kind=tpu", "engine.kind"),
    ("leap.top_k=0", "leap.top_k"),
    ("leap.similarity=cosine", "leap.similarity"),
    ("leap.mode=compute_matched", "token_budget"),
    ("leap.comm_rounds=[4]", "comm_rounds"),
    ("replicas.count=0", "replicas.count"),
    ("replicas.cpus_per_replica=0 replicas.gpus_per_replica=0", "replicas.cpus_per_replica"),
    ("replicas.placement=random", "replicas.placement"),
    ("dataset.path=/no/such/file.json", "dataset.path"),
    ("leap.prompts=/no/such/prompts.yaml", "leap.prompts"),
    ("sampling.top_p=0", "sampling.top_p"),
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
