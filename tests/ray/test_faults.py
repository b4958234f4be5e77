"""Never hang, never lose work (issue 9), with the fake engine.

Each failure case runs the real command line and checks what its user sees: the exit status, one
paragraph on stderr naming the cause, no traceback, and how long it took. A Ray head started with
`ray start` lives in its own temp dir (RAY_TMPDIR) and ports, and is stopped by its process ids:
other Ray instances on the machine are never touched.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from tests.conftest import REPO, compose, run_in_thread  # noqa: E402

pytestmark = pytest.mark.ray

RAY = str(Path(sys.executable).with_name("ray"))
SMALL = ["engine=fake", "dataset=synthetic", "leap.paths=4", "leap.T=160", "leap.max_rounds=3", "leap.top_k=2",
         "leap.summary_tokens=48", "progress=false", "plots=false", "replicas.gpus_per_replica=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(out, *args, env=None, timeout=120):
    """Run the command line; returns (exit status, stdout, stderr, seconds)."""
    env = dict(os.environ if env is None else env, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *SMALL, f"output_dir={out}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0


def error_paragraph(stderr: str) -> str:
    """The error paragraph: the lines from 'error:' on; Ray's own INFO lines may precede it."""
    lines = stderr.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(("error:", "run failed:")))
    para = lines[start:]
    assert all(ln.strip() for ln in para), f"more than one paragraph:\n{stderr}"
    return " ".join(para)


@pytest.fixture(scope="module")
def head():
    """`ray start --head --num-cpus=2 --num-gpus=1` (a fake GPU) in a private temp dir; yields
    (address, env for it)."""
    tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--num-cpus=2", "--num-gpus=1", f"--port={port}",
           "--include-dashboard=false", "--disable-usage-stats", f"--ray-client-server-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        current = Path(tmp) / "ray" / "ray_current_cluster"
        while time.time() < deadline and not current.exists():
            assert proc.poll() is None, "ray start --head failed"
            time.sleep(0.2)
        assert current.exists(), "ray start --head did not come up in 60 s"
        yield f"127.0.0.1:{port}", env
    finally:
        _stop_head(proc, tmp)


def _stop_head(proc, tmp):
    """Stop the head by process id: its `ray start` session, then any of its processes left
    (they carry the private temp dir on their command line). Never `ray stop`, which would stop
    every Ray on the machine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(2):
        left = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if tmp.encode() in cmdline:
                left.append(int(pid))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not left:
            break
        time.sleep(0.5)
    subprocess.run(["rm", "-rf", tmp], check=False)


def test_unreachable_address_fails_fast_naming_it(tmp_path):
    port = _free_port()  # nothing listens there
    code, out, err, secs = cli(tmp_path, f"ray.address=127.0.0.1:{port}")
    assert code == 2 and secs < 20, (code, secs)
    msg = error_paragraph(err)
    assert f"127.0.0.1:{port}" in msg and "ray.address" in msg and "refused" in msg
    assert "Traceback" not in err + out
    assert not (tmp_path / "parts").exists()


def test_address_that_never_answers_fails_within_the_connect_deadline(tmp_path):
    # a TEST-NET-1 address (RFC 5737): no host answers there
    code, out, err, secs = cli(tmp_path, "ray.address=192.0.2.123:6379", "ray.connect_timeout_s=3")
    assert code == 2 and secs < 20, (code, secs)
    msg = error_paragraph(err)
    assert "192.0.2.123:6379" in msg
    assert "Traceback" not in err + out


def test_a_port_that_is_not_ray_fails_within_the_connect_deadline(tmp_path):
    """Something accepts connections but never speaks Ray: ray.init would retry for minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    try:
        code, out, err, secs = cli(tmp_path, f"ray.address=127.0.0.1:{port}", "ray.connect_timeout_s=3")
    finally:
        listener.close()
    assert code == 2 and secs < 20, (code, secs)
    msg = error_paragraph(err)
    assert f"127.0.0.1:{port}" in msg and "ray.connect_timeout_s=3" in msg
    assert "Traceback" not in err + out


