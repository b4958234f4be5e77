"""cluster/ configs are secure by default (issue 15): the dashboard, which serves the Jobs API
(remote code execution for whoever reaches it), is never bound to all interfaces without Ray's
token authentication; token authentication is on for every Ray process; no token is written in
the files."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from tests.conftest import REPO

LAUNCHER = REPO / "cluster" / "gpu-cluster.yaml"
KUBERAY = REPO / "cluster" / "kuberay-raycluster.yaml"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RAY_DEFAULT_DASHBOARD_HOST = "127.0.0.1"  # `ray start` binds the dashboard there unless told


def _load(path):
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- cluster launcher


def _ray_start(commands: list[str], head: bool) -> tuple[str, dict]:
    """The `ray start` command among `commands` and the environment its shell gives it."""
    for command in commands:
        words = shlex.split(command.replace(";", " ; "))
        if "ray" in words and "start" in words:
            env = {}
            for i, w in enumerate(words):
                if w == "ray" and words[i + 1:i + 2] == ["start"]:
                    break
                m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", w)
                if m and (i == 0 or words[i - 1] in ("export", ";") or re.fullmatch(r"[A-Z_]+=.*", words[i - 1])):
                    env[m.group(1)] = m.group(2)
            assert ("--head" in words) == head, command
            return command, env
    raise AssertionError(f"no `ray start` in {commands}")


def _flag(command: str, name: str) -> str | None:
    m = re.search(rf"--{name}[= ](\S+)", command)
    return m.group(1).strip("'\"") if m else None


def _container_env(cfg: dict) -> dict:
    env = {}
    for option in (cfg.get("docker") or {}).get("run_options") or []:
        m = re.fullmatch(r"(?:-e|--env)[= ]([A-Z_][A-Z0-9_]*)=(.*)", option.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def test_launcher_turns_token_auth_on_for_every_node():
    cfg = _load(LAUNCHER)
    for key, head in (("head_start_ray_commands", True), ("worker_start_ray_commands", False)):
        _, env = _ray_start(cfg[key], head)
        assert env.get("RAY_AUTH_MODE") == "token", f"{key}: ray start runs without RAY_AUTH_MODE=token"
    # and every process in the containers (autoscaler, jobs, `ray exec`) as well
    assert _container_env(cfg).get("RAY_AUTH_MODE") == "token"


def test_launcher_dashboard_is_private_or_authenticated():
    cfg = _load(LAUNCHER)
    command, env = _ray_start(cfg["head_start_ray_commands"], head=True)
    host = _flag(command, "dashboard-host") or RAY_DEFAULT_DASHBOARD_HOST
    if host not in LOOPBACK:
        assert env.get("RAY_AUTH_MODE") == "token", f"dashboard on {host} without token authentication"
    assert host in LOOPBACK, "the launcher's dashboard is reached through `ray dashboard` (SSH): keep it on loopback"


def test_launcher_ships_the_token_as_a_file_never_as_text():
    cfg = _load(LAUNCHER)
    mounts = cfg.get("file_mounts") or {}
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "setup_commands",
                "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        for command in cfg.get(key) or []:
            assert "RAY_AUTH_TOKEN=" not in command, f"{key}: a token written in the command"
    assert "RAY_AUTH_TOKEN" not in _container_env(cfg)


# --------------------------------------------------------------------------- KubeRay


def _containers(spec: dict):
    """(where, container) for the head and every worker group."""
    for c in spec["headGroupSpec"]["template"]["spec"]["containers"]:
        yield "head", c
    for group in spec.get("workerGroupSpecs") or []:
        for c in group["template"]["spec"]["containers"]:
            yield f"worker group {group['groupName']}", c


def _token_env(env: list[dict], where: str) -> None:
    """RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN from a Secret (never a literal value)."""
    by_name = {e["name"]: e for e in env or []}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE is not token"
    token = by_name.get("RAY_AUTH_TOKEN")
    assert token is not None, f"{where}: no RAY_AUTH_TOKEN"
    assert "value" not in token, f"{where}: RAY_AUTH_TOKEN written in the file"
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "leap-ray-auth" and ref["key"] == "auth_token"
    assert not ref.get("optional"), f"{where}: pods must not start without the token"


def test_kuberay_turns_token_auth_on_everywhere():
    spec = _load(KUBERAY)["spec"]
    if (spec.get("authOptions") or {}).get("mode") == "token":  # the operator does it
        return
    for where, container in _containers(spec):
        _token_env(container.get("env"), f"{where} ({container['name']})")
    if spec.get("enableInTreeAutoscaling"):
        _token_env((spec.get("autoscalerOptions") or {}).get("env"), "autoscaler")


def test_kuberay_dashboard_is_private_or_authenticated():
    spec = _load(KUBERAY)["spec"]
    head = spec["headGroupSpec"]
    host = str((head.get("rayStartParams") or {}).get("dashboard-host", RAY_DEFAULT_DASHBOARD_HOST))
    token = (spec.get("authOptions") or {}).get("mode") == "token" or all(
        any(e.get("name") == "RAY_AUTH_MODE" and e.get("value") == "token" for e in c.get("env") or [])
        for _, c in _containers(spec))
    assert host in LOOPBACK or token, f"dashboard on {host} without token authentication"
    # the head's Service stays inside the Kubernetes cluster (reach it with kubectl port-forward)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("path", [LAUNCHER, KUBERAY], ids=["launcher", "kuberay"])
def test_no_token_literal_in_the_file(path):
    text = path.read_text()
    assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), "a long hex string: a token written in the file?"
    assert not re.search(r"RAY_AUTH_TOKEN\s*=\s*['\"]?[A-Za-z0-9_\-]{8,}", text)
    assert not re.search(r"name:\s*RAY_AUTH_TOKEN\s*,\s*value:", text)
