"""Dead replicas replaced while the run goes on (driver side).

The coordinator reports each replica death in its progress (`replica_deaths`). For every new one
the driver starts a replica in the dead one's placement bundle: Ray places a bundle lost with its
node again once the cluster has room (a node that joins, an autoscaler), and a bundle whose actor
was killed is free at once. While the new engine loads the run goes on with fewer replicas; once
it is up the coordinator gets it (`Coordinator.add_replica`) and paths flow to it again.

    rep = Replacements(cluster)             # replicas start in the cluster's bundles, and take
                                            # their slot in `cluster.replicas` once up
    rep.saw(progress.replica_deaths)        # start replacements for deaths not seen before
    rep.step()                              # hand finished starts to the coordinator
    rep.dead()                              # slots with no live replica (for a new coordinator)
    rep.facts()                             # run_info.json's record

At most `replicas.max_replacements` are started per run; a start that fails or does not finish
within `replicas.placement_timeout_s + replicas.start_timeout_s` is given up (and counts).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import RayError

from .actors import answer, kill
from .cluster import Cluster
from ..errors import first_lines, remote_cause

log = logging.getLogger(__name__)


class Replacements:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.cfg = cluster.cfg
        self.seen: set[tuple[int, float]] = set()
        self.deaths: list[dict] = []
        self.pending: dict[int, tuple] = {}  # slot -> (handle, start ref, started at)
        self.down: set[int] = set()  # slots with no live replica
        self.started = 0
        self.record: list[dict] = []

    def saw(self, deaths: list[dict], replace: bool = True) -> None:
        """Record deaths not seen before and (unless the run is over) start their replacements."""
        for d in deaths:
            key = (d["replica"], d.get("t", 0.0))
            if key in self.seen:
                continue
            self.seen.add(key)
            self.deaths.append(d)
            self.down.add(d["replica"])
            if replace:
                self._start(d["replica"])

    def _start(self, i: int) -> None:
        if i in self.pending:
            return
        limit = self.cfg.replicas.max_replacements
        if self.started >= limit:
            if limit:
                log.warning("replica %d is not replaced: replicas.max_replacements=%d were started already",
                            i, limit)
            return
        self.started += 1
        try:
            handle, ref = self.cluster.replace_replica(i)
        except (RayError, ValueError) as exc:  # e.g. the placement group is gone: the run goes on with fewer
            log.warning("replica %d could not be replaced: %s", i, first_lines(remote_cause(exc), 1))
            self.record.append({"replica": i, "ok": False, "error": first_lines(remote_cause(exc), 1)})
            return
        self.pending[i] = (handle, ref, time.monotonic())
        log.warning("replica %d died; starting a replacement in its placement bundle", i)

    def step(self) -> None:
        """Give the cluster's coordinator every replacement whose engine is up; give up on late ones."""
        if not self.pending:
            return
        limit = self.cfg.replicas.placement_timeout_s + self.cfg.replicas.start_timeout_s
        for i, (handle, ref, t0) in list(self.pending.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                if time.monotonic() - t0 > limit:
                    del self.pending[i]
                    kill(handle)
                    log.warning("replica %d's replacement did not start within %.0f s (no room in the cluster?); "
                                "the run goes on without it", i, limit)
                    self.record.append({"replica": i, "ok": False, "error": f"not started within {limit:.0f} s"})
                continue
            del self.pending[i]
            try:
                info = ray.get(ref, timeout=0)
            except RayError as exc:  # its engine failed to start, or its actor died starting
                self.record.append({"replica": i, "ok": False, "error": first_lines(remote_cause(exc), 1)})
                log.warning("replica %d's replacement failed to start: %s", i, first_lines(remote_cause(exc), 1))
                self._start(i)
                continue
            self.cluster.replicas[i] = handle
            capacity = int(info.get("capacity") or self.cfg.engine.max_num_seqs)
            answer(self.cluster.coordinator.add_replica.remote(i, handle, capacity), "the coordinator (add_replica)")
            self.down.discard(i)
            self.record.append({"replica": i, "ok": True, "node": info.get("node"),
                                "start_s": round(time.monotonic() - t0, 3)})
            log.warning("replica %d replaced (node %s) after %.1f s", i, str(info.get("node"))[:12],
                        time.monotonic() - t0)

    def dead(self) -> list[int]:
        return sorted(self.down)

    def facts(self) -> dict:
        return {"replica_deaths": sorted(self.deaths, key=lambda d: (d.get("t", 0.0), d["replica"])),
                "replacements": list(self.record) + [
                    {"replica": i, "ok": None, "error": "still starting when the run ended"} for i in self.pending]}
