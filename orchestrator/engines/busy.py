"""Busy time of a replica, whole and per sweep point, from when its requests start and end.

A replica is busy while at least one request is in flight. Each stretch of time between two
changes of the in-flight set is split equally among the requests in flight during it and
charged to their sweep points (a path key's part before '|'), so the per-point figures add up
to the busy time and a point's share says what its requests cost the engine when several
points share it. The caller passes the clock's time, so the same bookkeeping serves the vLLM
replica (monotonic seconds) and the fake one (its event loop's clock, virtual in simulations).
"""

from __future__ import annotations

from collections import Counter


def point_of(key: str) -> str:
    """The sweep point of a path key ("point|problem/path")."""
    return key.split("|", 1)[0]


class BusyClock:
    """`start`/`end` each request; `busy_s`, `area` (running requests x seconds) and `by_point`
    hold the figures since the last `reset`."""

    def __init__(self, now: float) -> None:
        self.t = now
        self.inflight: Counter = Counter()  # sweep point -> requests in flight
        self.running = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Start counting afresh at `now`; requests in flight stay in flight."""
        self.advance(now)
        self.busy_s = 0.0
        self.area = 0.0
        self.by_point: Counter = Counter()

    def advance(self, now: float) -> None:
        """Charge the time since the last change to the requests in flight."""
        dt = now - self.t
        self.t = now
        if self.running <= 0 or dt <= 0:
            return
        self.busy_s += dt
        self.area += self.running * dt
        each = dt / self.running
        for point, n in self.inflight.items():
            self.by_point[point] += each * n

    def start(self, key: str, now: float) -> None:
        self.advance(now)
        self.inflight[point_of(key)] += 1
        self.running += 1

    def end(self, key: str, now: float) -> None:
        self.advance(now)
        point = point_of(key)
        self.inflight[point] -= 1
        if self.inflight[point] <= 0:
            del self.inflight[point]
        self.running -= 1

    def point_seconds(self) -> dict[str, float]:
        """Busy seconds per sweep point (rounded for the record)."""
        return {p: round(s, 6) for p, s in sorted(self.by_point.items())}
