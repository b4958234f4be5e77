"""The driver's calls to its actors: a deadline on every answer, what a failed call means (the
actor is dead, or only unreachable for a moment), killing, creating under a name, and finding a
run's actors by name (for operators and tests)."""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError

from ..errors import DeadlineError, paragraph

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 120.0  # an actor call that should return at once; a stuck actor ends the run

# What Ray raises when an actor, a placement group or the cluster itself is already gone (or was
# never reachable): a dead actor's handle, a session that ended, a connection that dropped.
GONE = (RayError, ValueError, OSError)


def answer(ref, what: str, timeout: float = ANSWER_TIMEOUT_S):
    """`ray.get` with a deadline: an actor that does not answer in time ends the run with a
    message naming it, instead of a silent hang."""
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        raise DeadlineError(paragraph(
            f"{what} did not answer within {timeout:.0f} s; its actor is alive but stuck (a busy or "
            f"overloaded node?). Finished groups and checkpoints are saved: rerun the same command "
            f"to continue.")) from None


def died(exc: BaseException) -> bool:
    """Did this call fail because the actor is gone (killed, crashed, its node lost)? One
    unreachable for a moment (`ActorUnavailableError`) is not: see `unavailable`."""
    return isinstance(exc, RayActorError) and not isinstance(exc, ActorUnavailableError)


def unavailable(exc: BaseException) -> bool:
    """A network blip: the actor is alive but could not be reached; worth a retry."""
    return isinstance(exc, ActorUnavailableError)


def kill(handle) -> None:
    """Kill an actor for good; one already gone is fine."""
    try:
        ray.kill(handle, no_restart=True)
    except GONE as exc:
        log.debug("kill: %s", exc)


def create_named(actor_cls, args: tuple = (), kwargs: dict | None = None, wait_s: float = 15.0):
    """Create a named actor; a dead predecessor's name can take a moment to be released."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return actor_cls.remote(*args, **(kwargs or {}))
        except ValueError as exc:
            if "already" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def find_actor(suffix: str, namespace: str):
    """The handle of a live actor in `namespace` whose name ends in `suffix` (any run), for
    operators and tests. Asks the GCS, so it works without the dashboard."""
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == namespace and a["name"].endswith(suffix):
            return ray.get_actor(a["name"], namespace=namespace)
    raise ValueError(f"no live actor named *{suffix} in namespace {namespace}")