def test_too_few_cpus_for_replicas_and_coordinator_is_refused_with_the_numbers(head, tmp_path):
    address, env = head
    # auto joins the head (RAY_TMPDIR names it); 2 replicas x 1 CPU + 1 for the coordinator > 2
    code, out, err, secs = cli(tmp_path, "ray.address=auto", "replicas.count=2", "replicas.cpus_per_replica=1",
                               env=env)
    assert code == 2 and secs < 30, (code, secs, err)
    msg = error_paragraph(err)
    assert "3 CPUs" in msg and "has 2" in msg and "coordinator" in msg
    assert "replicas.count" in msg and "replicas.cpus_per_replica" in msg
    assert "Traceback" not in err + out
    # by its explicit address, asking for more GPUs than it has
    code, out, err, secs = cli(tmp_path, f"ray.address={address}", "replicas.count=1",
                               "replicas.cpus_per_replica=0.5", "replicas.gpus_per_replica=2", env=env)
    assert code == 2 and secs < 30, (code, secs, err)
    msg = error_paragraph(err)
    assert "2 GPUs" in msg and "replicas.gpus_per_replica=2" in msg and "has 1" in msg


def test_a_plain_local_run_works_beside_a_running_head(head, tmp_path):
    _, env = head  # its ray_current_cluster is where a plain ray.init() would look
    code, out, err, secs = cli(tmp_path, "replicas.count=1", "dataset.limit=1", env=env)
    assert code == 0, err
    rows = pq.read_table(tmp_path / "paths.parquet").num_rows
    assert rows == 4
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info.get("ray", {}).get("mode") in (None, "local")


def test_bounded_waits_for_placement_and_engine_start(tmp_path):
    """In one local Ray: a growable cluster waits out replicas.placement_timeout_s and says what it
    asked for; a late engine is reported with its phase; a failing one with its own cause."""
    import asyncio

    from orchestrator.driver import actors, replicas
    from orchestrator.driver.cluster import Cluster
    from orchestrator.core.types import EngineStartError
    from orchestrator.errors import DeadlineError, EngineError

    class SlowStart:
        async def start(self):
            await asyncio.sleep(60)

        async def startup_status(self):
            return {"phases": [{"name": "importing", "seconds": 1.0, "done": True},
                               {"name": "loading_weights", "seconds": 42.0, "done": False}],
                    "ready": False, "error": None}

    class FailStart:
        async def start(self):
            raise EngineStartError("ValueError: 2048 tokens do not fit in the KV cache\nsecond line\nthird")

        async def startup_status(self):
            return {"phases": [], "ready": False, "error": "ValueError"}

    ray.init(address="local", num_cpus=2, namespace="orchestrator", include_dashboard=False)
    try:
        cfg = compose(SMALL + [f"output_dir={tmp_path}", "replicas.count=3", "replicas.placement_timeout_s=2",
                               "ray.autoscaling=true"])
        t0 = time.monotonic()
        with pytest.raises(DeadlineError) as info:
            Cluster.start(cfg).create_replicas("fake")
        assert time.monotonic() - t0 < 10
        msg = str(info.value)
        assert "replicas.placement_timeout_s=2" in msg and "3 x {CPU: 1}" in msg and "coordinator" in msg
        assert not ray.util.placement_group_table() or all(
            pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())

        cfg = compose(SMALL + [f"output_dir={tmp_path}", "replicas.start_timeout_s=2"])
        slow = [ray.remote(SlowStart).options(num_cpus=0).remote()]
        t0 = time.monotonic()
        with pytest.raises(DeadlineError) as info:
            replicas.await_started(cfg, slow)
        assert time.monotonic() - t0 < 15
        assert "replicas.start_timeout_s=2" in str(info.value) and "loading_weights for 42 s" in str(info.value)

        failing = [ray.remote(FailStart).options(num_cpus=0).remote()]
        with pytest.raises(EngineError) as info:
            replicas.await_started(cfg, failing)
        msg = str(info.value)
        assert "replica 0 could not start its engine" in msg and "2048 tokens do not fit" in msg
        assert "Traceback" not in msg and 'File "' not in msg

        # an actor that is alive but never answers: the driver's calls have a deadline too
        stuck = ray.remote(SlowStart).options(num_cpus=0).remote()
        t0 = time.monotonic()
        with pytest.raises(DeadlineError) as info:
            actors.answer(stuck.start.remote(), "the coordinator (poll)", timeout=1)
        assert time.monotonic() - t0 < 10
        assert "the coordinator (poll) did not answer within 1 s" in str(info.value)
    finally:
        ray.shutdown()


