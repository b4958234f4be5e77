"""The cluster side of a run: connect to (or start) Ray, place and start the replicas and the
coordinator, and tear them down. The driver (`runner.py`) calls these; nothing here knows LeaP.

Every wait here has a deadline, and every refusal names what was asked, what the cluster has and
the config keys to change:

- connecting: `ray.address` "" (or "local") starts a private Ray in this process even when another
  Ray runs on the machine (a Ray Job's entrypoint, which finds RAY_ADDRESS set, joins its cluster);
  "auto" joins the Ray running on this machine; HOST:PORT or ray://HOST:PORT joins that cluster
  or fails within `ray.connect_timeout_s` (a TCP probe first; for a GCS address a question to
  the GCS, which tells a head that requires a token this driver lacks (`ray_auth.py`); then
  `ray.init` under a watchdog).
- placement: one placement group holds a bundle per replica and one CPU for the coordinator, so
  a layout that leaves the coordinator no CPU is refused at placement time. When the cluster
  cannot grow (a local Ray, or no autoscaler) and lacks the resources, the run is refused at once;
  otherwise it waits at most `replicas.placement_timeout_s`.
- engine start-up: replicas are created cheaply, then `start()` loads each engine while the driver
  polls `startup_status()`; it waits at most `replicas.start_timeout_s` and reports the phase a
  late replica was in, or the engine's own error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
import socket
import sys
import threading
import time
from dataclasses import asdict

from ..config import Config, oversubscription, parse_address
from ..errors import ClusterError, DeadlineError, EngineError, RunFailed, first_lines, paragraph, remote_cause

log = logging.getLogger(__name__)

# Actor and placement-group names end in these; each run prefixes its own id (`run_prefix`), so
# two runs on one cluster, even in one namespace, never collide, and an operator still finds a
# run's actors by suffix (`find_actor`, or `ray list actors`).
REPLICA_NAME = "leap-replica-{}"
COORDINATOR_NAME = "leap-coordinator"
PLACEMENT_NAME = "leap-replicas"
COORDINATOR_CPUS = 1

# placement groups and start-up calls made by `create_replicas`, for `start_coordinator` and
# `await_replicas` (one driver per process)
_placed: dict = {}


def run_prefix() -> str:
    """This driver's run id, the prefix of its actors' names (one per driver process)."""
    if "prefix" not in _placed:
        import uuid

        _placed["prefix"] = uuid.uuid4().hex[:8]
    return _placed["prefix"]


def actor_name(suffix: str) -> str:
    return f"{run_prefix()}-{suffix}"


def find_actor(suffix: str, namespace: str):
    """The handle of a live actor in `namespace` whose name ends in `suffix` (any run), for
    operators and tests. Asks the GCS, so it works without the dashboard."""
    import ray

    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == namespace and a["name"].endswith(suffix):
            return ray.get_actor(a["name"], namespace=namespace)
    raise ValueError(f"no live actor named *{suffix} in namespace {namespace}")


# -- model ------------------------------------------------------------------------------------
def model_path(cfg: Config) -> str:
    if cfg.engine.kind == "fake":
        return "fake"
    from ..models import resolve_model

    return resolve_model(cfg.model.path)


# -- connecting ---------------------------------------------------------------------------------
def probe(host: str, port: int, timeout: float) -> str | None:
    """Open a TCP connection to host:port; None when something answers, else why not."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.1)):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except socket.gaierror as exc:
        return f"the host name does not resolve ({exc.strerror or exc})"
    except ConnectionRefusedError:
        return "connection refused: nothing listens on that port"
    except OSError as exc:
        return exc.strerror or str(exc)


