"""The replica actors seen from the driver: which class and options they get, waiting for their
engines to start, and their counters.

Replicas are created cheaply (`actor`), then `start()` loads each engine while the driver polls
`startup_status()`: `await_started` waits at most `replicas.start_timeout_s` and reports the
phase a late replica was in, or the engine's own error.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .actors import create_named, kill
from ..config import Config
from ..engines.fake import FakeReplica
from ..engines.vllm_replica import VLLMReplica  # imports vllm only when an engine starts
from ..errors import DeadlineError, EngineError, first_lines, remote_cause
from ..models import resolve_model

log = logging.getLogger(__name__)


def model_path(cfg: Config) -> str:
    """What the replicas and the coordinator load: "fake", or the model made ready (built,
    converted or found) from `model.path`."""
    if cfg.engine.kind == "fake":
        return "fake"
    return resolve_model(cfg.model.path)


def replica_class(kind: str):
    return FakeReplica if kind == "fake" else VLLMReplica


def engine_options(cfg: Config) -> dict:
    """The keyword options every replica's engine is built with."""
    opts = asdict(cfg.engine)
    opts.pop("kind")
    opts["tensor_parallel_size"] = max(cfg.replicas.gpus_per_replica, 1)
    opts["cpus_per_replica"] = cfg.replicas.cpus_per_replica
    opts["run_seed"] = cfg.leap.seed  # the fake writes by the run's seed, whichever replica serves
    # each replica's stdout/stderr (and its engine processes') go to a file of their own: the
    # console stays readable, and start-up phases and failures are read back from it
    opts["log_file"] = str(Path(cfg.output_dir).resolve() / "logs" / "replica-{index}.log")
    return opts


def actor(cfg: Config, name: str, model: str, pg, i: int, gpus: float, log_file: str | None = None):
    """Replica i's actor in bundle i of placement group `pg` (named, not yet started); its engine
    logs to `log_file` ("{index}" is the replica's index) instead of the run's logs/ when given."""
    rc = cfg.replicas
    options = dict(
        name=name, namespace=cfg.ray.namespace,
        num_cpus=rc.cpus_per_replica, num_gpus=gpus, max_concurrency=1000,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        # vLLM logs every step of its start-up at INFO; keep the driver's console readable
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
    )
    opts = engine_options(cfg)
    if log_file:
        opts["log_file"] = log_file
    return create_named(ray.remote(replica_class(cfg.engine.kind)).options(**options),
                        (i, model, opts, cfg.leap.seed + i))


def await_started(cfg: Config, replicas: list, starts: list | None = None) -> list[dict]:
    """Wait for every replica's `start()` (the calls `starts`, made now when not given), at most
    `replicas.start_timeout_s`; returns their `info()`. An engine that fails ends the run with
    its own cause; a late one with its phase."""
    timeout = cfg.replicas.start_timeout_s
    if not starts or len(starts) != len(replicas):
        starts = [r.start.remote() for r in replicas]
    index = {ref: i for i, ref in enumerate(starts)}
    infos: list[dict | None] = [None] * len(replicas)
    t0 = time.monotonic()
    deadline = t0 + timeout
    last_note = t0
    pending = list(starts)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            late = [index[ref] for ref in pending]
            raise DeadlineError(_late_message(replicas, late, timeout))
        ready, pending = ray.wait(pending, num_returns=1, timeout=min(left, 5.0))
        for ref in ready:
            i = index[ref]
            try:
                infos[i] = ray.get(ref, timeout=0)  # ray.wait said it is ready
            except RayError as exc:  # the engine raised, or its actor died starting
                raise EngineError(_engine_failed(cfg, i, exc)) from None
        if pending and time.monotonic() - last_note >= 15:
            last_note = time.monotonic()
            phases = _phases(replicas, [index[r] for r in pending])
            log.info("waiting for %d engine(s) to start (%.0f s so far): %s", len(pending),
                     time.monotonic() - t0, "; ".join(f"replica {i}: {p}" for i, p in phases.items()))
    for info in infos:
        phases = ", ".join(f"{p['name']} {p.get('seconds', 0):.1f} s" for p in info.get("startup") or [])
        log.info("replica %s up on node %s (%s)%s", info.get("index"), str(info.get("node"))[:12],
                 info.get("model"), f": {phases}" if phases else "")
    return infos


def _phases(replicas: list, which: list[int]) -> dict[int, str]:
    """What each replica's start-up is doing now, e.g. 'loading_weights for 63 s'."""
    refs = {i: replicas[i].startup_status.remote() for i in which}
    out = {}
    for i, ref in refs.items():
        try:
            status = ray.get(ref, timeout=5)
        except RayError:  # dead, or too busy to answer: either way, no phase to show
            out[i] = "not answering"
            continue
        phases = status.get("phases") or []
        current = next((p for p in reversed(phases) if not p.get("done")), phases[-1] if phases else None)
        out[i] = f"{current['name']} for {current.get('seconds', 0):.0f} s" if current else "no phase reported"
        if status.get("error"):
            out[i] += f" (error: {first_lines(status['error'], 1)})"
    return out


def _late_message(replicas: list, late: list[int], timeout: float) -> str:
    phases = _phases(replicas, late)
    where = "; ".join(f"replica {i} was {p}" for i, p in phases.items())
    return (f"{len(late)} of {len(replicas)} replica engine(s) did not start within replicas.start_timeout_s="
            f"{timeout:g} s ({where}). A large model on a slow disk may need more time: raise "
            f"replicas.start_timeout_s; a stuck start often means too little GPU memory "
            f"(engine.gpu_memory_utilization, engine.max_model_len) or a busy GPU.")


def _engine_failed(cfg: Config, i: int, exc: BaseException) -> str:
    what = "the fake engine" if cfg.engine.kind == "fake" else f"model.path={cfg.model.path}"
    return (f"replica {i} could not start its engine ({what}, engine={cfg.engine.kind}): "
            f"{remote_cause(exc)}. Check model.path and the engine.* settings.")


def reset_stats(replicas: list, timeout_s: float = 30.0) -> None:
    """Zero each replica's counters, so they measure this run's generation only. A replica that
    does not answer in time is stuck already: it is killed, and the coordinator moves its paths
    and reports its death (so it is replaced) at its first request."""
    refs = {r.stats.remote(reset=True): i for i, r in enumerate(replicas)}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except RayError as exc:  # died meanwhile: the coordinator will see it too
            log.warning("replica %d died before the run began: %s", refs[ref], type(exc).__name__)
    for ref in late:
        log.warning("replica %d did not answer within %.0f s before the run began: killed as stuck", refs[ref],
                    timeout_s)
        kill(replicas[refs[ref]])


def live_stats(replicas: list) -> list[dict]:
    """Each replica's stats; a replica that died (its node with it) reports nothing."""
    out = []
    for i, r in enumerate(replicas):
        try:
            out.append({"replica": i, **ray.get(r.stats.remote(), timeout=30)})
        except RayError as exc:  # dead, or stuck past the 30 s: its figures are lost, the run's are not
            log.warning("replica %d: no stats (%s)", i, type(exc).__name__)
            out.append({"replica": i, "dead": True})
    return out
