"""The run's work as the progress bar counts it: tokens sampled against the budget of every group
this run runs, so the bar moves with every request that ends, not only when a whole group does.

A group's budget is its paths x the tokens a path may sample (`LeapParams.sampled_budget`: its
segments, leap.T x leap.max_rounds or the compute-matched leap.token_budget, plus a summary per
communicating round and the final answer). The coordinator reports, per running group, the
tokens its paths have sampled, a finished path counting its whole budget (`Progress.work`); a
group handed back counts its whole budget. So the bar ends at 100% however early paths stop,
and it survives a coordinator replaced mid-run (the new one reports the same groups from their
checkpoints). Compute-matched groups that wait for the point they match count T x max_rounds
segment tokens per path until their budget is known.

    meter = WorkMeter(points, [(point, problem_id), ...], expected_s=plan's generation_s or None)
    meter.plan(items, final)     # a phase's items, their budgets as submitted
    meter.update(poll)           # each poll of the coordinator
    meter.done, meter.total, meter.fraction, meter.left_s()
"""

from __future__ import annotations

import time
from dataclasses import replace

from tqdm import tqdm

from ..coordinator.messages import Poll, Progress
from ..core.params import LeapParams


def group_key(point: str, problem_id: str) -> str:
    """A group's key, as the coordinator names it in `Progress.rounds` and `Progress.work`."""
    return f"{point}|{problem_id}"


def group_budget(params: LeapParams, overrides: dict | None = None) -> int:
    """Tokens a group of `params` (with a group's own overrides) may sample in all."""
    prm = replace(params, **overrides) if overrides else params
    return prm.paths * prm.sampled_budget


class WorkMeter:
    def __init__(self, points: dict[str, LeapParams], groups: list[tuple[str, str]],
                 expected_s: float | None = None):
        self.points = points
        self.budgets = {group_key(pt, pid): group_budget(points[pt]) for pt, pid in groups}
        self.planned: set[str] = set()  # keys whose budget is the one submitted
        self.finished: set[str] = set()  # handed back, done or failed
        self.running: dict[str, int] = {}
        self.progress = Progress()
        self.expected_s = expected_s if expected_s and expected_s > 0 else None
        self.started: float | None = None

    def start(self) -> None:
        """The clock of the time left: from the first submit (generation starts)."""
        self.started = time.monotonic()

    def plan(self, items: list, final: bool = False) -> None:
        """A phase's items (point, problem, overrides[, checkpoint]) as submitted: their budgets;
        after the `final` phase, groups never submitted (a compute-matched group whose point has
        no result to match) leave the total."""
        for item in items:
            point, problem, overrides = item[:3]
            key = group_key(point, problem.id)
            self.budgets[key] = group_budget(self.points[point], overrides)
            self.planned.add(key)
        if final:
            self.budgets = {k: b for k, b in self.budgets.items() if k in self.planned or k in self.finished}

    def update(self, poll: Poll) -> None:
        self.progress = poll.progress
        for g in poll.groups:
            self.finished.add(group_key(g["point"], g["problem_id"]))
        for err in poll.errors:  # 'point|problem_id: cause'
            key = next((k for k in self.budgets if err.startswith(k + ": ")), None)
            if key is not None:
                self.finished.add(key)
        self.running = dict(poll.progress.work)

    # -- figures -----------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(self.budgets.values())

    @property
    def done(self) -> int:
        whole = sum(b for k, b in self.budgets.items() if k in self.finished)
        part = sum(min(w, self.budgets[k]) for k, w in self.running.items()
                   if k in self.budgets and k not in self.finished)
        return whole + part

    @property
    def fraction(self) -> float:
        total = self.total
        return min(1.0, self.done / total) if total else 1.0

    @property
    def groups_total(self) -> int:
        return len(self.budgets)

    @property
    def groups_done(self) -> int:
        return sum(1 for k in self.finished if k in self.budgets)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0

    def left_s(self) -> tuple[float | None, str]:
        """Seconds left and where the figure comes from: the plan's generation time for the work
        not yet done ("plan"), else the rate of the work so far ("rate"); None before any work."""
        f = self.fraction
        if self.expected_s is not None:
            return self.expected_s * (1.0 - f), "plan"
        elapsed = self.elapsed_s()
        if f <= 0.0 or elapsed <= 0.0:
            return None, "rate"
        return elapsed * (1.0 - f) / f, "rate"

    def text(self) -> str:
        """`groups 3/12 | 1:05 elapsed, ~1:20 left (plan)`: the bar's first words."""
        left, source = self.left_s()
        timing = f"{tqdm.format_interval(self.elapsed_s())} elapsed"
        if left is not None:
            timing += f", ~{tqdm.format_interval(left)} left ({source})"
        return f"groups {self.groups_done}/{self.groups_total} | {timing}"