def init_ray(cfg: Config) -> dict:
    """Connect as `ray.address` says (module docstring); returns how: {"mode", "address"}."""
    import ray

    if ray.is_initialized():  # a test or a notebook started Ray already
        _placed["mode"] = "existing"
        return {"mode": "existing", "address": None}
    address = (cfg.ray.address or "").strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "local"):
        if address == "" and env and not env.startswith(("http://", "https://")):
            # a Ray Job's entrypoint: the job supervisor points RAY_ADDRESS at its cluster
            return _join(cfg, env, "RAY_ADDRESS (set in the environment; ray.address is empty)")
        return _start_local(cfg)
    if cfg.ray.num_cpus is not None or cfg.ray.num_gpus is not None:
        log.warning("ray.num_cpus / ray.num_gpus apply to a local Ray only; joining %s they are ignored", address)
    if address == "auto":
        return _join_auto(cfg)
    return _join(cfg, address, f"ray.address={address}")


def _start_local(cfg: Config) -> dict:
    import ray

    # Ray 2.52+ turns token authentication on for a new local cluster and writes
    # ~/.ray/auth_token; every later `ray start --head` on the machine then requires the token,
    # which `ray job submit` does not send by default. This in-process cluster lives and dies
    # with the driver, so it opts out unless the user chose a mode.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    need = math.ceil(cfg.replicas.count * cfg.replicas.cpus_per_replica) + COORDINATOR_CPUS
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, need)
    if cfg.ray.autoscaling is not True:  # the local Ray will have exactly this: refuse before starting it
        # GPUs are counted by Ray itself unless ray.num_gpus says; `create_replicas` checks them
        have = {"CPU": num_cpus, "GPU": cfg.ray.num_gpus if cfg.ray.num_gpus is not None else math.inf}
        short = placement_shortfall(cfg, replica_bundle(cfg, have["GPU"]), have, [])
        have = {k: v for k, v in have.items() if v != math.inf}
        if short:
            given = ", ".join(f"ray.num_{k.lower()}s={v:g}" for k, v in have.items() if v is not None)
            raise ClusterError(_refusal(short, f"the local Ray this run would start ({given})"))
    # Ray bounds its own start-up; this is the backstop (generous: a busy machine is slow)
    with _watchdog(max(180.0, cfg.ray.connect_timeout_s),
                   "starting a local Ray took more than 3 minutes; is the machine overloaded, or is /tmp full?",
                   DeadlineError):
        # address="local": a new private instance even when `ray start` left one running here
        ray.init(address="local", num_cpus=num_cpus, num_gpus=cfg.ray.num_gpus, namespace=cfg.ray.namespace,
                 include_dashboard=False, log_to_driver=True)
    _placed["mode"] = "local"
    return {"mode": "local", "address": None}


def _join_auto(cfg: Config) -> dict:
    import ray

    timeout = cfg.ray.connect_timeout_s
    try:
        with _watchdog(timeout, f"ray.address=auto: could not join the Ray running on this machine within "
                                f"ray.connect_timeout_s={timeout:g} s"):
            ray.init(address="auto", namespace=cfg.ray.namespace, log_to_driver=True)
    except ConnectionError as exc:
        raise ClusterError(f"ray.address=auto: no running Ray instance was found on this machine "
                           f"({first_lines(exc, 1)}). Start one with `ray start --head`, give the cluster's "
                           f"address (ray.address=HOST:6379), or leave ray.address empty for a private "
                           f"local Ray.") from None
    _placed["mode"] = "joined"
    return {"mode": "joined", "address": "auto"}


