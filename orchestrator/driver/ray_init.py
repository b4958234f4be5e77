"""Connecting the driver to Ray, as `ray.address` says, within a deadline.

- "" (or "local") starts a private Ray in this process even when another Ray runs on the machine
  (a Ray Job's entrypoint, which finds RAY_ADDRESS set, joins its cluster instead);
- "auto" joins the Ray running on this machine;
- HOST:PORT or ray://HOST:PORT joins that cluster or fails within `ray.connect_timeout_s`: a TCP
  probe first; for a GCS address a question to the GCS, which tells a head that requires a token
  this driver lacks (`ray_auth.py`); then `ray.init` under a watchdog.

A Ray someone else initialised in this process (a test, a notebook) is used as it is. `connect`
says which of these happened: {"mode": "local" | "joined" | "existing", "address"}.
"""

from __future__ import annotations

import _thread
import logging
import math
import os
import socket
import sys
import threading
import time

import ray

from . import console, ray_auth
from .placement import COORDINATOR_CPUS, placement_shortfall, refusal, replica_bundle
from ..config import Config, parse_address
from ..errors import ClusterError, DeadlineError, first_lines, paragraph, remote_cause

log = logging.getLogger(__name__)


def connect(cfg: Config) -> dict:
    """Connect as `ray.address` says (module docstring); returns how: {"mode", "address"}."""
    if ray.is_initialized():  # a test or a notebook started Ray already
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


def _start_local(cfg: Config) -> dict:
    # Ray 2.52+ turns token authentication on for a new local cluster and writes
    # ~/.ray/auth_token; every later `ray start --head` on the machine then requires the token,
    # which `ray job submit` does not send by default. This in-process cluster lives and dies
    # with the driver, so it opts out unless the user chose a mode.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    need = math.ceil(cfg.replicas.count * cfg.replicas.cpus_per_replica) + COORDINATOR_CPUS
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, need)
    if cfg.ray.autoscaling is not True:  # the local Ray will have exactly this: refuse before starting it
        # GPUs are counted by Ray itself unless ray.num_gpus says; placing the replicas checks them
        have = {"CPU": num_cpus, "GPU": cfg.ray.num_gpus if cfg.ray.num_gpus is not None else math.inf}
        short = placement_shortfall(cfg, replica_bundle(cfg, have["GPU"]), have, [])
        have = {k: v for k, v in have.items() if v != math.inf}
        if short:
            given = ", ".join(f"ray.num_{k.lower()}s={v:g}" for k, v in have.items() if v is not None)
            raise ClusterError(refusal(short, f"the local Ray this run would start ({given})"))
    # Ray bounds its own start-up; this is the backstop (generous: a busy machine is slow)
    with _watchdog(max(180.0, cfg.ray.connect_timeout_s),
                   "starting a local Ray took more than 3 minutes; is the machine overloaded, or is /tmp full?",
                   DeadlineError):
        # address="local": a new private instance even when `ray start` left one running here
        ray.init(address="local", num_cpus=num_cpus, num_gpus=cfg.ray.num_gpus, namespace=cfg.ray.namespace,
                 include_dashboard=False, log_to_driver=True)
    return {"mode": "local", "address": None}


def _join_auto(cfg: Config) -> dict:
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
    return {"mode": "joined", "address": "auto"}


def _join(cfg: Config, address: str, source: str) -> dict:
    timeout = cfg.ray.connect_timeout_s
    try:
        scheme, host, port = parse_address(address)
    except ValueError as exc:
        raise ClusterError(f"{source}: {exc}") from None
    why = probe(host, port, timeout)
    if why is not None:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({source}): {why}. Check that the head "
                           f"node runs (`ray status` there) and that this machine can reach {host}:{port}; "
                           f"leave ray.address empty to run on a private local Ray instead.")
    started = time.monotonic()
    if scheme == "gcs":  # ray.init would retry a refused token for ~20 s and then blame the connection
        why = ray_auth.refusal(address, source, host, port, min(timeout / 2, 5.0))
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
    # a cluster that cannot be joined is the user's to fix, so every way ray.init fails becomes
    # one message (exit 2): a version mismatch (RuntimeError), authentication (AuthenticationError),
    # a port that is not Ray's (ConnectionError), and the bare Exception Ray raises when the head
    # node's info never comes ("timed out during startup", "temp_dir not found")
    except Exception as exc:
        cause = first_lines(remote_cause(exc), 3)
        if "authenticat" in cause.lower() or "auth_token" in cause.lower():
            cause += f" Token authentication: {ray_auth.FIX}."
        raise ClusterError(f"cannot join the Ray cluster at {address} ({source}): {cause}") from None
    return {"mode": "joined", "address": address}


def _terminal_streams() -> list:
    """Where a last message must go: the terminal the console kept aside while the run's output
    goes to its log (console.py), and this process's stderr (the log, or the terminal)."""
    streams = [console.terminal()]
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
        _thread.interrupt_main()
        if not self.done.wait(3.0):
            text = paragraph(f"error: {self.message}") + "\n"
            for stream in _terminal_streams():
                try:
                    stream.write(text)
                    stream.flush()
                except (OSError, ValueError):  # a closed or broken stream: the other one may still work
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
