"""Ray Jobs: a head started on loopback with `ray start --head` receives the demo through the
Jobs API (jobs/submit.py) and through `ray job submit`, and the jobs succeed."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    if not (BIN / "ray").exists():
        pytest.skip("the ray CLI is not installed")
    # the job runs `python` from PATH: make it this environment's interpreter
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    gcs, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _check(out: Path, problems: int = 6) -> None:
    paths = pq.read_table(out / "paths.parquet").to_pylist()
    assert len(paths) == problems * 4
    assert json.loads((out / "summary.json").read_text())


@pytest.mark.ray
def test_demo_through_the_jobs_api(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "jobs/submit.py", "--address", address,
                           "+experiment=demo", "engine=fake", f"output_dir={out}", "progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout + proc.stderr
    _check(out)


@pytest.mark.e2e
def test_real_engine_demo_through_ray_job_submit(ray_head, tmp_path):
    """The demo, unchanged, on the real vLLM engine via Ray's own CLI."""
    address, env = ray_head
    out = tmp_path / "demo"
    proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
                           "--runtime-env-json", json.dumps({"excludes": [".venv/", ".git/", "outputs/"]}),
                           "--", "python", "-m", "orchestrator", "+experiment=demo",
                           f"output_dir={out}", "progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    _check(out)