def _join(cfg: Config, address: str, source: str) -> dict:
    import ray

    timeout = cfg.ray.connect_timeout_s
    try:
        _scheme, host, port = parse_address(address)
    except ValueError as exc:
        raise ClusterError(f"{source}: {exc}") from None
    why = probe(host, port, timeout)
    if why is not None:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({source}): {why}. Check that the head "
                           f"node runs (`ray status` there) and that this machine can reach {host}:{port}; "
                           f"leave ray.address empty to run on a private local Ray instead.")
    started = time.monotonic()
    if _scheme == "gcs":  # ray.init would retry a refused token for ~20 s and then blame the connection
        from .ray_auth import refusal

        why = refusal(address, source, host, port, min(timeout / 2, 5.0))
        if why is not None:
            raise ClusterError(why)
    # the question above answers at once from a live GCS; its time comes off the deadline
    left = max(timeout - (time.monotonic() - started), 1.0)
    try:
        with _watchdog(left, f"cannot join the Ray cluster at {address} ({source}): something listens at "
                                f"{host}:{port} but ray.init did not finish within ray.connect_timeout_s="
                                f"{timeout:g} s. Is that the head's GCS port (6379 by default; ray:// for "
                                f"Ray Client, 10001), is the Ray version the same on both sides, and does "
                                f"the head require token authentication (then: export RAY_AUTH_MODE=token "
                                f"and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)?"):
            ray.init(address=address, namespace=cfg.ray.namespace, log_to_driver=True)
    except ClusterError:
        raise
    except Exception as exc:  # version mismatch, authentication, a port that is not Ray's ...
        cause = first_lines(remote_cause(exc), 3)
        if "authenticat" in cause.lower() or "auth_token" in cause.lower():
            from .ray_auth import FIX

            cause += f" Token authentication: {FIX}."
        raise ClusterError(f"cannot join the Ray cluster at {address} ({source}): {cause}") from None
    _placed["mode"] = "joined"
    return {"mode": "joined", "address": address}


def _terminal_streams() -> list:
    """Where a last message must go: the terminal the console kept aside while the run's output
    goes to its log (console.py), and this process's stderr (the log, or the terminal)."""
    streams = []
    try:
        from . import console

        streams.append(console.terminal())
    except Exception:
        pass
    if sys.stderr not in streams:
        streams.append(sys.stderr)
    return streams


class _watchdog:
    """Bound a call that has no timeout of its own (ray.init). When time runs out the main
    thread is interrupted and the call's failure becomes `error(message)`; a call
    that still does not return within 3 more seconds ends the process with that message."""

    def __init__(self, seconds: float, message: str, error: type = ClusterError):
        self.seconds, self.message, self.error = seconds, message, error
        self.fired = threading.Event()
        self.done = threading.Event()

    def _fire(self) -> None:
        if self.done.wait(self.seconds):
            return
        self.fired.set()
        import _thread

        _thread.interrupt_main()
        if not self.done.wait(3.0):
            text = paragraph(f"error: {self.message}") + "\n"
            for stream in _terminal_streams():
                try:
                    stream.write(text)
                    stream.flush()
                except Exception:
                    pass
            os._exit(self.error.exit_code)

    def __enter__(self):
        threading.Thread(target=self._fire, name="leap-watchdog", daemon=True).start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.done.set()
        if self.fired.is_set() and (exc_type is None or issubclass(exc_type, (KeyboardInterrupt, Exception))):
            raise self.error(self.message) from None
        return False


# -- placement ---------------------------------------------------------------------------------
def replica_class(kind: str):
    if kind == "fake":
        from ..engines.fake import FakeReplica

        return FakeReplica
    from ..engines.vllm_replica import VLLMReplica

    return VLLMReplica


def engine_options(cfg: Config) -> dict:
    opts = asdict(cfg.engine)
    opts.pop("kind")
    opts["tensor_parallel_size"] = max(cfg.replicas.gpus_per_replica, 1)
    opts["cpus_per_replica"] = cfg.replicas.cpus_per_replica
    opts["run_seed"] = cfg.leap.seed  # the fake writes by the run's seed, whichever replica serves
    # each replica's stdout/stderr (and its engine processes') go to a file of their own: the
    # console stays readable, and start-up phases and failures are read back from it
    opts["log_file"] = str(Path(cfg.output_dir).resolve() / "logs" / "replica-{index}.log")
    return opts


def cluster_can_grow(cfg: Config) -> bool:
    """Can the cluster add nodes? `ray.autoscaling` decides when set; a local Ray cannot; a
    joined cluster can when its autoscaler reports node types it may launch (a cluster started
    by hand reports only its own nodes, as `node_<id>`)."""
    if cfg.ray.autoscaling is not None:
        return bool(cfg.ray.autoscaling)
    if _placed.get("mode") == "local":
        return False
    try:
        from ray.experimental.internal_kv import _internal_kv_get

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
    except Exception as exc:  # an older or newer Ray: do not refuse on a guess
        log.debug("could not tell whether the cluster autoscales: %s", exc)
        return True
    return False


