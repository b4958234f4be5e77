"""Ray with fake replicas: placement over simulated nodes, sticky paths, cross-node messages,
determinism, independence of slow problems, resume after a kill, and failover when a node dies."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from orchestrator.driver.actors import find_actor  # noqa: E402
from orchestrator.driver.runner import run  # noqa: E402
from tests.conftest import REPO, compose  # noqa: E402

pytestmark = pytest.mark.ray

BASE = ["engine=fake", "dataset=synthetic", "leap.paths=4", "leap.T=160", "leap.max_rounds=3",
        "leap.top_k=2", "leap.summary_tokens=48", "progress=false", "plots=false"]


def fake_cfg(out, *extra):
    return compose(BASE + [f"output_dir={out}", *extra])


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=4, namespace="orchestrator", include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def three_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(3)]
    ray.init(address=cluster.address, namespace="orchestrator")
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def read(out):
    return pq.read_table(Path(out) / "paths.parquet").to_pylist(), \
        pq.read_table(Path(out) / "messages.parquet").to_pylist()


def test_three_nodes_sticky_paths_and_cross_node_messages(three_nodes, tmp_path):
    run(fake_cfg(tmp_path, "replicas.count=3", "replicas.gpus_per_replica=1",
                 "replicas.strategy=STRICT_SPREAD"))
    paths, messages = read(tmp_path)
    assert len(paths) == 6 * 4
    worker_ids = {n.node_id for n in three_nodes[1]}
    assert {p["node"] for p in paths} == worker_ids  # a replica on every GPU node
    for p in paths:  # every request of a path went to the same replica
        assert {r["replica"] for r in p["requests"]} == {p["replica"]}
    node_of = {(p["problem_id"], p["path"]): p["node"] for p in paths}
    crossing = [m for m in messages
                if node_of[(m["problem_id"], m["sender"])] != node_of[(m["problem_id"], m["recipient"])]]
    assert crossing, "no peer message crossed nodes"
    assert all(m["sender"] != m["recipient"] for m in messages)


def test_same_seed_gives_identical_files_whatever_the_timing(local_ray, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(fake_cfg(a, "replicas.count=2", "replicas.gpus_per_replica=0"))
    # other replica count, placement and latencies: replies arrive in another order
    run(fake_cfg(b, "replicas.count=3", "replicas.gpus_per_replica=0", "replicas.placement=pack",
                 "+engine.latency.decode_per_seq_s=0.00002", "+engine.latency.prefill_s_per_token=0.00001"))
    assert (a / "messages.parquet").read_bytes() == (b / "messages.parquet").read_bytes()
    # placement changes what the prefix cache can share, and nothing else
    sa, sb = (json.loads((d / "summary.json").read_text())["default"]["synthetic"] for d in (a, b))
    sa.pop("prefix_cache_hit_rate"), sb.pop("prefix_cache_hit_rate")
    assert sa == sb
    pa_, pb = read(a)[0], read(b)[0]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("replica", "node", "requests",
                                                                  "cached_tokens", "uncached_tokens")}
                          for r in rows]
    assert strip(pa_) == strip(pb)
    c = tmp_path / "c"
    run(fake_cfg(c, "replicas.count=2", "replicas.gpus_per_replica=0"))
    for name in ("paths.parquet", "messages.parquet", "summary.json"):
        assert (a / name).read_bytes() == (c / name).read_bytes(), name


def test_slow_problem_does_not_hold_back_the_others(local_ray, tmp_path):
    data = tmp_path / "probs.jsonl"
    rows = [{"id": "slow", "problem": "Compute this. " + "Context sentence. " * 800, "answer": "3"}]
    rows += [{"id": f"fast{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    # one replica per group (pack): the long prompt's prefill stalls only its own engine, as it
    # would on a GPU; with per-problem barriers nothing else waits for that group
    run(fake_cfg(out, f"dataset.path={data}", "replicas.count=4", "replicas.gpus_per_replica=0",
                 "replicas.cpus_per_replica=0.25", "replicas.placement=pack",
                 "+engine.latency.prefill_s_per_token=0.0002", "+engine.latency.decode_base_s=0.00001"))
    parts = sorted((out / "parts").glob("*/*.parquet"), key=lambda p: p.stat().st_mtime)
    assert len(parts) == 4
    from orchestrator.driver.results import ResultStore

    slow = ResultStore(out).part_path("default", "slow")
    assert parts[-1] == slow
    fast_done = max(p.stat().st_mtime for p in parts[:-1])
    assert slow.stat().st_mtime - fast_done > 1.0  # the fast ones did not wait for it


def _cli(out, *extra):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return [sys.executable, "-m", "orchestrator", *BASE, f"output_dir={out}", "replicas.count=2",
            "replicas.gpus_per_replica=0", "replicas.max_groups_in_flight=1", *extra], env


def test_killed_run_resumes_without_duplicates(tmp_path):
    out = tmp_path / "out"
    cmd, env = _cli(out, "+engine.latency.decode_base_s=0.002")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "parts").glob("*/*.parquet"))) < 2:
            time.sleep(0.2)
        assert len(list((out / "parts").glob("*/*.parquet"))) >= 2, "the run made no progress"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len(list((out / "parts").glob("*/*.parquet")))
    assert done_before < 6, "the run finished before it could be killed"
    cmd, env = _cli(out)
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    paths, _ = read(out)
    keys = [(p["problem_id"], p["path"]) for p in paths]
    assert len(keys) == 6 * 4 and len(set(keys)) == len(keys)
    info = json.loads((out / "run_info.json").read_text())
    assert info["groups_skipped"] == done_before and info["groups_run"] == 6 - done_before
    before = (out / "paths.parquet").read_bytes()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    assert json.loads((out / "run_info.json").read_text())["groups_run"] == 0
    assert (out / "paths.parquet").read_bytes() == before


def test_node_death_moves_paths_to_live_replicas(three_nodes, tmp_path):
    cluster, workers = three_nodes
    cfg = fake_cfg(tmp_path, "replicas.count=3", "replicas.gpus_per_replica=1",
                   "replicas.strategy=STRICT_SPREAD", "+engine.latency.decode_base_s=0.001")
    result = {}

    def go():
        try:
            result["summary"] = run(cfg)
        except BaseException as exc:  # reported by the assertion below
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    victim = dead = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline:
        try:
            coord = find_actor("leap-coordinator", "orchestrator")
            snap = ray.get(coord.snapshot.remote())
            if snap.sampled_tokens > 2000:
                # a replica whose node does not also hold the coordinator (it has its own bundle)
                for i in range(3):
                    info = ray.get(find_actor(f"leap-replica-{i}", "orchestrator").info.remote())
                    node = next((n for n in workers if n.node_id == info["node"] and n.node_id != snap.node), None)
                    if node is not None:
                        victim, dead = node, i
                        break
        except ValueError:
            pass
        if victim is None:
            time.sleep(0.1)
    assert victim is not None, "could not find a replica node to kill"
    cluster.remove_node(victim)
    thread.join(timeout=300)
    assert "summary" in result, f"the run did not finish after the node died: {result.get('error')}"
    paths, _ = read(tmp_path)
    assert len(paths) == 24 and all(p["finish_reason"] != "unfinished" for p in paths)
    moved = [p for p in paths if len({r["replica"] for r in p["requests"]}) > 1]
    assert moved, "no path moved off the dead replica"
    for p in moved:  # served by the dead replica until it died, then elsewhere for good
        replicas = [r["replica"] for r in p["requests"]]
        first_other = next(i for i, r in enumerate(replicas) if r != dead)
        assert replicas[0] == dead and dead not in replicas[first_other:]
