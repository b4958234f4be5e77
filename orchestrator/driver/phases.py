"""What a run (and its plan) reads before anything starts, and how its groups are phased.

`load_inputs` checks the config and loads the sweep points, prompts and problems; `split_phases`
puts compute-matched points after the points they match; `matched_items` sets their budgets from
the matched points' path rows. `runner` and `planner` both use them, so a plan phases its groups
exactly as the run will.
"""

from __future__ import annotations

import logging

from .data import DatasetError, load_problems
from ..config import Config, prompt_file, validate
from ..core.prompts import load_prompts
from ..core.rows import path_tokens
from ..core.types import Problem

log = logging.getLogger(__name__)


def load_inputs(cfg: Config) -> tuple[dict, object, list[Problem]]:
    """The config checked, and what a run reads before Ray starts: the sweep points' params, the
    prompts and the problems (also what `python -m orchestrator.plan` plans)."""
    points = validate(cfg)
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    problems = load_problems(cfg.dataset.name, path=cfg.dataset.path, limit=cfg.dataset.limit,
                             seed=cfg.leap.seed, hub_id=cfg.dataset.hub_id, split=cfg.dataset.split)
    if not problems:
        raise DatasetError(f"dataset {cfg.dataset.name} ({cfg.dataset.path or 'hub'}) has no problems")
    return points, prompts, problems


def split_phases(points, todo: list[tuple[str, Problem]]) -> tuple[list, list]:
    """The groups to run first, as submit items, and the (point, problem) pairs of compute-matched
    points, which wait for the point they match: their budgets come from its usage."""
    waits = {pt for pt, p in points.items() if p.match_point is not None and not p.token_budget}
    first = [(pt, pb, {}) for pt, pb in todo if pt not in waits]
    later = [(pt, pb) for pt, pb in todo if pt in waits]
    return first, later


def matched_items(rows: list[dict], points, later: list[tuple[str, Problem]]) -> list:
    """Per problem, the budget is the mean tokens per path (sampled + injected, and the tokens
    of answer probes, sampled and sent) of the matched point, from its path rows; a problem it
    has no rows for is skipped (logged)."""
    used: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        used.setdefault((row["sweep_point"], row["problem_id"]), []).append(path_tokens(row))
    items = []
    for point, problem in later:
        tokens = used.get((points[point].match_point, problem.id))
        if not tokens:
            log.error("compute-matched %s|%s: %s has no results for it; skipped", point, problem.id,
                      points[point].match_point)
            continue
        items.append((point, problem, {"token_budget": max(1, round(sum(tokens) / len(tokens)))}))
    return items
