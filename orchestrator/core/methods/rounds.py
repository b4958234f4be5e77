"""The round budget (`rounds`): segments of leap.T tokens; a path's answer is forced after
round leap.max_rounds."""

from __future__ import annotations

from ..paths import PathState
from .base import Knobs, StoppingRule


class RoundBudget(StoppingRule):
    def segment_tokens(self, params: Knobs, path: PathState) -> int:
        return params.T

    def last_segment(self, params: Knobs, path: PathState) -> bool:
        return path.round >= params.max_rounds

    def sampled_cap(self, params: Knobs) -> int | None:
        return params.T * params.max_rounds
