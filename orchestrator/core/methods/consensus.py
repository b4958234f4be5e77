"""Early stopping by consensus (`consensus`; ESC, Dynasor's certainty check): at each check a
problem whose live paths' current answers agree stops, and every one of them is answer-forced at
once. Paths agree when the most common answer (None never counts) is given by at least
leap.consensus_share of them, at leap.consensus_checks checks in a row.

A check is each barrier of a communicating method (the answers are those in the newest
summaries); with a method that has no barrier, each path sends an answer probe after every
segment but the last, and a check is made once every live path has probed. Segments and the
forced answer otherwise follow the round budget."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from .base import Barrier, Communication
from .rounds import RoundBudget


def agreement(answers: Sequence[str | None]) -> float:
    """The share of `answers` that give the most common non-None answer (0.0 when none does)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts or not answers:
        return 0.0
    return max(counts.values()) / len(answers)


class ConsensusStop(RoundBudget):
    group_stop_reason = "consensus"

    def probes(self, communication: Communication) -> bool:
        return not communication.exchanges

    def stop_group(self, barrier: Barrier) -> bool:
        prm = barrier.params
        agree = agreement(barrier.current_answers()) >= prm.consensus_share
        run = barrier.state.get("agreeing", 0) + 1 if agree else 0
        barrier.state["agreeing"] = run
        return run >= prm.consensus_checks
