"""LeaP-T's communication (`self_opened`): routed like LeaP, but in a communicating round the
segment also stops where the model itself opens its summary tag, which it then goes on to write."""

from __future__ import annotations

from ..prompts import SUMMARY_OPEN
from .base import Knobs
from .routed import Routed


class SelfOpened(Routed):
    def segment_stops(self, params: Knobs, round_: int) -> list[str]:
        return [SUMMARY_OPEN] if self.communicates(params, round_) else []
