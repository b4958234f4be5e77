"""What the coordinator hands the driver: typed, so both sides name the same fields.

`Coordinator.poll()` returns a `Poll`; its `progress` (also `Coordinator.snapshot()`) is a
`Progress`. A finished group stays the dict of rows the result files are made of
({"point", "problem_id", "paths", "messages", ...}), and a replica death the dict run_info.json
records ({"replica", "cause", "t"}). Both cross a Ray call, so they hold plain values only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    """The coordinator's state now, for the progress bar and the driver's fault handling."""

    groups_total: int = 0
    groups_done: int = 0
    active_paths: int = 0
    rounds: dict[str, int] = field(default_factory=dict)  # "point|problem" -> its round, groups running
    # "point|problem" -> tokens sampled so far (a finished path: its whole budget), groups running
    # with some done; the driver holds each group's budget (`driver.progress.WorkMeter`)
    work: dict[str, int] = field(default_factory=dict)
    work_done: int = 0  # the same summed over every group given to this coordinator, finished ones whole
    work_budget: int = 0  # their budgets summed: paths x LeapParams.sampled_budget
    tokens_per_s: float = 0.0
    sampled_tokens: int = 0
    cache_hit_rate: float | None = None  # prefix-cache hits / prompt tokens; None before any prompt
    replicas_alive: int = 0
    failovers: int = 0  # paths moved off dead replicas by this coordinator
    replica_deaths: list[dict] = field(default_factory=list)  # {"replica", "cause", "t"}, this coordinator's
    node: str | None = None


@dataclass
class Poll:
    """What happened since the last poll."""

    groups: list[dict]  # finished groups, their rows ungraded (the driver grades them)
    errors: list[str]  # failed groups, each 'point|problem_id: cause'
    checkpoints: list[tuple[str, str, bytes]]  # (point, problem_id, snapshot) after each barrier
    progress: Progress
    all_done: bool  # nothing queued or running: every group submitted has been handed back
