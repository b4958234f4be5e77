"""What each sweep point cost, read from the path rows (paths.parquet) and run_info.json: the
figures the method comparison (`compare`) sets against accuracy.

Tokens per path count everything the engines did for a path: sampled (written by the model),
injected (summary prompts, peer messages, answer forcing) and the answer probes of consensus
stopping (`probe_tokens` sampled, `probe_prompt_tokens` injected; neither is in sampled or
injected). A DeepConf warm-up path is a row like any other, so its tokens count.

Rows of a run written before these columns existed hold none of them: `has_method_columns`
says so, and the report then shows no method comparison (old runs report as before).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..core.rows import path_tokens, probe_cost

# the paths.parquet columns of the method comparison (CONTRACT18.md)
METHOD_COLUMNS = ("stop_reason", "stopped_at_round", "probe_tokens", "probe_prompt_tokens", "warmup",
                  "confidence", "vote_weight", "vote")


@dataclass
class PointCost:
    """Per (sweep point, benchmark): means per path and what stopped its paths."""

    paths: int = 0
    sampled: float = 0.0
    injected: float = 0.0
    probe: float = 0.0  # probe_tokens + probe_prompt_tokens
    warmup: int = 0  # DeepConf warm-up paths
    stopped: Counter = field(default_factory=Counter)  # stop_reason -> paths
    stopped_rounds: list[int] = field(default_factory=list)  # stopped_at_round of each stopped path
    votes: set[str] = field(default_factory=set)  # the rows' `vote` values

    @property
    def total(self) -> float:
        return self.sampled + self.injected + self.probe

    @property
    def stops(self) -> bool:
        return bool(self.stopped)


def has_method_columns(rows: Iterable[Mapping]) -> bool:
    """Whether the rows come from a run that records how paths ended (`stop_reason`, ...)."""
    return any("stop_reason" in r for r in rows)


def _int(value: Any) -> int:
    return int(value or 0)


def point_costs(rows: Iterable[Mapping]) -> dict[tuple[str, str], PointCost]:
    """{(sweep_point, benchmark): PointCost} over the rows."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    out: dict[tuple[str, str], PointCost] = {}
    for r in rows:
        key = (str(r["sweep_point"]), str(r["benchmark"]))
        cost = out.setdefault(key, PointCost())
        cost.paths += 1
        s = sums[key]
        s[0] += _int(r.get("sampled_tokens"))
        s[1] += _int(r.get("injected_tokens"))
        s[2] += probe_cost(r)
        cost.warmup += bool(r.get("warmup"))
        if r.get("stop_reason"):
            cost.stopped[str(r["stop_reason"])] += 1
            if r.get("stopped_at_round") is not None:
                cost.stopped_rounds.append(int(r["stopped_at_round"]))
        if r.get("vote"):
            cost.votes.add(str(r["vote"]))
    for key, cost in out.items():
        cost.sampled, cost.injected, cost.probe = (v / cost.paths for v in sums[key])
    return out


def engine_seconds(run_info: Mapping, point: str) -> float | None:
    """run_info.json's `points.<point>.engine_s` (the engines' time spent on that point's requests),
    None when the run did not record it."""
    value = ((run_info.get("points") or {}).get(point) or {}).get("engine_s")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def round_spread(rounds: list[int]) -> str:
    """`2.4 (2-3)`: the mean round and the range; `-` for none."""
    if not rounds:
        return "-"
    mean = sum(rounds) / len(rounds)
    low, high = min(rounds), max(rounds)
    return f"{mean:.1f} ({low})" if low == high else f"{mean:.1f} ({low}-{high})"


__all__ = ["METHOD_COLUMNS", "PointCost", "engine_seconds", "has_method_columns", "path_tokens",
           "point_costs", "round_spread"]