def _v2_can_grow() -> bool:
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        nodes = list(status.active_nodes) + list(status.idle_nodes)
        return any(not str(n.ray_node_type_name).startswith("node_") for n in nodes) or bool(status.pending_launches)
    except Exception as exc:
        log.debug("autoscaler v2 status unavailable: %s", exc)
        return True


def _fmt(res: dict) -> str:
    keys = [k for k in ("CPU", "GPU") if res.get(k)] + sorted(
        k for k in res if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")
        and res[k] and not k.startswith("accelerator_type"))
    return "{" + ", ".join(f"{k}: {res[k]:g}" for k in keys) + "}" if keys else "{}"


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) + 1e-9 >= v for k, v in bundle.items())


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
        out.append(f"a replica's bundle {_fmt(replica_bundle)} but no node has that much (nodes: "
                   f"{', '.join(_fmt(nd) for nd in nodes)})")
    elif rc.strategy == "STRICT_SPREAD" and len(fit) < n:
        out.append(f"{n} nodes that each hold {_fmt(replica_bundle)} (replicas.strategy=STRICT_SPREAD) but "
                   f"only {len(fit)} do")
    elif rc.strategy == "STRICT_PACK":
        whole = {k: v * n for k, v in replica_bundle.items()}
        whole["CPU"] = whole.get("CPU", 0) + COORDINATOR_CPUS
        if not any(_fits(whole, nd) for nd in nodes):
            out.append(f"one node with {_fmt(whole)} (replicas.strategy=STRICT_PACK: every replica and the "
                       f"coordinator on one node) but the largest has {_fmt(max(nodes, key=lambda d: d.get('CPU', 0)))}")
    return out


def _refusal(short: list[str], subject: str) -> str:
    return (f"{subject} cannot hold the run: it needs {'; and '.join(short)}. Lower "
            f"replicas.count, replicas.cpus_per_replica or replicas.gpus_per_replica, or give Ray more "
            f"(ray.num_cpus=N for a local Ray; `ray start --num-cpus=N`; a head started with --num-cpus=0 "
            f"runs no actors).")


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


def create_replicas(cfg: Config, model: str):
    """Place the run (a bundle per replica, plus the coordinator's CPU) and create the replica
    actors; their engines start loading at once (`await_replicas` waits for them).
    Returns (replica handles, placement group)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    rc = cfg.replicas
    total = ray.cluster_resources()
    bundle = replica_bundle(cfg, total.get("GPU", 0))
    gpus = bundle.get("GPU", 0)
    if gpus != rc.gpus_per_replica:
        log.info("fake engine on a cluster without GPUs: replicas ask for none "
                 "(replicas.gpus_per_replica=%s ignored)", rc.gpus_per_replica)
    nodes = [nd["Resources"] for nd in ray.nodes() if nd.get("Alive")]
    short = placement_shortfall(cfg, bundle, total, nodes)
    grows = cluster_can_grow(cfg)
    if short and not grows:
        raise ClusterError(_refusal(short, f"this Ray cluster ({_fmt(total)} on {len(nodes)} node(s), and it "
                                           f"cannot add nodes)"))
    if short:
        log.warning("the cluster lacks resources for now (%s); waiting up to replicas.placement_timeout_s=%gs "
                    "for its autoscaler", "; ".join(short), rc.placement_timeout_s)
    bundles = [dict(bundle) for _ in range(rc.count)]
    coordinator_bundle = {"CPU": COORDINATOR_CPUS}
    groups = []
    if rc.strategy == "STRICT_SPREAD":  # the coordinator need not take a node of its own
        groups.append(placement_group(bundles, strategy=rc.strategy, name=actor_name(PLACEMENT_NAME)))
        groups.append(placement_group([coordinator_bundle], strategy="PACK", name=actor_name(COORDINATOR_NAME)))
        coord_at = (groups[1], 0)
    else:
        groups.append(placement_group(bundles + [coordinator_bundle], strategy=rc.strategy,
                                      name=actor_name(PLACEMENT_NAME)))
        coord_at = (groups[0], rc.count)
    t0 = time.monotonic()
    if not _wait_placed(groups, rc.placement_timeout_s, bundle):
        avail = ray.available_resources()
        for pg in groups:
            try:
                remove_placement_group(pg)
            except Exception:
                pass
        raise DeadlineError(
            f"could not place the run within replicas.placement_timeout_s={rc.placement_timeout_s:g} s: it "
            f"asks for {rc.count} x {_fmt(bundle)} (replicas.count, replicas.cpus_per_replica, "
            f"replicas.gpus_per_replica) plus {{CPU: {COORDINATOR_CPUS}}} for the coordinator "
            f"(replicas.strategy={rc.strategy}); the cluster has {_fmt(total)} of which {_fmt(avail)} is free"
            f" (other jobs may hold the rest: `ray status`). Lower the request, free the cluster, or raise "
            f"replicas.placement_timeout_s.")
    placing_s = time.monotonic() - t0
    pg = groups[0]
    replicas, starts = [], []
    for i in range(rc.count):
        handle = _replica_actor(cfg, model, pg, i, gpus)
        replicas.append(handle)
        starts.append(handle.start.remote())
    _placed.update(groups=groups, coordinator_at=coord_at, starts=starts, placing_s=placing_s,
                   replicas=replicas, model=model, gpus=gpus)
    return replicas, pg


def _replica_actor(cfg: Config, model: str, pg, i: int, gpus: float):
    """Replica i's actor in bundle i of the run's placement group (named, not yet started)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rc = cfg.replicas
    options = dict(
        name=actor_name(REPLICA_NAME.format(i)), namespace=cfg.ray.namespace,
        num_cpus=rc.cpus_per_replica, num_gpus=gpus, max_concurrency=1000,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        # vLLM logs every step of its start-up at INFO; keep the driver's console readable
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
    )
    return _create_named(ray.remote(replica_class(cfg.engine.kind)).options(**options),
                         (i, model, engine_options(cfg), cfg.leap.seed + i))


