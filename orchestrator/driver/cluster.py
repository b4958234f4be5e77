"""A run's share of the Ray cluster, as one object the driver holds: how Ray was reached, the
run's id, its placement, its replicas and its coordinator.

    cluster = Cluster.start(cfg)                          # Ray connected (`ray_init.py`)
    cluster.create_replicas(model)                        # placed (`placement.py`), engines loading
    cluster.launch_coordinator(points, prompts, sampling) # in its own bundle, loading meanwhile
    infos = cluster.await_replicas()                      # at most replicas.start_timeout_s
    cluster.await_coordinator()
    cluster.restart_coordinator(recovery, capacity, cause, dead)   # after the coordinator died
    handle, ref = cluster.replace_replica(i)              # a new replica i in its bundle
    cluster.teardown()                                    # actors, placement groups, Ray

Every wait has a deadline, and every refusal names what was asked, what the cluster has and the
config keys to change. Nothing here knows LeaP: the driver (`loop.py`) decides what to run.
"""

from __future__ import annotations

import logging
import time
import uuid

import ray
from ray.exceptions import RayActorError

from . import launch, ray_init, replicas
from .actors import GONE, answer, kill
from .placement import Placement, can_grow, place, remove
from ..config import Config
from ..errors import RunFailed, first_lines, remote_cause

log = logging.getLogger(__name__)

# Actor and placement-group names end in these; each run prefixes its own id, so two runs on
# one cluster, even in one namespace, never collide, and an operator still finds a run's actors
# by suffix (`actors.find_actor`, or `ray list actors`).
REPLICA_NAME = "leap-replica-{}"
COORDINATOR_NAME = "leap-coordinator"
PLACEMENT_NAME = "leap-replicas"