def _expected_paths(cfg) -> set:
    from orchestrator.config import sweep_points
    from orchestrator.driver.data import load_problems

    problems = load_problems(cfg.dataset.name, path=cfg.dataset.path, limit=cfg.dataset.limit, seed=cfg.leap.seed)
    return {(pt, pb.id, i) for pt, p in sweep_points(cfg).items() for pb in problems for i in range(p.paths)}


def _rows(out):
    return pq.read_table(Path(out) / "paths.parquet").to_pylist()


SWEEP = "+sweep=[{T: 160}, {T: 128, top_k: 1}]"
SLOW = "+engine.latency.decode_base_s=0.01"  # 160-token segments take 1.6 s


def test_coordinator_killed_by_name_mid_run_the_run_completes(tmp_path):
    ray.init(address="local", num_cpus=4, namespace="orchestrator", include_dashboard=False)
    try:
        cfg = compose(SMALL + [f"output_dir={tmp_path}", "replicas.count=1", SWEEP, SLOW, "dataset.limit=2"])
        thread, result = run_in_thread(cfg)
        deadline = time.time() + 90
        while time.time() < deadline and not list((tmp_path / "checkpoints").glob("*/*.ckpt")):
            time.sleep(0.1)
        assert list((tmp_path / "checkpoints").glob("*/*.ckpt")), "no barrier was reached"
        assert not list((tmp_path / "parts").glob("*/*.parquet")), "a group finished before the kill"
        from orchestrator.driver.actors import find_actor

        ray.kill(find_actor("leap-coordinator", "orchestrator"))
        thread.join(timeout=120)
        assert not thread.is_alive() and "error" not in result, result.get("error")
    finally:
        ray.shutdown()
    rows = _rows(tmp_path)
    keys = [(r["sweep_point"], r["problem_id"], r["path"]) for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == _expected_paths(cfg)
    info = json.loads((tmp_path / "run_info.json").read_text())
    (restart,) = info["coordinator_restarts"]
    assert 1 <= restart["groups_resubmitted"] <= 4 and restart["from_checkpoint"] >= 1
    resumed = {(g["sweep_point"], g["problem_id"]): g["round"] for g in info["resumed_groups"]
               if g["after"] == "coordinator restart"}
    assert len(resumed) == restart["from_checkpoint"]
    for r in rows:
        assert r["resumed_from_round"] == resumed.get((r["sweep_point"], r["problem_id"]))
    assert not list((tmp_path / "checkpoints").glob("*/*.ckpt"))  # all written: none left


def test_driver_sigkilled_between_barriers_resumes_from_its_checkpoints(tmp_path):
    out = tmp_path / "out"
    args = [*SMALL, f"output_dir={out}", "replicas.count=1", "dataset.limit=2"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args, SLOW], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list((out / "checkpoints").glob("*/*.ckpt")):
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = list((out / "checkpoints").glob("*/*.ckpt"))
    assert saved, "no barrier was reached before the kill"
    done_before = len(list((out / "parts").glob("*/*.parquet")))
    code, _, err, _ = cli(out, "replicas.count=1", "dataset.limit=2")  # no latency now
    assert code == 0, err
    rows = _rows(out)
    keys = [(r["sweep_point"], r["problem_id"], r["path"]) for r in rows]
    cfg = compose(args)
    assert len(keys) == len(set(keys)) and set(keys) == _expected_paths(cfg)
    info = json.loads((out / "run_info.json").read_text())
    resumed = {(g["sweep_point"], g["problem_id"]): g["round"] for g in info["resumed_groups"]}
    assert len(resumed) >= 1 and done_before < 2
    for r in rows:
        assert r["resumed_from_round"] == resumed.get((r["sweep_point"], r["problem_id"]))
    assert all(v >= 2 for v in resumed.values())
    assert not list((out / "checkpoints").glob("*/*.ckpt"))
