"""A shared pool of findings (`pool`; Collaborative Parallel Thinking, Parallel-Distill-Refine):
at each barrier every waiting path receives the same pool, built from the waiting paths'
summaries in path-index order: a summary whose similarity (leap.similarity, the router's) to one
already in the pool is at least leap.pool_threshold is dropped as a duplicate, and the pool ends
before the first summary that would take it past leap.pool_tokens summary tokens. A path's own
summary may be in the pool it receives."""

from __future__ import annotations

from .. import routing
from .base import Barrier, Communication, Knobs, Peers


class Pooled(Communication):
    needs_lengths = True

    def received(self, params: Knobs) -> tuple[int, int | None]:
        return params.paths, params.pool_tokens

    def route(self, barrier: Barrier) -> list[Peers]:
        n = len(barrier.waiting)
        if n == 1:
            return [[]]  # a pool of one's own summary tells nothing: the no-comments block
        prm = barrier.params
        sim = barrier.similarity
        if sim is None:
            sim = routing.similarity_matrix(list(barrier.summaries), prm.similarity, barrier.embed)
        lengths = barrier.lengths or tuple(0 for _ in range(n))
        kept: list[int] = []
        used = 0
        for i in range(n):
            if any(sim[i][j] >= prm.pool_threshold for j in kept):
                continue
            if used + lengths[i] > prm.pool_tokens:
                break
            kept.append(i)
            used += lengths[i]
        return [[(j, float(sim[i][j])) for j in kept] for i in range(n)]