def _create_named(actor_cls, args: tuple = (), kwargs: dict | None = None, wait_s: float = 15.0):
    """Create a named actor; a dead predecessor's name can take a moment to be released."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return actor_cls.remote(*args, **(kwargs or {}))
        except ValueError as exc:
            if "already" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def replace_replica(cfg: Config, i: int):
    """A new replica i, in bundle i of the run's placement group (Ray places a bundle lost with
    its node again once the cluster has room), with its start under way; returns (handle, the
    start call's ref)."""
    handle = _replica_actor(cfg, _placed["model"], _placed["groups"][0], i, _placed.get("gpus", 0))
    return handle, handle.start.remote()


def _wait_placed(groups: list, timeout: float, bundle: dict) -> bool:
    import ray

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
                     _fmt(bundle), _fmt(ray.available_resources()), deadline - time.monotonic())


# -- engine start-up ---------------------------------------------------------------------------
ANSWER_TIMEOUT_S = 120.0  # an actor call that should return at once; a stuck actor ends the run


def answer(ref, what: str, timeout: float = ANSWER_TIMEOUT_S):
    """`ray.get` with a deadline: an actor that does not answer in time ends the run with a
    message naming it, instead of a silent hang."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        raise DeadlineError(paragraph(
            f"{what} did not answer within {timeout:.0f} s; its actor is alive but stuck (a busy or "
            f"overloaded node?). Finished groups and checkpoints are saved: rerun the same command "
            f"to continue.")) from None


def await_replicas(cfg: Config, replicas: list) -> list[dict]:
    """Wait for every replica's `start()`, at most `replicas.start_timeout_s`; returns their
    `info()`. An engine that fails ends the run with its own cause; a late one with its phase."""
    import ray

    timeout = cfg.replicas.start_timeout_s
    starts = _placed.get("starts")
    if not starts or len(starts) != len(replicas):
        starts = [r.start.remote() for r in replicas]
    _placed["starts"] = None
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
            raise DeadlineError(_late_message(cfg, replicas, late, timeout))
        ready, pending = ray.wait(pending, num_returns=1, timeout=min(left, 5.0))
        for ref in ready:
            i = index[ref]
            try:
                infos[i] = ray.get(ref, timeout=0)  # ray.wait said it is ready
            except Exception as exc:
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
    import ray

    refs = {i: replicas[i].startup_status.remote() for i in which}
    out = {}
    for i, ref in refs.items():
        try:
            status = ray.get(ref, timeout=5)
        except Exception:
            out[i] = "not answering"
            continue
        phases = status.get("phases") or []
        current = next((p for p in reversed(phases) if not p.get("done")), phases[-1] if phases else None)
        out[i] = f"{current['name']} for {current.get('seconds', 0):.0f} s" if current else "no phase reported"
        if status.get("error"):
            out[i] += f" (error: {first_lines(status['error'], 1)})"
    return out


def _late_message(cfg: Config, replicas: list, late: list[int], timeout: float) -> str:
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


# -- coordinator -------------------------------------------------------------------------------
def start_coordinator(cfg: Config, replicas: list, model: str, points, prompts, sampling, pg=None,
                      bundle_index: int | None = None, epoch: int = 1, dead: list[int] | None = None):
    """Create the coordinator actor in the CPU bundle reserved for it. Called again by the
    driver when a coordinator dies (the bundle is free again by then), with the next `epoch`
    (replicas refuse requests of earlier coordinators) and the replicas known to be `dead`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ..coordinator.actor import Coordinator

    if pg is None and _placed.get("coordinator_at") is not None:
        pg, bundle_index = _placed["coordinator_at"]
    elif pg is not None and bundle_index is None:
        at = _placed.get("coordinator_at")
        bundle_index = at[1] if at is not None and at[0] is pg else cfg.replicas.count
    options = dict(name=actor_name(COORDINATOR_NAME), namespace=cfg.ray.namespace, num_cpus=COORDINATOR_CPUS,
                   max_concurrency=1000, max_restarts=0)
    if pg is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_index)
    rc = cfg.replicas
    args = (list(replicas), "fake" if cfg.engine.kind == "fake" else model, points, prompts, sampling)
    kwargs = dict(placement=rc.placement, max_groups_in_flight=rc.max_groups_in_flight,
                  embed_model=cfg.leap.embedding_model, schedule=rc.schedule, oversubscribe=oversubscription(cfg),
                  epoch=epoch, dead=list(dead or []), unavailable_retry_s=rc.unavailable_retry_s,
                  request_timeout={"floor_s": rc.request_timeout_floor_s, "factor": rc.request_timeout_factor},
                  replica_wait_s=(rc.placement_timeout_s + rc.start_timeout_s) if rc.max_replacements else None)
    return _create_named(ray.remote(Coordinator).options(**options), args, kwargs)


