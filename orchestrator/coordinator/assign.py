"""Sticky path -> replica assignment and failover bookkeeping.

A path gets a replica once, for its whole life, so every round re-uses the KV cache that replica
holds for it. `spread` puts each path on the least-loaded live replica (a problem's paths share
the replicas); `pack` puts a whole group on one replica. When a replica dies its paths move to
the least-loaded live ones and must be resent whole once (`holder` forgets them).
"""

from __future__ import annotations

import logging

from ..core.types import ReplicaDead

log = logging.getLogger(__name__)

PLACEMENTS = ("spread", "pack")


class ReplicaPool:
    def __init__(self, count: int, placement: str = "spread"):
        if placement not in PLACEMENTS:
            raise ValueError(f"replicas.placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.alive = [True] * count
        self.load = [0] * count  # live paths assigned to each replica
        self.assign: dict[str, int] = {}  # path key -> replica index
        self.holder: dict[str, int] = {}  # path key -> replica that holds its tokens
        self.moved = 0  # paths moved off a dead replica
        self.deaths: list[dict] = []

    def live(self) -> list[int]:
        live = [i for i, ok in enumerate(self.alive) if ok]
        if not live:
            raise ReplicaDead("no live replica left")
        return live

    def any_alive(self) -> bool:
        return any(self.alive)

    def route(self, key: str) -> int:
        """The live replica that serves `key`: its own, or (its own is dead) the least-loaded
        live one, which then keeps it. Raises ReplicaDead when none is alive."""
        r = self.assign[key]
        if not self.alive[r]:
            target = self._least_loaded()
            self.assign[key] = target
            self.load[target] += 1
            self.load[r] -= 1
            self.holder.pop(key, None)
            self.moved += 1
            r = target
        return r

    def revive(self, r: int) -> None:
        """A new replica took slot r: it holds no path yet."""
        self.alive[r] = True
        for key in [k for k, h in self.holder.items() if h == r]:
            del self.holder[key]

    def _least_loaded(self) -> int:
        return min(self.live(), key=lambda i: (self.load[i], i))

    def _least_loaded_slot(self) -> int:
        """Least-loaded live replica; with none alive, any slot (`route` moves it later)."""
        slots = [i for i, ok in enumerate(self.alive) if ok] or range(len(self.alive))
        return min(slots, key=lambda i: (self.load[i], i))

    def place(self, keys: list[str]) -> None:
        target = self._least_loaded_slot() if self.placement == "pack" else None
        for key in keys:
            r = target if target is not None else self._least_loaded_slot()
            self.assign[key] = r
            self.load[r] += 1

    def release(self, key: str) -> int | None:
        """The path is done: free its slot; returns the replica that held it (to drop state)."""
        r = self.assign.pop(key, None)
        self.holder.pop(key, None)
        if r is not None:
            self.load[r] -= 1
        return r

    def needs_full(self, key: str) -> bool:
        return self.holder.get(key) != self.assign[key]

    def served(self, key: str, r: int) -> None:
        self.holder[key] = r

    def forget(self, key: str) -> None:
        self.holder.pop(key, None)

    def died(self, r: int, cause: str, when: float) -> bool:
        """Replica r is gone: move its paths to the least-loaded live replicas (when none is
        left they wait in place for `route`). Returns whether this was news."""
        news = self.alive[r]
        if news:
            log.error("replica %d died (%s); moving its paths to live replicas", r, cause)
            self.alive[r] = False
            self.deaths.append({"replica": r, "cause": cause[:300], "t": round(when, 3)})
        for key, owner in list(self.assign.items()):
            if owner == r and self.any_alive():
                self.route(key)
        return news
