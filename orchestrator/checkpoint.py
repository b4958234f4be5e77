"""Per-group checkpoints under `output_dir/checkpoints/`: a killed run loses at most a round.

After every barrier the coordinator hands the driver `Group.snapshot()` bytes; the driver writes
them here, one file per (sweep point, problem), replacing the previous one atomically (temp file,
fsync, rename: a kill leaves the old checkpoint or the new one, never half of one). When the
group's result part is written its checkpoint is removed. A rerun reads what is left and the
coordinator continues those groups from their last barrier (`Group.restore`).

File layout: magic, a small JSON header naming the group, then the snapshot bytes (whose own
format, with its checksum, belongs to `core/group.py`).
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path

from .results import _slug, atomic_write_bytes

log = logging.getLogger(__name__)

MAGIC = b"LEAPCKP\x01"


class CheckpointStore:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / "checkpoints"
        self.writes = 0
        self.bytes_written = 0
        self.write_s = 0.0

    def path(self, point: str, problem_id: str) -> Path:
        return self.root / _slug(point) / f"{_slug(problem_id)}.ckpt"

    def write(self, point: str, problem_id: str, blob: bytes) -> None:
        """Replace the group's checkpoint with `blob`, atomically and durably."""
        t0 = time.perf_counter()
        head = json.dumps({"point": point, "problem_id": problem_id}).encode("utf-8")
        data = b"".join([MAGIC, struct.pack("<I", len(head)), head, blob])
        atomic_write_bytes(self.path(point, problem_id), data)
        self.writes += 1
        self.bytes_written += len(data)
        self.write_s += time.perf_counter() - t0

    def remove(self, point: str, problem_id: str) -> None:
        """The group's result part is written: its checkpoint is no longer needed."""
        self.path(point, problem_id).unlink(missing_ok=True)

    def load_all(self) -> dict[tuple[str, str], bytes]:
        """Every readable checkpoint, keyed by (sweep point, problem id). Temp files left by a
        killed write are deleted; a file that cannot be read is reported and skipped (its group
        starts afresh and its next checkpoint replaces it)."""
        found: dict[tuple[str, str], bytes] = {}
        if not self.root.is_dir():
            return found
        for tmp in self.root.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        for file in sorted(self.root.glob("*/*.ckpt")):
            try:
                point, problem_id, blob = _parse(file.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("checkpoint %s is unreadable (%s); its group starts from the beginning", file, exc)
                continue
            if file != self.path(point, problem_id):
                log.warning("checkpoint %s names %s|%s, which belongs elsewhere; ignored", file, point, problem_id)
                continue
            found[(point, problem_id)] = blob
        return found

    def stats(self) -> dict:
        return {"writes": self.writes, "bytes": self.bytes_written, "seconds": round(self.write_s, 4)}


def _parse(data: bytes) -> tuple[str, str, bytes]:
    fixed = len(MAGIC) + 4
    if len(data) < fixed or data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a checkpoint file")
    (n,) = struct.unpack("<I", data[len(MAGIC):fixed])
    head = json.loads(data[fixed: fixed + n].decode("utf-8"))
    return head["point"], head["problem_id"], data[fixed + n:]
