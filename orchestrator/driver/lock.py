"""One run per output directory: an advisory lock on `output_dir/.lock`.

The lock is an `fcntl.lockf` write lock (POSIX record locks also work across NFS clients), so
it goes away with the process that holds it, however that process ends: a lock left by a
killed run is simply taken over. The file names its holder (host, pid, start time) so that a
refused second run can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

NAME = ".lock"


class OutputDirBusy(UserError):
    """Another run is writing into this output directory."""


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputDirBusy(
                f"{self.path.parent} is in use by another run ({_describe(holder)}). Two runs in one "
                f"output_dir would both run every group. Wait for it to finish, stop it, or give this "
                f"run another output_dir=...") from None
        earlier = _holder(fd)
        if earlier:
            log.info("output_dir lock of an earlier run (%s) was free: taken over", _describe(earlier))
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # the file stays (deleting it could race a waiting run)
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
