"""LeaP's communication (`routed`): each path receives the summaries of the top-k peers that
`leap.router` picks by `leap.similarity` (DESIGN.md section 1, step 4)."""

from __future__ import annotations

from .. import routing
from .base import Barrier, Communication, Peers


class Routed(Communication):
    def route(self, barrier: Barrier) -> list[Peers]:
        if len(barrier.waiting) == 1:
            return [[]]  # nobody to hear from: the no-comments block
        prm = barrier.params
        return routing.route(list(barrier.summaries), prm.router, prm.top_k, rng=barrier.rng("router"),
                             similarity=prm.similarity, embed=barrier.embed, sim=barrier.similarity)
