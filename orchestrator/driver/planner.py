"""PLACEHOLDER (branch run17): the planner API of issue 17 as the shared contract states it, so that
the run's own plan (`plan_check.py`) can be written and tested before the simulator lands. Branch
sim17 writes the real module; at the merge its file replaces this one whole.

`predict(cfg, points, prompts, problems, profile, lengths=None) -> Prediction`: the real
coordinator over simulated replicas on a virtual clock; `Prediction.to_dict()` is what
run_info.json records as `predicted`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..engines.profile import Profile


@dataclass
class Prediction:
    profile: str  # the plan's first line: which profile, exact or scaled from which
    generation_s: float
    wall_s: float  # generation_s + engine start-up (the profile's startup_s) + the driver's fixed costs
    gpu_hours: float
    sampled_tokens: int
    injected_tokens: int
    cache_hit_rate: float | None
    peak_kv_tokens: int
    evictions: int
    replica_busy: list = field(default_factory=list)
    bound: str = ""  # which setting bounds the run, and why
    points: dict = field(default_factory=dict)  # sweep point -> the same figures
    plan_s: float = 0.0  # seconds the plan took

    def to_dict(self) -> dict:
        return asdict(self)


def predict(cfg, points, prompts, problems, profile: Profile, lengths: dict | None = None) -> Prediction:
    raise NotImplementedError("the planner (orchestrator.driver.planner) is not in this build yet")
