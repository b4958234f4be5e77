"""Ray's token authentication, seen from a driver that joins a cluster.

A head started with `RAY_AUTH_MODE=token` (or, from Ray 2.52 on, any `ray start --head` on a
machine holding `~/.ray/auth_token`) refuses every client without its token. `ray.init` then
retries for about 20 s and fails with "Failed to connect to Ray cluster", saying nothing about
the token. So before joining, the driver asks the head's GCS one cheap question
(`NodeInfoGcsService/GetClusterId`, with an empty request) over gRPC, with this machine's token
when `RAY_AUTH_MODE=token` and without one otherwise; an `UNAUTHENTICATED` answer becomes a
message that says what to set. Any other answer (the call works, the port is not Ray's, TLS,
another Ray version) says nothing, and joining goes on as before.

Where the token comes from is Ray's order: `RAY_AUTH_TOKEN`, else the file at
`RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`.
"""

from __future__ import annotations

import os
from pathlib import Path

PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
FIX = ("export RAY_AUTH_MODE=token and make the cluster's token available on this machine, in "
       "~/.ray/auth_token, in the file RAY_AUTH_TOKEN_PATH names, or as RAY_AUTH_TOKEN (on the head: "
       "`ray get-auth-token`)")


def token_mode() -> bool:
    """Does this process send a token (RAY_AUTH_MODE=token)?"""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


def default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def local_token() -> tuple[str | None, str]:
    """This machine's token as Ray would load it, and where it came from (for messages; the
    token itself is never put in one)."""
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return value, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    where = f"RAY_AUTH_TOKEN_PATH={path}" if path else str(default_token_file())
    try:
        text = Path(path).expanduser().read_text().strip() if path else default_token_file().read_text().strip()
    except OSError:
        return None, where
    return (text or None), where


def refused(host: str, port: int, token: str | None, timeout: float) -> bool | None:
    """Ask the GCS at host:port one question. True: it refused for want of a (valid) token;
    False: it answered; None: no telling (not Ray's GCS, TLS, no grpc, no answer in time)."""
    try:
        import grpc  # optional (it comes with ray[default]); without it there is no asking
    except ImportError:
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        with grpc.insecure_channel(target) as channel:
            channel.unary_unary(PROBE_METHOD)(b"", timeout=max(timeout, 0.5), metadata=metadata)
        return False
    except grpc.RpcError as exc:
        return True if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    # a target grpc cannot even dial (an odd host name: ValueError, TypeError, its own errors)
    # only means no telling; joining goes on and says what it finds
    except Exception:
        return None


def refusal(address: str, source: str, host: str, port: int, timeout: float) -> str | None:
    """Why the cluster at host:port will refuse this driver over authentication, with the fix;
    None when it will not (or when there is no telling)."""
    what = f"the Ray cluster at {address} ({source}) requires token authentication"
    if not token_mode():
        if not refused(host, port, None, timeout):
            return None
        mode = os.environ.get("RAY_AUTH_MODE")
        now = f"RAY_AUTH_MODE is {mode!r} here" if mode else "RAY_AUTH_MODE is not set here"
        have = ""
        if default_token_file().is_file():
            have = f" ({default_token_file()} exists: with RAY_AUTH_MODE=token Ray sends it)"
        return f"{what}, and {now}, so no token is sent. Fix: {FIX}{have}."
    token, where = local_token()
    if token is None:  # Ray's own AuthenticationError says so, and Ray may know a source we do not
        return None
    if refused(host, port, token, timeout):
        return (f"{what}, and it refused the token from {where}: that is not this cluster's token. Fix: "
                f"put the cluster's token there (on the head, `ray get-auth-token` prints it).")
    return None


__all__ = ["FIX", "local_token", "refusal", "refused", "token_mode"]
