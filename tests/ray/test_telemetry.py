"""Telemetry reaches Ray's metrics exporter: an actor records through `Telemetry` and every
metric shows up, with its values, in the Prometheus text the local node exports."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray")

from orchestrator.telemetry import METRICS, PREFIX, Telemetry  # noqa: E402

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_with_metrics():
    port = _free_port()
    ray.init(num_cpus=4, namespace="orchestrator", include_dashboard=False, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})
    yield port
    ray.shutdown()


@ray.remote(num_cpus=0)
class Recorder:
    def record(self) -> bool:
        tm = Telemetry("recorder", interval_s=3600)  # only flush() exports
        tm.result(sampled=100, prompt=1000, cached=750, replica=1)
        tm.result(sampled=20, prompt=200, cached=50, replica=1)
        tm.active_paths(7)
        tm.groups_per_round({1: 2, 3: 1})
        tm.groups_per_round({3: 4})  # round 1 has no group any more
        tm.group_done(2)
        tm.barrier_wait(1.5)
        tm.failover(3)
        tm.running_requests(5, replica=1)
        tm.flush()
        return tm.enabled


def _scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _value(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_reach_the_exporter(ray_with_metrics):
    port = ray_with_metrics
    assert ray.get(Recorder.remote().record.remote()) is True
    names = [f"ray_{PREFIX}{n}" + ("_total" if kind == "counter" else "_count" if kind == "histogram" else "")
             for n, (kind, _, _) in METRICS.items()]
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = _scrape(port)
        if all(re.search(rf"^{n}{{", text, re.M) for n in names):
            break
        time.sleep(0.5)
    missing = [n for n in names if not re.search(rf"^{n}{{", text, re.M)]
    assert not missing, f"not exported within 30 s: {missing}"
    mine = {"role": "recorder"}
    assert _value(text, "ray_leap_sampled_tokens_total", replica="1", **mine) == 120
    assert _value(text, "ray_leap_cached_tokens_total", replica="1", **mine) == 800
    assert _value(text, "ray_leap_prefix_cache_hit_rate", replica="1", **mine) == pytest.approx(800 / 1200)
    assert _value(text, "ray_leap_groups", round="3", **mine) == 4
    assert _value(text, "ray_leap_groups", round="1", **mine) == 0
    assert _value(text, "ray_leap_failovers_total", **mine) == 3
    assert _value(text, "ray_leap_barrier_wait_seconds_bucket", le="2.0", **mine) == 1


def test_a_fake_run_exports_its_metrics(ray_with_metrics, tmp_path):
    """The coordinator and the fake replicas record through Telemetry during a real run."""
    from orchestrator.driver.runner import run
    from tests.conftest import compose

    port = ray_with_metrics
    cfg = compose(["+experiment=demo", "engine=fake", "dataset.limit=2", f"output_dir={tmp_path}",
                   "progress=false", "plots=false"])
    run(cfg)
    info = json.loads((tmp_path / "run_info.json").read_text())
    generated = sum(s["new_tokens"] for s in info["replica_stats"])  # the replicas' own count
    names = ["ray_leap_sampled_tokens_total", "ray_leap_prompt_tokens_total", "ray_leap_groups_done_total",
             "ray_leap_barrier_wait_seconds_count", "ray_leap_requests_total", "ray_leap_active_paths",
             "ray_leap_groups"]
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = _scrape(port)
        done = _value(text, "ray_leap_groups_done_total", role="coordinator")
        if done == 2 and all(re.search(rf'^{n}{{.*role="(coordinator|replica)"', text, re.M) for n in names):
            break
        time.sleep(0.5)
    assert _value(text, "ray_leap_groups_done_total", role="coordinator") == 2
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("ray_leap_sampled_tokens_total{") and 'role="coordinator"' in line)
    assert counted == generated  # every token the replicas generated, as the coordinator received it
    for n in names:
        assert re.search(rf'^{n}{{.*role="(coordinator|replica)"', text, re.M), n


def test_no_op_without_ray():
    code = ("import sys; from orchestrator.telemetry import Telemetry; tm = Telemetry('driver'); "
            "tm.result(sampled=5, prompt=10, cached=5); tm.barrier_wait(1.0); tm.flush(); "
            "print(tm.enabled, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr  # off, and Ray never imported


class _FakeMetric:
    def __init__(self):
        self.calls = []

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


def test_records_are_summed_until_the_interval(monkeypatch):
    from orchestrator import telemetry

    fakes = {name: _FakeMetric() for name in METRICS}
    monkeypatch.setattr(telemetry, "_registry", fakes)
    tm = Telemetry("coordinator", interval_s=3600, enabled=True, background=False)
    for i in range(1000):  # per-request records: summed, nothing reaches Ray per call
        tm.result(sampled=3, prompt=10, cached=4, replica=i % 2)
        tm.running_requests(i % 7, replica=0)
    assert not any(f.calls for f in fakes.values())
    tm.group_done()  # a per-group record exports at once, with everything pending
    assert sorted(fakes["sampled_tokens"].calls, key=lambda c: c[2]["replica"]) == [
        ("inc", 1500, {"role": "coordinator", "replica": "0"}),
        ("inc", 1500, {"role": "coordinator", "replica": "1"}),
    ]
    assert fakes["requests"].calls[0][1] == 500
    assert fakes["groups_done"].calls == [("inc", 1, {"role": "coordinator"})]
    assert fakes["replica_running_requests"].calls == [("set", 999 % 7, {"role": "coordinator", "replica": "0"})]
    assert {c[1] for c in fakes["prefix_cache_hit_rate"].calls} == {0.4}
    tm.flush()  # nothing new: no calls
    assert len(fakes["sampled_tokens"].calls) == 2 and len(fakes["groups_done"].calls) == 1
    tm.active_paths(5)
    tm.failover(0)  # nothing moved: nothing recorded
    assert fakes["active_paths"].calls == [("set", 5, {"role": "coordinator"})] and not fakes["failovers"].calls


def test_background_flush_exports_when_calls_stop(monkeypatch):
    from orchestrator import telemetry

    fakes = {name: _FakeMetric() for name in METRICS}
    monkeypatch.setattr(telemetry, "_registry", fakes)
    tm = Telemetry("replica", replica=2, interval_s=0.05, enabled=True)
    tm.running_requests(0)  # the last call of a burst, within the interval
    deadline = time.monotonic() + 5
    while not fakes["replica_running_requests"].calls and time.monotonic() < deadline:
        time.sleep(0.01)
    tm.close()
    assert fakes["replica_running_requests"].calls == [("set", 0, {"role": "replica", "replica": "2"})]
