"""Where a run's actors go: one bundle per replica plus one CPU for the coordinator.

The bundles are reserved in one placement group (two with `replicas.strategy=STRICT_SPREAD`,
where the coordinator's CPU need not take a node of its own), so a layout that leaves the
coordinator no CPU is refused at placement time. When the cluster cannot grow (a local Ray, or
no autoscaler) and lacks the resources, the run is refused at once, naming what it asked for,
what the cluster has and the keys to change; otherwise it waits at most
`replicas.placement_timeout_s`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import ray
from ray.autoscaler.v2.sdk import get_cluster_status
from ray.experimental.internal_kv import _internal_kv_get
from ray.util.placement_group import placement_group, remove_placement_group

from .actors import GONE
from ..config import Config
from ..errors import ClusterError, DeadlineError

log = logging.getLogger(__name__)

COORDINATOR_CPUS = 1


@dataclass
class Placement:
    """The run's reserved bundles: replica i in bundle i of `groups[0]`, the coordinator at
    `coordinator_at` (placement group, bundle index)."""

    groups: list
    coordinator_at: tuple
    bundle: dict  # one replica's resources
    placing_s: float

    @property
    def replica_group(self):
        return self.groups[0]

    @property
    def gpus(self) -> float:
        return self.bundle.get("GPU", 0)


def place(cfg: Config, name: str, coordinator_name: str, can_grow: bool) -> Placement:
    """Reserve the run's bundles and wait for them (see the module docstring)."""
    rc = cfg.replicas
    total = ray.cluster_resources()
    bundle = replica_bundle(cfg, total.get("GPU", 0))
    if bundle.get("GPU", 0) != rc.gpus_per_replica:
        log.info("fake engine on a cluster without GPUs: replicas ask for none "
                 "(replicas.gpus_per_replica=%s ignored)", rc.gpus_per_replica)
    nodes = [nd["Resources"] for nd in ray.nodes() if nd.get("Alive")]
    short = placement_shortfall(cfg, bundle, total, nodes)
    if short and not can_grow:
        raise ClusterError(refusal(short, f"this Ray cluster ({fmt(total)} on {len(nodes)} node(s), and it "
                                          f"cannot add nodes)"))
    if short:
        log.warning("the cluster lacks resources for now (%s); waiting up to replicas.placement_timeout_s=%gs "
                    "for its autoscaler", "; ".join(short), rc.placement_timeout_s)
    bundles = [dict(bundle) for _ in range(rc.count)]
    coordinator_bundle = {"CPU": COORDINATOR_CPUS}
    if rc.strategy == "STRICT_SPREAD":  # the coordinator need not take a node of its own
        groups = [placement_group(bundles, strategy=rc.strategy, name=name),
                  placement_group([coordinator_bundle], strategy="PACK", name=coordinator_name)]
        coordinator_at = (groups[1], 0)
    else:
        groups = [placement_group(bundles + [coordinator_bundle], strategy=rc.strategy, name=name)]
        coordinator_at = (groups[0], rc.count)
    t0 = time.monotonic()
    if not _wait_placed(groups, rc.placement_timeout_s, bundle):
        avail = ray.available_resources()
        remove(groups)
        raise DeadlineError(
            f"could not place the run within replicas.placement_timeout_s={rc.placement_timeout_s:g} s: it "
            f"asks for {rc.count} x {fmt(bundle)} (replicas.count, replicas.cpus_per_replica, "
            f"replicas.gpus_per_replica) plus {{CPU: {COORDINATOR_CPUS}}} for the coordinator "
            f"(replicas.strategy={rc.strategy}); the cluster has {fmt(total)} of which {fmt(avail)} is free"
            f" (other jobs may hold the rest: `ray status`). Lower the request, free the cluster, or raise "
            f"replicas.placement_timeout_s.")
    return Placement(groups, coordinator_at, bundle, time.monotonic() - t0)


def remove(groups: list) -> None:
    """Free placement groups; one already gone (or a cluster already left) is fine."""
    for pg in groups:
        try:
            remove_placement_group(pg)
        except GONE as exc:
            log.debug("remove_placement_group: %s", exc)


def _wait_placed(groups: list, timeout: float, bundle: dict) -> bool:
    deadline = time.monotonic() + timeout
    refs = [pg.ready() for pg in groups]
    last_note = time.monotonic()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(left, 10.0))
        if len(ready) == len(refs):
            return True
        if time.monotonic() - last_note >= 30:
            last_note = time.monotonic()
            log.info("still waiting for placement of %s per replica (free now: %s; %.0f s left)",
                     fmt(bundle), fmt(ray.available_resources()), deadline - time.monotonic())


def replica_bundle(cfg: Config, cluster_gpus: float) -> dict:
    """One replica's resources. Fake replicas use GPUs only to mimic placement: on a cluster
    without any they ask for none."""
    rc = cfg.replicas
    gpus = rc.gpus_per_replica
    if cfg.engine.kind == "fake" and gpus and not cluster_gpus:
        gpus = 0
    bundle = {"CPU": rc.cpus_per_replica} if rc.cpus_per_replica else {}
    if gpus:
        bundle["GPU"] = gpus
    return bundle


