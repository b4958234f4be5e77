"""`+experiment=methods` and `methods_demo`: the points issue 18 names, on one warm set of
replicas, at paper scale and at demo scale."""

from __future__ import annotations

from orchestrator.config import validate
from tests.conftest import compose

# name -> (mode, stopping, confidence_keep where it matters, match_point)
POINTS = {
    "independent": ("independent", None, None, None),
    "leap": ("leap", None, None, None),
    "leap_consensus": ("leap", "consensus", None, None),
    "consensus": ("consensus", None, None, None),
    "deepconf_low": ("deepconf", None, 10, None),
    "deepconf_high": ("deepconf", None, 90, None),
    "pool": ("pool", None, None, None),
    "matched_leap": ("compute_matched", None, None, "leap"),
}


def _points(name: str):
    cfg = compose([f"+experiment={name}"])
    points = validate(cfg)
    got = {n: (p.mode, p.stopping, p.confidence_keep if p.mode == "deepconf" else None, p.match_point)
           for n, p in points.items()}
    return cfg, points, got


def test_methods_runs_every_rival_at_paper_scale(monkeypatch):
    # a hub id is checked against the hub cache only offline; the embedder of an earlier test
    # may have set HF_HUB_OFFLINE for the whole process
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg, points, got = _points("methods")
    assert got == POINTS
    assert cfg.engine.kind == "vllm" and cfg.dataset.name == "aime24"
    assert {(p.paths, p.T, p.max_rounds, p.top_k, p.router) for p in points.values()} == {(32, 4096, 4, 4, "dispersed")}
    assert cfg.engine.max_model_len >= 16384 + 4096


def test_methods_demo_is_the_same_points_on_cpu():
    cfg, points, got = _points("methods_demo")
    assert got == POINTS
    assert cfg.engine.kind == "vllm" and cfg.model.path == "builtin:smollm2" and cfg.replicas.count == 2
    assert cfg.replicas.gpus_per_replica == 0 and cfg.dataset.name == "synthetic" and cfg.dataset.limit <= 3
    assert {(p.paths, p.max_rounds) for p in points.values()} == {(4, 3)}
    deepconf = points["deepconf_low"]
    assert deepconf.confidence_warmup == 2 < deepconf.paths
