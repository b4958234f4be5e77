"""Where the driver finds this machine's Ray token (Ray's order), and that a port which is not a
Ray GCS never reads as "requires a token". The real head is in tests/ray/test_auth.py."""

import socket
import threading

import pytest

from orchestrator.driver import ray_auth


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def test_token_sources_in_rays_order(home, monkeypatch):
    assert ray_auth.local_token() == (None, str(home / ".ray" / "auth_token"))
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert ray_auth.local_token() == ("from-home", str(home / ".ray" / "auth_token"))
    path = home / "elsewhere"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert ray_auth.local_token() == ("from-path", f"RAY_AUTH_TOKEN_PATH={path}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert ray_auth.local_token() == ("from-env", "RAY_AUTH_TOKEN")


def test_an_unreadable_token_path_is_no_token(home, monkeypatch):
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("from-home")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "missing"))
    assert ray_auth.local_token()[0] is None  # Ray does not fall back to ~/.ray either


def test_token_mode(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", " Token ")
    assert ray_auth.token_mode()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not ray_auth.token_mode()


def test_a_port_that_is_not_rays_tells_nothing(home):
    """Something that accepts and closes (not gRPC): no verdict, so joining goes on as before."""
    pytest.importorskip("grpc")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ray_auth.refused("127.0.0.1", port, None, 2.0) is None
        assert ray_auth.refusal("127.0.0.1:%d" % port, "ray.address", "127.0.0.1", port, 2.0) is None
    finally:
        stop.set()
        thread.join()
        server.close()
