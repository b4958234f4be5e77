"""Starting the coordinator actor, waiting for it, and fencing the replicas to a new one.

The coordinator runs in the CPU bundle reserved for it. It loads its tokenizer (and an embedder)
while the engines load; `await_ready` bounds that by `replicas.start_timeout_s`. When a
coordinator dies, a new one of the next generation (`epoch`) takes its bundle, and the live
replicas are first told (`fence`) to refuse what earlier generations still send them.
"""

from __future__ import annotations

import logging

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .actors import create_named, died
from .placement import COORDINATOR_CPUS
from ..config import Config, oversubscription
from ..coordinator.actor import Coordinator
from ..errors import DeadlineError, RunFailed, remote_cause

log = logging.getLogger(__name__)


def launch(cfg: Config, name: str, at: tuple | None, replicas: list, model: str, points, prompts, sampling,
           epoch: int = 1, dead: list[int] | None = None):
    """Create the coordinator actor named `name`, at `at` = (placement group, bundle index)
    (anywhere when None), with generation `epoch` and the replicas known to be `dead`."""
    options = dict(name=name, namespace=cfg.ray.namespace, num_cpus=COORDINATOR_CPUS,
                   max_concurrency=1000, max_restarts=0)
    if at is not None:
        pg, bundle_index = at
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_index)
    rc = cfg.replicas
    args = (list(replicas), "fake" if cfg.engine.kind == "fake" else model, points, prompts, sampling)
    kwargs = dict(placement=rc.placement, max_groups_in_flight=rc.max_groups_in_flight,
                  embed_model=cfg.leap.embedding_model, schedule=rc.schedule, oversubscribe=oversubscription(cfg),
                  epoch=epoch, dead=list(dead or []), unavailable_retry_s=rc.unavailable_retry_s,
                  request_timeout={"floor_s": rc.request_timeout_floor_s, "factor": rc.request_timeout_factor},
                  replica_wait_s=(rc.placement_timeout_s + rc.start_timeout_s) if rc.max_replacements else None)
    return create_named(ray.remote(Coordinator).options(**options), args, kwargs)


def await_ready(cfg: Config, coordinator, ref=None) -> dict:
    """Wait (at most replicas.start_timeout_s) for the coordinator's `ready()` (the call `ref`,
    made now when not given); returns what it says."""
    timeout = cfg.replicas.start_timeout_s
    try:
        return ray.get(ref if ref is not None else coordinator.ready.remote(), timeout=timeout)
    except GetTimeoutError:
        raise DeadlineError(f"the coordinator did not come up within replicas.start_timeout_s={timeout:g} s "
                            f"(it loads the tokenizer of model.path={cfg.model.path} first)") from None
    except RayActorError as exc:
        if died(exc):
            raise RunFailed(f"the coordinator could not start: {remote_cause(exc)}") from None
        raise


def fence(replicas: list, epoch: int, skip: list[int], timeout: float = 30.0) -> None:
    """Tell every live replica that coordinator generation `epoch` took over. Best effort: a
    replica that misses it still refuses old requests once the new coordinator reaches it."""
    refs = {i: r.fence.remote(epoch) for i, r in enumerate(replicas) if i not in skip}
    for i, ref in refs.items():
        try:
            stopped = ray.get(ref, timeout=timeout)
            if stopped:
                log.info("replica %d: %d request(s) of the dead coordinator stopped", i, stopped)
        except RayError as exc:  # a dead or stuck replica: the new coordinator will find out
            log.warning("replica %d could not be fenced (%s)", i, type(exc).__name__)