def placement_shortfall(cfg: Config, replica_bundle: dict, total: dict, nodes: list[dict]) -> list[str]:
    """Why the cluster, as it is, can never hold the run's bundles (empty: it can)."""
    rc = cfg.replicas
    n = rc.count
    cpus = replica_bundle.get("CPU", 0)
    gpus = replica_bundle.get("GPU", 0)
    out = []
    need_cpu = n * cpus + COORDINATOR_CPUS
    if need_cpu > total.get("CPU", 0) + 1e-9:
        out.append(f"{need_cpu:g} CPUs (replicas.count={n} x replicas.cpus_per_replica={cpus:g}, plus "
                   f"{COORDINATOR_CPUS} for the coordinator) but the cluster has {total.get('CPU', 0):g}")
    if n * gpus > total.get("GPU", 0) + 1e-9:
        out.append(f"{n * gpus:g} GPUs (replicas.count={n} x replicas.gpus_per_replica={gpus:g}) but the "
                   f"cluster has {total.get('GPU', 0):g}")
    if out or not nodes:
        return out
    fit = [nd for nd in nodes if _fits(replica_bundle, nd)]
    if not fit:
        out.append(f"a replica's bundle {fmt(replica_bundle)} but no node has that much (nodes: "
                   f"{', '.join(fmt(nd) for nd in nodes)})")
    elif rc.strategy == "STRICT_SPREAD" and len(fit) < n:
        out.append(f"{n} nodes that each hold {fmt(replica_bundle)} (replicas.strategy=STRICT_SPREAD) but "
                   f"only {len(fit)} do")
    elif rc.strategy == "STRICT_PACK":
        whole = {k: v * n for k, v in replica_bundle.items()}
        whole["CPU"] = whole.get("CPU", 0) + COORDINATOR_CPUS
        if not any(_fits(whole, nd) for nd in nodes):
            out.append(f"one node with {fmt(whole)} (replicas.strategy=STRICT_PACK: every replica and the "
                       f"coordinator on one node) but the largest has {fmt(max(nodes, key=lambda d: d.get('CPU', 0)))}")
    return out


def refusal(short: list[str], subject: str) -> str:
    return (f"{subject} cannot hold the run: it needs {'; and '.join(short)}. Lower "
            f"replicas.count, replicas.cpus_per_replica or replicas.gpus_per_replica, or give Ray more "
            f"(ray.num_cpus=N for a local Ray; `ray start --num-cpus=N`; a head started with --num-cpus=0 "
            f"runs no actors).")


def fmt(res: dict) -> str:
    """Resources as `{CPU: 4, GPU: 1}`, without Ray's bookkeeping entries."""
    keys = [k for k in ("CPU", "GPU") if res.get(k)] + sorted(
        k for k in res if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")
        and res[k] and not k.startswith("accelerator_type"))
    return "{" + ", ".join(f"{k}: {res[k]:g}" for k in keys) + "}" if keys else "{}"


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) + 1e-9 >= v for k, v in bundle.items())


def can_grow(cfg: Config, mode: str) -> bool:
    """Can the cluster add nodes? `ray.autoscaling` decides when set; a local Ray (`mode`, from
    `ray_init.connect`) cannot; a joined cluster can when its autoscaler reports node types it
    may launch (a cluster started by hand reports only its own nodes, as `node_<id>`)."""
    if cfg.ray.autoscaling is not None:
        return bool(cfg.ray.autoscaling)
    if mode == "local":
        return False
    # the autoscaler's report is Ray's internal state, whose shape changes between versions:
    # any failure to read it means "no telling", and a guess must not refuse a run
    try:
        raw = _internal_kv_get("__autoscaling_status")
        if raw:
            report = json.loads(raw).get("autoscaler_report") or {}
            types = set((report.get("node_type_mapping") or {}).values())
            types |= set(report.get("pending_launches") or {})
            if any(not str(t).startswith("node_") for t in types):
                return True
        v2 = _internal_kv_get("__autoscaler_v2_enabled")
        if v2 and v2.strip() in (b"1", b"true", b"True"):
            return _v2_can_grow()
    except Exception as exc:  # Ray's autoscaler internals differ between versions: when in doubt the
        # cluster may grow, and placement waits out replicas.placement_timeout_s instead of refusing
        log.debug("could not tell whether the cluster autoscales: %s", exc)
        return True
    return False


def _v2_can_grow() -> bool:
    # as above: an internal API; when it fails there is no telling, and the run is not refused
    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        nodes = list(status.active_nodes) + list(status.idle_nodes)
        return any(not str(n.ray_node_type_name).startswith("node_") for n in nodes) or bool(status.pending_launches)
    except Exception as exc:  # as above: an SDK that differs between Ray versions means "may grow"
        log.debug("autoscaler v2 status unavailable: %s", exc)
        return True