def await_coordinator(cfg: Config, coordinator, ref=None) -> dict:
    """Wait (at most replicas.start_timeout_s) for the coordinator's `ready()`: it loads the
    tokenizer (and an embedder) first. Returns what `ready()` says."""
    import ray
    from ray.exceptions import GetTimeoutError

    timeout = cfg.replicas.start_timeout_s
    try:
        return ray.get(ref if ref is not None else coordinator.ready.remote(), timeout=timeout)
    except GetTimeoutError:
        raise DeadlineError(f"the coordinator did not come up within replicas.start_timeout_s={timeout:g} s "
                            f"(it loads the tokenizer of model.path={cfg.model.path} first)") from None
    except Exception as exc:
        if coordinator_died(exc):
            raise RunFailed(f"the coordinator could not start: {remote_cause(exc)}") from None
        raise


def restart_coordinator(cfg: Config, replicas: list, model: str, points, prompts, sampling, capacity: list[int],
                        recovery, cause: BaseException, old=None, dead: list[int] | None = None):
    """A new coordinator after the last one died: in the bundle reserved for it, with the
    replicas' capacity, given every group still out, each from its latest checkpoint. The live
    replicas are fenced first: what the dead coordinator still has running there can no longer
    change a path. Raises RunFailed once `replicas.coordinator_restarts` new ones were started."""
    import ray

    limit = cfg.replicas.coordinator_restarts
    t0 = time.monotonic()
    if old is not None:  # make sure it is gone, and its name free
        kill(old)
    while True:
        if len(recovery.restarts) >= limit:
            raise RunFailed(f"the coordinator died again ({first_lines(remote_cause(cause), 1)}) after {limit} "
                            f"restart(s) (replicas.coordinator_restarts={limit}); finished groups and checkpoints "
                            f"are saved: rerun the same command to continue")
        epoch = len(recovery.restarts) + 2  # the first coordinator is generation 1
        fence(replicas, epoch, skip=dead or [])
        coordinator = start_coordinator(cfg, replicas, model, points, prompts, sampling, epoch=epoch, dead=dead)
        try:
            await_coordinator(cfg, coordinator)  # RunFailed: it died while starting
            answer(coordinator.set_capacity.remote(list(capacity)), "the new coordinator (set_capacity)")
            items = recovery.pending()
            if items:
                answer(coordinator.submit.remote(items), "the new coordinator (submit)")
        except Exception as exc:
            if not (isinstance(exc, RunFailed) or coordinator_died(exc) or unavailable(exc)):
                raise
            # killed (or its node lost) before it took over: that start counts, and the next
            # one is a later generation
            log.warning("the new coordinator died while taking over (%s); starting another",
                        first_lines(remote_cause(exc), 1))
            recovery.coordinator_lost(f"{type(exc).__name__}: {first_lines(remote_cause(exc), 1)}")
            kill(coordinator)
            cause = exc
            continue
        break
    recovery.coordinator_restarted(f"{type(cause).__name__}: {first_lines(remote_cause(cause), 1)}", len(items))
    log.warning("the coordinator died (%s); a new one took over in %.1f s and resumed %d group(s), %d from "
                "their last barrier", first_lines(remote_cause(cause), 1), time.monotonic() - t0, len(items),
                recovery.restarts[-1]["from_checkpoint"])
    return coordinator


