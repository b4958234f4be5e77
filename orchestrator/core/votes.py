"""Which paths of a problem vote, and with what weight, from their rows (`vote`, `vote_weight`
of `rows.stop_columns`): a majority point counts every path it did not stop once; a confidence
point (DeepConf) weights each kept path by its lowest window confidence. A path with weight 0
(stopped early for low confidence) is left out. Rows written before these columns existed vote
as majority with weight 1."""

from __future__ import annotations

from typing import Sequence

from .confidence import weighted_vote
from .grading import canonical_answer

MAJORITY, CONFIDENCE = "majority", "confidence"


def vote_kind(paths: Sequence[dict]) -> str:
    """The vote of these rows' point: `confidence` when they say so, else `majority`."""
    return CONFIDENCE if any(p.get("vote") == CONFIDENCE for p in paths) else MAJORITY


def weight(path: dict) -> float:
    value = path.get("vote_weight")
    return 1.0 if value is None else float(value)


def voters(paths: Sequence[dict]) -> list[dict]:
    """The rows that take part in the vote (weight above 0), in their order."""
    return [p for p in paths if weight(p) > 0]


def weighted_winner(paths: Sequence[dict]) -> str | None:
    """The normalized answer with the largest sum of weights (`confidence.weighted_vote`)."""
    return weighted_vote([canonical_answer(p.get("answer")) for p in paths], [weight(p) for p in paths])
