"""No communication (`none`): paths never summarize nor meet at a barrier (independent
sampling and the compute-matched baseline)."""

from __future__ import annotations

from .base import Barrier, Communication, Knobs, Peers


class Silent(Communication):
    exchanges = False

    def communicates(self, params: Knobs, round_: int) -> bool:
        return False

    def route(self, barrier: Barrier) -> list[Peers]:
        return [[] for _ in barrier.waiting]