def fence(replicas: list, epoch: int, skip: list[int], timeout: float = 30.0) -> None:
    """Tell every live replica that coordinator generation `epoch` took over. Best effort: a
    replica that misses it still refuses old requests once the new coordinator reaches it."""
    import ray

    refs = {i: r.fence.remote(epoch) for i, r in enumerate(replicas) if i not in skip}
    for i, ref in refs.items():
        try:
            stopped = ray.get(ref, timeout=timeout)
            if stopped:
                log.info("replica %d: %d request(s) of the dead coordinator stopped", i, stopped)
        except Exception as exc:  # a dead or stuck replica: the new coordinator will find out
            log.warning("replica %d could not be fenced (%s)", i, type(exc).__name__)


def coordinator_died(exc: BaseException) -> bool:
    """Did this call fail because the coordinator actor is gone (killed, crashed, its node lost)?
    A coordinator unreachable for a moment (`ActorUnavailableError`) is not: see `unavailable`."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, RayActorError) and not isinstance(exc, ActorUnavailableError)


def unavailable(exc: BaseException) -> bool:
    """A network blip: the actor is alive but could not be reached; worth a retry."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(exc, ActorUnavailableError)


def teardown(handles: list, groups: list | None = None) -> None:
    """Kill the actors and free the placement groups; what is already gone is skipped. A Ray
    this driver started or joined is then left, so that the actors' last log lines (a failed
    engine's traceback, forwarded late) go to the run's log and not under the error message;
    a Ray someone else initialised in this process (a test, a notebook) stays up."""
    import ray
    from ray.util.placement_group import remove_placement_group

    for handle in handles:
        kill(handle)
    for pg in groups if groups is not None else _placed.get("groups", []):
        try:
            remove_placement_group(pg)
        except Exception:
            pass
    _placed.pop("groups", None)
    _placed.pop("coordinator_at", None)
    if _placed.pop("mode", None) in ("local", "joined"):
        try:
            ray.shutdown()
        except Exception:
            pass


def kill(handle) -> None:
    """Kill an actor for good; one already gone is fine."""
    import ray

    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:  # already dead, or its node is gone
        log.debug("kill: %s", exc)
