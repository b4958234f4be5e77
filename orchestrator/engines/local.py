"""In-process replica handles with Ray's calling convention, for the simulation benchmark.

`LocalHandle(obj).method.remote(*args)` schedules `obj.method(*args)` on the running event loop
and returns the task, which the coordinator awaits exactly as it awaits a Ray ObjectRef. No
process boundary, so thousands of simulated replicas and paths fit in one process.
"""

from __future__ import annotations

import asyncio


class _Method:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args, **kwargs) -> asyncio.Task:
        return asyncio.ensure_future(self._fn(*args, **kwargs))


class LocalHandle:
    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._obj, name))
