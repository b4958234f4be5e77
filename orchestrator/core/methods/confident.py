"""DeepConf online (`confidence`, arXiv 2508.15260): segments ask for top logprobs, so each
sampled token brings its confidence; the first leap.confidence_warmup paths (by index) are
warm-up paths that always run to the end. Once all of them are done, the threshold is the
percentile of their lowest window confidences that keeps leap.confidence_keep percent of them
above it. From then on every other path is checked at the end of each segment (so at least
every leap.T tokens) on all its windows so far: one whose lowest window confidence is below the
threshold stops at once, with no forced answer, and has no weight in the vote. The vote of the
other paths is weighted by their lowest window confidence.

Choices the paper leaves open (README, "Methods"): all paths run at once (warm-up paths are not
run first), so a path that finishes before the threshold exists is never stopped; a path with
fewer tokens than one window is never stopped (its one partial window is too short to judge),
though such a partial window does count as a warm-up path's lowest confidence and as a path's
vote weight; only segment tokens count (summaries, forced answers and peer notes do not)."""

from __future__ import annotations

from typing import Sequence

from ..confidence import confidence_threshold, lowest_window_confidence
from ..paths import PathState
from .base import Knobs
from .rounds import RoundBudget

STOP_REASON = "low_confidence"


class ConfidenceStop(RoundBudget):
    vote = "confidence"

    def logprobs(self, params: Knobs) -> int:
        return params.confidence_top_logprobs

    def warmup(self, params: Knobs, path: PathState) -> bool:
        return path.index < params.confidence_warmup

    def check_path(self, params: Knobs, path: PathState, paths: Sequence[PathState], state: dict) -> str | None:
        if self.warmup(params, path) or len(path.confidences) < params.confidence_window:
            return None
        threshold = self.threshold(params, paths, state)
        if threshold is None:
            return None
        lowest = lowest_window_confidence(path.confidences, params.confidence_window)
        return STOP_REASON if lowest is not None and lowest < threshold else None

    def threshold(self, params: Knobs, paths: Sequence[PathState], state: dict) -> float | None:
        """The stopping threshold, once every warm-up path is done (kept in `state`); None
        before, and when no warm-up path sampled a token."""
        if "threshold" in state:
            return state["threshold"]
        warm = [p for p in paths if self.warmup(params, p)]
        if any(p.phase != "done" for p in warm):
            return None
        lows = [lowest_window_confidence(p.confidences, params.confidence_window) for p in warm]
        lows = [v for v in lows if v is not None]
        state["threshold"] = confidence_threshold(lows, params.confidence_keep) if lows else None
        return state["threshold"]

    def vote_weight(self, params: Knobs, path: PathState) -> float:
        if path.stop_reason == STOP_REASON:
            return 0.0
        lowest = lowest_window_confidence(path.confidences, params.confidence_window)
        return 0.0 if lowest is None else lowest
