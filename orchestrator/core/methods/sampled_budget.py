"""The sampled-token budget (`token_budget`, compute-matched): segments of up to leap.T tokens
until a path has sampled leap.token_budget segment tokens, however many rounds that takes; its
answer is forced then. Until the budget is known (leap.match_point sets it at run time) it
acts as the round budget."""

from __future__ import annotations

from ..paths import PathState
from .base import Knobs
from .rounds import RoundBudget


class TokenBudget(RoundBudget):
    uses_token_budget = True
    budget_keys = "leap.token_budget"

    def segment_tokens(self, params: Knobs, path: PathState) -> int:
        if params.token_budget is None:
            return super().segment_tokens(params, path)
        return min(params.T, params.token_budget - path.sampled_segments)

    def last_segment(self, params: Knobs, path: PathState) -> bool:
        if params.token_budget is None:
            return super().last_segment(params, path)
        return path.sampled_segments >= params.token_budget

    def sampled_cap(self, params: Knobs) -> int | None:
        return params.token_budget