class Cluster:
    def __init__(self, cfg: Config, ray_facts: dict, run_id: str):
        self.cfg = cfg
        self.ray = ray_facts  # {"mode": "local" | "joined" | "existing", "address"}
        self.run_id = run_id  # the prefix of the run's actor and placement-group names
        self.model: str | None = None
        self.log_file: str | None = None  # the replicas' engine log, when not the run's logs/
        self.placement: Placement | None = None
        self.replicas: list = []  # slot i: replica i's handle (a replacement takes its slot)
        self.created: list = []  # every replica handle made, for teardown
        self.starts: list | None = None  # the first replicas' start() calls
        self.coordinator = None
        self.coordinator_ready = None  # the first coordinator's ready() call
        self.launch_args: tuple | None = None  # (points, prompts, sampling), for a new coordinator

    @classmethod
    def start(cls, cfg: Config) -> "Cluster":
        """Connect to Ray as `ray.address` says; the run gets a fresh id."""
        return cls(cfg, ray_init.connect(cfg), uuid.uuid4().hex[:8])

    def actor_name(self, suffix: str) -> str:
        return f"{self.run_id}-{suffix}"

    # -- replicas ----------------------------------------------------------------------------------
    def create_replicas(self, model: str, log_file: str | None = None) -> list:
        """Place the run (a bundle per replica, plus the coordinator's CPU) and create the replica
        actors; their engines start loading at once (`await_replicas` waits for them). Their
        engines log to `log_file` ("{index}": the replica's) when given, else to the run's logs/."""
        self.model = model
        self.log_file = log_file
        self.placement = place(self.cfg, self.actor_name(PLACEMENT_NAME), self.actor_name(COORDINATOR_NAME),
                               can_grow(self.cfg, self.ray["mode"]))
        self.starts = []
        for i in range(self.cfg.replicas.count):
            handle = self._replica(i)
            self.replicas.append(handle)
            self.starts.append(handle.start.remote())
        return self.replicas

    def _replica(self, i: int):
        handle = replicas.actor(self.cfg, self.actor_name(REPLICA_NAME.format(i)), self.model,
                                self.placement.replica_group, i, self.placement.gpus, self.log_file)
        self.created.append(handle)
        return handle

    def await_replicas(self) -> list[dict]:
        """Wait for the replicas' engines (`replicas.await_started`); returns their `info()`."""
        starts, self.starts = self.starts, None
        return replicas.await_started(self.cfg, self.replicas, starts)

    def replace_replica(self, i: int):
        """A new replica i, in bundle i of the run's placement group (Ray places a bundle lost with
        its node again once the cluster has room), with its start under way; returns (handle, the
        start call's ref). Slot i keeps the old handle until the caller installs the new one."""
        handle = self._replica(i)
        return handle, handle.start.remote()

    # -- coordinator -------------------------------------------------------------------------------
    def launch_coordinator(self, points, prompts, sampling):
        """The first coordinator, in the bundle reserved for it; its `ready()` is asked at once."""
        self.launch_args = (points, prompts, sampling)
        self.coordinator = self._launch(epoch=1, dead=None)
        self.coordinator_ready = self.coordinator.ready.remote()
        return self.coordinator

    def _launch(self, epoch: int, dead: list[int] | None):
        return launch.launch(self.cfg, self.actor_name(COORDINATOR_NAME), self.placement.coordinator_at,
                             self.replicas, self.model, *self.launch_args, epoch=epoch, dead=dead)

    def await_coordinator(self) -> dict:
        """Wait for the first coordinator's `ready()`; returns what it says."""
        ref, self.coordinator_ready = self.coordinator_ready, None
        return launch.await_ready(self.cfg, self.coordinator, ref)

    def restart_coordinator(self, recovery, capacity: list[int], cause: BaseException,
                            dead: list[int] | None = None):
        """A new coordinator after the last one died: in the bundle reserved for it, with the
        replicas' capacity, given every group still out (`recovery.pending()`), each from its
        latest checkpoint. The live replicas are fenced first: what the dead coordinator still has
        running there can no longer change a path. Raises RunFailed once
        `replicas.coordinator_restarts` new ones were started."""
        limit = self.cfg.replicas.coordinator_restarts
        t0 = time.monotonic()
        if self.coordinator is not None:  # make sure it is gone, and its name free
            kill(self.coordinator)
        while True:
            if len(recovery.restarts) >= limit:
                raise RunFailed(f"the coordinator died again ({first_lines(remote_cause(cause), 1)}) after {limit} "
                                f"restart(s) (replicas.coordinator_restarts={limit}); finished groups and "
                                f"checkpoints are saved: rerun the same command to continue")
            epoch = len(recovery.restarts) + 2  # the first coordinator is generation 1
            self.fence(epoch, skip=dead or [])
            self.coordinator = self._launch(epoch, dead)
            try:
                launch.await_ready(self.cfg, self.coordinator)  # RunFailed: it died while starting
                answer(self.coordinator.set_capacity.remote(list(capacity)), "the new coordinator (set_capacity)")
                items = recovery.pending()
                if items:
                    answer(self.coordinator.submit.remote(items), "the new coordinator (submit)")
            except (RunFailed, RayActorError) as exc:
                # killed (or its node lost, or unreachable) before it took over: that start
                # counts, and the next one is a later generation
                log.warning("the new coordinator died while taking over (%s); starting another",
                            first_lines(remote_cause(exc), 1))
                recovery.coordinator_lost(f"{type(exc).__name__}: {first_lines(remote_cause(exc), 1)}")
                kill(self.coordinator)
                cause = exc
                continue
            break
        recovery.coordinator_restarted(f"{type(cause).__name__}: {first_lines(remote_cause(cause), 1)}", len(items))
        log.warning("the coordinator died (%s); a new one took over in %.1f s and resumed %d group(s), %d from "
                    "their last barrier", first_lines(remote_cause(cause), 1), time.monotonic() - t0, len(items),
                    recovery.restarts[-1]["from_checkpoint"])
        return self.coordinator

    def fence(self, epoch: int, skip: list[int]) -> None:
        """Tell the live replicas (all but `skip`) that coordinator generation `epoch` took over."""
        launch.fence(self.replicas, epoch, skip)

    # -- the end -----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill the coordinator and every replica made, and free the placement group(s); what is
        already gone is skipped. A Ray this driver started or joined is then left, so that the
        actors' last log lines (a failed engine's traceback, forwarded late) go to the run's log
        and not under the error message; a Ray someone else initialised in this process (a test,
        a notebook) stays up."""
        for handle in [self.coordinator, *self.created]:
            if handle is not None:
                kill(handle)
        if self.placement is not None:
            remove(self.placement.groups)
            self.placement = None
        if self.ray["mode"] in ("local", "joined"):
            try:
                ray.shutdown()
            except GONE as exc:  # a connection already lost: nothing left to leave
                log.debug("ray.shutdown: %s", exc)
