"""The engine seam: what the coordinator may ask of a replica, whatever engine it hosts.

`vllm_replica.VLLMReplica` (a vLLM V1 engine) and `fake.FakeReplica` (deterministic, no model)
implement it as async Ray actors; `local.LocalHandle` wraps one in-process for simulations. The
messages (`GenRequest`, `GenResult`) and the seam's exceptions (`ReplicaDead`, `PathStateMissing`,
`StaleRequest`, `EngineStartError`) are pure data in `orchestrator.core.types`.
"""

from __future__ import annotations

from typing import Protocol

from ..core.types import GenRequest, GenResult


class Replica(Protocol):
    """The engine seam. The vLLM replica and the fake replica both implement it.

    Construction is cheap; `start()` loads the engine (the caller polls `startup_status()` while
    it runs, so start-up shows its phases), and `stats()` reports how busy the engine was.
    """

    async def start(self) -> dict:
        """Load the engine; returns `info()`. Raises `EngineStartError` with the engine's cause."""

    async def startup_status(self) -> dict:
        """{"phases": [{"name", "seconds", "done"}], "ready": bool, "error": str | None}"""

    async def stats(self, reset: bool = False) -> dict:
        """{"busy_s", "occupancy", "busy_by_point", "first_request_t", "last_token_t", "requests",
        "new_tokens", "prompt_tokens", "cached_tokens", "window_s"}: time with at least one
        request running, the time-weighted mean of running requests while busy, busy seconds per
        sweep point (each stretch split equally among the requests in flight), epoch times of the
        first request and the last token since the last reset, and counters (probes included)."""

    async def generate(self, request: GenRequest) -> GenResult: ...

    async def drop(self, path_keys: list[str], epoch: int = 0) -> None:
        """Forget finished paths' token state (ignored when `epoch` is below the fence)."""

    async def fence(self, epoch: int) -> int:
        """A new coordinator generation took over: refuse requests of earlier ones from now on,
        and stop (abort) those still running. Returns how many were stopped."""

    async def info(self) -> dict:
        """Static facts: replica index, node id, model, max_model_len."""
