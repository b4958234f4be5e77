"""DeepConf online (`confidence`, arXiv 2508.15260): segments ask for top logprobs, so each
sampled token brings its confidence; the first leap.confidence_warmup paths (by index) are
warm-up paths that always run to the end. Once all of them have ended their thinking, the
threshold is the percentile of their lowest window confidences that keeps
leap.confidence_keep percent of them above it. From then on every other path is checked at the
end of each segment (so at least every leap.T tokens) on all its windows so far: one whose lowest
window confidence is below the threshold stops at once, with no forced answer, and has no
weight in the vote. The vote of the other paths is weighted by their lowest window confidence.

Schedule: by default (leap.confidence_warmup_first, the paper's online algorithm) the other
paths start only once every warm-up path has ended its thinking, so every one of them is checked
against the threshold from its first segment end. With confidence_warmup_first=false (needed
under a communicating mode, whose barriers hold every path together) all paths run at once.

Choices the paper leaves open (README, "Methods"):
- Paths running together with the warm-up paths: "once the threshold exists" is counted in rounds, so that a run does not depend on which result arrives first: the threshold
  holds from the round R in which the last warm-up path ended its thinking, and a path is
  checked at the ends of its segments of rounds R and later. A path that ends a segment of
  round r while a warm-up path may still end its thinking in round r or earlier waits
  (`HOLD`) until that is known. A path that ended before round R is never stopped.
- A path with fewer tokens than one window is never stopped (its one partial window is too short
  to judge); such a partial window does count as a warm-up path's lowest confidence and as a
  kept path's vote weight.
- Only segment tokens count (summaries, forced answers and peer notes do not).
"""

from __future__ import annotations

from typing import Sequence

from ..confidence import confidence_threshold, lowest_window_confidence
from ..paths import PathState
from .base import HOLD, Knobs
from .rounds import RoundBudget

STOP_REASON = "low_confidence"
THINKING_ENDED = ("answer", "force", "done")  # phases after a path's last segment


class ConfidenceStop(RoundBudget):
    vote = "confidence"

    def logprobs(self, params: Knobs) -> int:
        return params.confidence_top_logprobs

    def warmup(self, params: Knobs, path: PathState) -> bool:
        return path.index < params.confidence_warmup

    def waits_to_start(self, params: Knobs, path: PathState, paths: Sequence[PathState], state: dict) -> bool:
        if not params.confidence_warmup_first or self.warmup(params, path) or path.requests:
            return False
        self.start_round(params, paths, state, path.round)  # sets the threshold once they all ended
        return "round" not in state

    def check_path(self, params: Knobs, path: PathState, paths: Sequence[PathState], state: dict) -> str | None:
        if self.warmup(params, path):
            return None
        start = self.start_round(params, paths, state, path.round)
        if start is None:
            return HOLD
        if path.round < start or len(path.confidences) < params.confidence_window:
            return None
        threshold = state.get("threshold")
        if threshold is None:  # no warm-up path sampled a token: nothing to compare with
            return None
        lowest = lowest_window_confidence(path.confidences, params.confidence_window)
        return STOP_REASON if lowest < threshold else None

    def start_round(self, params: Knobs, paths: Sequence[PathState], state: dict, round_: int) -> int | None:
        """The round from which the threshold holds, or a round after `round_` when it is
        known to hold only later; None when that cannot be known yet. Sets the threshold in
        `state` once every warm-up path has ended its thinking."""
        if "round" in state:
            return state["round"]
        warm = [p for p in paths if self.warmup(params, p)]
        # the earliest round each warm-up path can end its thinking in
        earliest = [p.round + (p.phase not in THINKING_ENDED and p.phase != "segment") for p in warm]
        if all(p.phase in THINKING_ENDED for p in warm):
            lows = [lowest_window_confidence(p.confidences, params.confidence_window) for p in warm]
            lows = [v for v in lows if v is not None]
            state["threshold"] = confidence_threshold(lows, params.confidence_keep) if lows else None
            # warm-up first: no other path has started, each is checked from its first segment
            state["round"] = 1 if params.confidence_warmup_first else max(earliest, default=1)
            return state["round"]
        later = max(earliest, default=1)
        return later if later > round_ else None

    def vote_weight(self, params: Knobs, path: PathState) -> float:
        if path.stop_reason == STOP_REASON:
            return 0.0
        lowest = lowest_window_confidence(path.confidences, params.confidence_window)
        return 0.0 if lowest is None else lowest
