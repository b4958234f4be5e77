"""Exactly once under faults (issue 15), with the fake engine, whose text depends only on the run
seed and the request: a run disturbed by any mix of faults must write exactly the undisturbed
run's paths and messages (what the model wrote, never where or how fast it ran).

The multi-node cases run on `ray.cluster_utils.Cluster` (several raylets on this machine) with
the driver as a subprocess joining it, as a user's `python -m orchestrator ray.address=...` would.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from orchestrator.driver.actors import find_actor  # noqa: E402
from tests.conftest import REPO, compose, run_in_thread  # noqa: E402

pytestmark = pytest.mark.ray

NS = "orchestrator"
BASE = ["engine=fake", "dataset=synthetic", "leap.paths=4", "leap.T=160", "leap.max_rounds=3", "leap.top_k=2",
        "leap.summary_tokens=48", "progress=false", "plots=false", "replicas.gpus_per_replica=0"]
# where and how fast a path ran, which faults change; everything else must not change
PLACE_COLUMNS = {"replica", "node", "requests", "cached_tokens", "uncached_tokens", "resumed_from_round"}


def content(out) -> tuple[list, list]:
    out = Path(out)
    paths = pq.read_table(out / "paths.parquet")
    paths = paths.drop_columns([c for c in paths.column_names if c in PLACE_COLUMNS]).to_pylist()
    msgs = pq.read_table(out / "messages.parquet").to_pylist()
    key = ("sweep_point", "problem_id", "path")
    assert len({tuple(p[k] for k in key) for p in paths}) == len(paths), "a path is duplicated"
    return sorted(paths, key=lambda p: tuple(p[k] for k in key)), \
        sorted(msgs, key=lambda m: (m["sweep_point"], m["problem_id"], m["round"], m["recipient"], m["rank"]))


def cli_cmd(out, *args) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *BASE, f"output_dir={out}", *args]


def env_for(**extra) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed run: one replica on a private local Ray, no latency."""
    out = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(cli_cmd(out, "replicas.count=1", "dataset.limit=4"), cwd=REPO, env=env_for(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return content(out)


def wait_for(predicate, what: str, timeout: float = 90.0, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoints(out) -> int:
    return len(list(Path(out).glob("checkpoints/*/*.ckpt")))


def stamps(out) -> dict:
    """Each checkpoint file's modification time (a file deleted meanwhile is left out)."""
    found = {}
    for f in Path(out).glob("checkpoints/*/*.ckpt"):
        try:
            found[f] = f.stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return found


def finished(out) -> bool:
    return (Path(out) / "paths.parquet").exists()


def test_a_replica_that_stops_answering_is_killed_and_replaced(reference, tmp_path):
    """SIGSTOP one of three replicas: the request deadline fires, the replica is killed, its
    paths move, a replacement takes its bundle, and the results are the undisturbed ones."""
    ray.init(address="local", num_cpus=4, namespace=NS, include_dashboard=False)
    stopped = None
    try:
        cfg = compose(BASE + [f"output_dir={tmp_path}", "replicas.count=3", "replicas.cpus_per_replica=0.5",
                              "dataset.limit=4", "+engine.latency.decode_base_s=0.005",
                              "replicas.request_timeout_floor_s=3", "replicas.request_timeout_factor=3"])
        thread, result = run_in_thread(cfg)
        wait_for(lambda: checkpoints(tmp_path), "a first barrier")
        victim = find_actor("leap-replica-1", NS)
        stopped = ray.get(victim.info.remote(), timeout=10)["pid"]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.time()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the run hung on the stopped replica"
        assert "error" not in result, result.get("error")
        assert time.time() - t0 < 90
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        ray.shutdown()
    assert content(tmp_path) == reference
    info = json.loads((tmp_path / "run_info.json").read_text())
    (death,) = info["replica_deaths"]
    assert death["replica"] == 1 and "alive but stuck" in death["cause"]
    # its replacement was started (it may still be loading when a run this short ends)
    assert [r["replica"] for r in info["replacements"] if r["ok"] is not False] == [1]


def test_two_sweeps_on_one_cluster_at_once(reference, tmp_path):
    """Two drivers join one cluster in the same namespace at the same time: both finish, each
    with the undisturbed results."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    try:
        args = ["replicas.count=1", "dataset.limit=4", f"ray.address={cluster.address}",
                "+engine.latency.decode_base_s=0.002"]
        procs = [subprocess.Popen(cli_cmd(tmp_path / name, *args), cwd=REPO, env=env_for(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a", "b")]
        outs = [p.communicate(timeout=240) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err
    finally:
        cluster.shutdown()
    for name in ("a", "b"):
        assert content(tmp_path / name) == reference
    ids = {json.loads((tmp_path / n / "run_info.json").read_text())["run_id"] for n in ("a", "b")}
    assert len(ids) == 2


def test_ctrl_c_stops_within_seconds_and_the_rerun_completes_exactly(reference, tmp_path):
    out = tmp_path / "out"
    args = ["replicas.count=1", "dataset.limit=4"]
    proc = subprocess.Popen(cli_cmd(out, *args, "+engine.latency.decode_base_s=0.01"), cwd=REPO, env=env_for(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: checkpoints(out), "a first barrier")
        assert not finished(out)
        # a second run on the same directory is refused at once, naming this one
        second = subprocess.run(cli_cmd(out, *args), cwd=REPO, env=env_for(), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and f"pid {proc.pid}" in " ".join(second.stderr.split()), second.stderr
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert took < 15, took
    assert "rerun the same command" in err and "Traceback" not in err
    assert checkpoints(out) and not finished(out)
    # a rerun with another temperature or seed would mix two configs: refused before Ray starts
    config = (out / "config.json").read_bytes()
    changed = subprocess.run(cli_cmd(out, *args, "sampling.temperature=0.9", "leap.seed=7"), cwd=REPO,
                             env=env_for(), capture_output=True, text=True, timeout=60)
    assert changed.returncode == 2, changed.stderr
    said = " ".join(changed.stderr.split())  # the error paragraph is wrapped
    assert "sampling.temperature: 0.6 -> 0.9" in said and "leap.seed: 0 -> 7" in said and "output_dir=" in said
    assert (out / "config.json").read_bytes() == config
    rerun = subprocess.run(cli_cmd(out, *args), cwd=REPO, env=env_for(), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert content(out) == reference


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    proc = subprocess.Popen(cli_cmd(tmp_path, "replicas.count=1", "dataset.limit=4",
                                    "+engine.latency.decode_base_s=0.01"),
                            cwd=REPO, env=env_for(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: checkpoints(tmp_path), "a first barrier")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and time.monotonic() - t0 < 10, err


def test_chaos_on_a_multi_node_cluster_gives_the_undisturbed_results(reference, tmp_path):
    """The coordinator killed twice, replicas killed twice, a replica stopped, a worker node
    removed and another added, the driver SIGKILLed and the same command rerun: the results are
    exactly the undisturbed run's."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    args = ["replicas.count=3", "replicas.cpus_per_replica=1", "dataset.limit=4", "replicas.strategy=SPREAD",
            f"ray.address={cluster.address}", "replicas.request_timeout_floor_s=3",
            "replicas.request_timeout_factor=1"]
    slow = "+engine.latency.decode_base_s=0.08"
    stopped: list[int] = []
    procs = []
    try:
        ray.init(address=cluster.address, namespace=NS)

        def start():
            p = subprocess.Popen(cli_cmd(out, *args, slow), cwd=REPO, env=env_for(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
            procs.append(p)
            return p

        def barriers_past(n):
            return wait_for(lambda: len(list((out / "logs").glob("*"))) and checkpoints(out) >= n and
                            not finished(out), f"{n} checkpoint(s)")

        def kill(suffix):
            ray.kill(wait_for(lambda: _try_find(suffix), suffix, timeout=60))

        driver = start()
        barriers_past(1)
        kill("leap-coordinator")  # 1: the coordinator, mid-run
        time.sleep(1.0)
        kill("leap-replica-")  # 2: a replica
        time.sleep(1.0)
        kill("leap-coordinator")  # 3: the coordinator again (the new one)
        time.sleep(1.0)
        # 4: a worker node with replicas on it goes, another joins
        cluster.remove_node(workers[0])
        workers.append(cluster.add_node(num_cpus=2))
        time.sleep(1.0)
        kill("leap-replica-")  # 5: another replica
        assert driver.poll() is None and not finished(out), "the run ended before the faults were done"
        # 6: the driver is SIGKILLed and the same command rerun
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        before = stamps(out)
        rerun = start()
        wait_for(lambda: any(before.get(f) != t for f, t in stamps(out).items()), "a checkpoint written by the rerun")
        # 7: a replica of the rerun stops answering
        victim = wait_for(lambda: _try_find("leap-replica-"), "a replica", timeout=60)
        pid = ray.get(victim.info.remote(), timeout=10)["pid"]
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        _, err = rerun.communicate(timeout=240)
        assert rerun.returncode == 0, err
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        ray.shutdown()
        cluster.shutdown()
    assert content(out) == reference
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_groups"], "the rerun resumed nothing from the checkpoints"
    assert any("alive but stuck" in d["cause"] for d in info["replica_deaths"])


def _try_find(name_part):
    """A live actor of this namespace whose name holds `name_part` (a replica: the lowest index)."""
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["namespace"] == NS and name_part in a["name"])
    for name in names:
        try:
            return ray.get_actor(name, namespace=NS)
        except ValueError:  # died meanwhile
            continue
    return None
