"""Calling actors from plain code, one call at a time, on one event loop: Ray actors, or
in-process `LocalHandle`s (`engines/local.py`) on a virtual clock.

Runs in the driver's process: the planner (`planner.py`, `python -m orchestrator.plan`) runs the
real coordinator over in-process fake replicas with it, and `benchmarks/overhead.py` its
schedules. Under `Calls(virtual=True)` the loop's clock is aiotools' VirtualClock: simulated time
passes only while a call is waited for, exactly as the replicas' latency model says, as it would
while the driver waits for the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiotools import VirtualClock


class Calls:
    """Actor calls from plain code, each run to its answer on one event loop (see the module
    docstring). `calls(handle, "method", *args)` returns the answer; `close()` ends the loop."""

    def __init__(self, virtual: bool = False):
        self.loop = asyncio.new_event_loop()
        self.patches = contextlib.ExitStack()
        if virtual:
            self.loop.run_until_complete(self._virtual_clock())

    async def _virtual_clock(self) -> None:
        self.patches.enter_context(VirtualClock().patch_loop())  # patches the running loop, until close()

    def __call__(self, handle, method: str, *args, **kwargs):
        return self.loop.run_until_complete(_call(handle, method, *args, **kwargs))

    def gather(self, calls: list[tuple]) -> list:
        """(handle, method, *args) calls, all at once; their answers in order."""
        return self.loop.run_until_complete(_gather(calls))

    def time(self) -> float:
        return self.loop.time()

    def close(self) -> None:
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.patches.close()
        self.loop.close()

    def __enter__(self) -> "Calls":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _call(handle, method: str, *args, **kwargs):
    return await getattr(handle, method).remote(*args, **kwargs)


async def _gather(calls: list[tuple]) -> list:
    return await asyncio.gather(*(_call(handle, method, *args) for handle, method, *args in calls))
