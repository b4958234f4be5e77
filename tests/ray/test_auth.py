"""Joining a `ray start` head that requires token authentication (issue 15).

Without the token, `ray.init` retries for about 20 s and fails with "Failed to connect to Ray
cluster"; the run must instead say that the head wants a token and how to give it. The head runs
with its own HOME (holding its token) and temp dir, and is stopped by its process ids; the
clients get a HOME of their own, so the user's ~/.ray is never read or written.
"""

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.conftest import REPO  # noqa: E402
from tests.ray.test_faults import RAY, _free_port, _stop_head, cli, error_paragraph  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def token_head():
    """A head with RAY_AUTH_MODE=token and its token in its ~/.ray/auth_token; yields
    (address, token)."""
    tmp = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: Ray's socket paths have a length limit
    home = Path(tmp) / "head-home"
    (home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    env = dict(os.environ, HOME=str(home), RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    port = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--num-cpus=1", f"--port={port}", "--include-dashboard=false",
           "--disable-usage-stats", f"--ray-client-server-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        current = Path(tmp) / "ray" / "ray_current_cluster"
        deadline = time.time() + 60
        while time.time() < deadline and not current.exists():
            assert proc.poll() is None, "ray start --head failed"
            time.sleep(0.2)
        assert current.exists(), "ray start --head did not come up in 60 s"
        yield f"127.0.0.1:{port}", token
    finally:
        _stop_head(proc, tmp)


def _client_env(tmp_path: Path, **extra) -> dict:
    """A client environment: a HOME without ~/.ray, no Ray auth settings unless given."""
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home))
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    env.update(extra)
    return env


def test_joining_without_token_mode_says_token_authentication(token_head, tmp_path):
    address, token = token_head
    code, out, err, _ = cli(tmp_path / "out", f"ray.address={address}", env=_client_env(tmp_path))
    assert code == 2, err[-2000:]
    msg = error_paragraph(err)
    assert "requires token authentication" in msg and address in msg, msg
    assert "RAY_AUTH_MODE=token" in msg and "~/.ray/auth_token" in msg and "RAY_AUTH_TOKEN" in msg, msg
    assert "GCS port" not in msg and "Ray version" not in msg  # the old, misleading guess
    assert token not in err + out and "Traceback" not in err + out


def test_a_wrong_token_is_named_as_refused(token_head, tmp_path):
    address, token = token_head
    wrong = secrets.token_hex(32)
    code, out, err, _ = cli(tmp_path / "out", f"ray.address={address}",
                            env=_client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=wrong))
    assert code == 2, err[-2000:]
    msg = error_paragraph(err)
    assert "refused the token from RAY_AUTH_TOKEN" in msg, msg
    assert wrong not in err + out and token not in err + out


def test_the_right_token_joins(token_head, tmp_path):
    address, token = token_head
    token_file = tmp_path / "cluster_token"
    token_file.write_text(token + "\n")
    code = (
        "from orchestrator.driver.cluster import Cluster\n"
        "from orchestrator.config import Config\n"
        "import ray\n"
        f"cfg = Config(); cfg.ray.address = {address!r}\n"
        "cluster = Cluster.start(cfg)\n"
        "how = cluster.ray\n"
        "print('JOINED', how['mode'], ray.cluster_resources().get('CPU'))\n"
        "cluster.teardown()\n"
    )
    env = _client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JOINED joined 1.0" in proc.stdout
