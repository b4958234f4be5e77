"""Shared by the in-process coordinator tests: poll a coordinator until every group is done."""

from __future__ import annotations


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
