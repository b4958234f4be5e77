"""Shared by the in-process coordinator tests (fake replicas behind `LocalHandle`): a replica
that dies after some requests, and polling a coordinator until every group is done."""

from __future__ import annotations

from orchestrator.core.types import ReplicaDead
from orchestrator.engines.fake import FakeReplica


class Dies(FakeReplica):
    """Fails like a dead engine once it has served `good` requests."""

    def __init__(self, index, engine=None, good=0):
        super().__init__(index, engine=engine)
        self.good = good

    async def generate(self, req):
        if self.served >= self.good:
            raise ReplicaDead(f"replica {self.index}: engine is dead")
        return await super().generate(req)


async def drain(coord, timeout: float = 10.0) -> tuple[list[dict], list[str]]:
    """Every finished group's path rows and every group error, once all groups are done."""
    rows, errors = [], []
    while True:
        update = await coord.poll(timeout)
        errors.extend(update.errors)
        for g in update.groups:
            rows.extend(g["paths"])
        if update.all_done:
            return rows, errors
