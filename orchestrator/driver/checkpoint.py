"""Per-group checkpoints under `output_dir/checkpoints/`: a killed run loses at most a round.

After every barrier the coordinator hands the driver `Group.snapshot()` bytes; the driver writes
them here, one file per (sweep point, problem), replacing the previous one atomically (temp file,
fsync, rename: a kill leaves the old checkpoint or the new one, never half of one). When the
group's result part is written its checkpoint is removed. A rerun reads what is left and the
coordinator continues those groups from their last barrier (`Group.restore`).

File layout: magic, a small JSON header naming the group, then the snapshot bytes (whose own
format, with its checksum, belongs to `core/snapshot.py`).
"""

from __future__ import annotations

import json
import logging
import struct
import time
from dataclasses import replace
from pathlib import Path

from .fingerprint import group_digest
from .results import slug, atomic_write_bytes
from ..core.snapshot import CheckpointError, params_record, snapshot_info

log = logging.getLogger(__name__)

MAGIC = b"LEAPCKP\x01"


class CheckpointStore:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir) / "checkpoints"
        self.writes = 0
        self.bytes_written = 0
        self.write_s = 0.0
        self.stamps: dict[tuple[str, str], str | None] = {}  # from load_all: each file's fingerprint digest

    def path(self, point: str, problem_id: str) -> Path:
        return self.root / slug(point) / f"{slug(problem_id)}.ckpt"

    def write(self, point: str, problem_id: str, blob: bytes, stamp: str | None = None) -> None:
        """Replace the group's checkpoint with `blob`, atomically and durably. `stamp`: the
        digest of what the group is made with (`fingerprint.group_digest`)."""
        t0 = time.perf_counter()
        head = json.dumps({"point": point, "problem_id": problem_id, "fingerprint": stamp}).encode("utf-8")
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
                head, blob = _parse(file.read_bytes())
                point, problem_id = head["point"], head["problem_id"]
            except (OSError, ValueError) as exc:
                log.warning("checkpoint %s is unreadable (%s); its group starts from the beginning", file, exc)
                continue
            if file != self.path(point, problem_id):
                log.warning("checkpoint %s names %s|%s, which belongs elsewhere; ignored", file, point, problem_id)
                continue
            found[(point, problem_id)] = blob
            self.stamps[(point, problem_id)] = head.get("fingerprint")
        return found

    def stats(self) -> dict:
        return {"writes": self.writes, "bytes": self.bytes_written, "seconds": round(self.write_s, 4)}


def _parse(data: bytes) -> tuple[dict, bytes]:
    fixed = len(MAGIC) + 4
    if len(data) < fixed or data[: len(MAGIC)] != MAGIC:
        raise ValueError("not a checkpoint file")
    (n,) = struct.unpack("<I", data[len(MAGIC):fixed])
    head = json.loads(data[fixed: fixed + n].decode("utf-8"))
    if not isinstance(head, dict) or not {"point", "problem_id"} <= set(head):
        raise ValueError("checkpoint header lacks its group's key")
    return head, data[fixed + n:]


class Recovery:
    """The driver's side of surviving faults: which groups are out with the coordinator, their
    latest checkpoints, and the record of what happened, for run_info.json.

        rec = Recovery(output_dir, points)          # reads the checkpoints a killed run left
        items = rec.attach(items)                   # (point, problem, overrides, blob | None)
        rec.checkpoint(point, problem_id, blob)     # from poll().checkpoints: write it
        rec.returned(point, problem_id)             # poll() handed the group back (done or failed)
        rec.written(point, problem_id)              # its result part is on disk: drop the checkpoint
        rec.pending()                               # what a new coordinator must be given
        rec.coordinator_restarted(cause, n)         # for the record (after the resubmission)
        rec.facts()                                 # run_info.json's fault record
    """

    def __init__(self, output_dir: str | Path, points: dict | None = None, fingerprint: dict | None = None):
        self.store = CheckpointStore(output_dir)
        self.points = points or {}
        self.fingerprint = fingerprint  # `fingerprint.make`'s: checkpoints made otherwise are not used
        self.write_failures: list[str] = []
        self.saved = self.store.load_all()  # (point, problem_id) -> blob, from an earlier run
        self.latest: dict[tuple[str, str], bytes] = {}
        self.out: dict[tuple[str, str], tuple] = {}  # submitted, not yet handed back
        self.resumed: list[dict] = []
        self.restarts: list[dict] = []
        self.ignored: list[dict] = []

    def forget_done(self, is_done) -> None:
        """Drop checkpoints of groups whose results are already written (a kill between the
        part's rename and the checkpoint's removal leaves one behind)."""
        for key in [k for k in self.saved if is_done(*k)]:
            self.store.remove(*key)
            del self.saved[key]

    def attach(self, items: list[tuple]) -> list[tuple]:
        """Give each (point, problem, overrides) the checkpoint it can resume from, if any."""
        out = []
        for point, problem, overrides, *_ in items:
            key = (point, problem.id)
            blob = self.latest.get(key) or self.saved.pop(key, None)
            if blob is not None and key not in self.latest:
                blob = self._usable(point, problem.id, overrides, blob)
                if blob is not None:
                    self._resumed(point, problem.id, blob, "rerun")
            item = (point, problem, overrides, blob)
            self.out[key] = item
            out.append(item)
        if self.resumed:
            log.info("resuming %d group(s) from their last barrier", len(self.resumed))
        return out

    def _resumed(self, point: str, problem_id: str, blob: bytes, after: str) -> None:
        info = snapshot_info(blob)
        self.resumed.append({"sweep_point": point, "problem_id": problem_id, "round": info["round"],
                             "barriers": info["barriers_released"], "after": after})

    def _usable(self, point: str, problem_id: str, overrides: dict, blob: bytes) -> bytes | None:
        if self.fingerprint is not None and self.store.stamps.get((point, problem_id)) != self._stamp(point, problem_id):
            return self._ignore(point, problem_id, "it was made with another config (fingerprint)")
        try:
            info = snapshot_info(blob)
        except CheckpointError as exc:
            return self._ignore(point, problem_id, str(exc))
        if (info["sweep_point"], info["problem_id"]) != (point, problem_id):
            return self._ignore(point, problem_id, f"it holds {info['key']}")
        params = self.points.get(point)
        if params is not None and info["params"] != params_record(replace(params, **(overrides or {}))):
            return self._ignore(point, problem_id, "it was made with other leap settings")
        return blob

    def _ignore(self, point: str, problem_id: str, why: str) -> None:
        log.warning("checkpoint of %s|%s not used (%s): the group starts from the beginning", point, problem_id, why)
        self.ignored.append({"sweep_point": point, "problem_id": problem_id, "why": why})
        return None

    def checkpoint(self, point: str, problem_id: str, blob: bytes) -> None:
        if (point, problem_id) not in self.out:
            return  # a late checkpoint of a group already handed back
        self.latest[(point, problem_id)] = blob  # a coordinator restart resumes from memory anyway
        try:
            self.store.write(point, problem_id, blob, self._stamp(point, problem_id))
        except OSError as exc:  # disk full, a quota, NFS gone: a checkpoint is only an optimisation
            if not self.write_failures:
                log.warning("checkpoint of %s|%s could not be written (%s); the run goes on, but a rerun after "
                            "a crash would restart such groups from their beginning", point, problem_id, exc)
            self.write_failures.append(f"{point}|{problem_id}: {exc}"[:300])

    def _stamp(self, point: str, problem_id: str) -> str | None:
        if self.fingerprint is None:
            return None
        return group_digest(self.fingerprint, point, problem_id)

    def returned(self, point: str, problem_id: str) -> None:
        self.out.pop((point, problem_id), None)
        self.latest.pop((point, problem_id), None)

    def failed(self, error: str) -> None:
        """poll().errors names a failed group as 'point|problem: cause': it is back too (its
        checkpoint stays on disk, so a rerun resumes it)."""
        for key in [k for k in self.out if error.startswith(f"{k[0]}|{k[1]}: ")]:
            self.returned(*key)

    def written(self, point: str, problem_id: str) -> None:
        self.store.remove(point, problem_id)

    def pending(self) -> list[tuple]:
        """Every group out with the coordinator, each with its latest checkpoint."""
        return [(pt, pb, ov, self.latest.get(key, blob)) for key, (pt, pb, ov, blob) in self.out.items()]

    def coordinator_restarted(self, cause: str, resubmitted: int) -> None:
        from_checkpoint = 0
        for key, item in self.out.items():
            blob = self.latest.get(key, item[3])
            if blob is not None:
                from_checkpoint += 1
                self._resumed(key[0], key[1], blob, "coordinator restart")
        self.restarts.append({"t": round(time.time(), 3), "cause": cause[:300], "groups_resubmitted": resubmitted,
                              "from_checkpoint": from_checkpoint})

    def coordinator_lost(self, cause: str) -> None:
        """A new coordinator died before it took over (for the record; it counts as a restart)."""
        self.restarts.append({"t": round(time.time(), 3), "cause": cause[:300], "groups_resubmitted": 0,
                              "from_checkpoint": 0, "took_over": False})

    def facts(self) -> dict:
        return {"coordinator_restarts": list(self.restarts), "resumed_groups": list(self.resumed),
                "checkpoints_ignored": list(self.ignored), "checkpoint_writes": self.store.stats(),
                "checkpoint_write_failures": {"count": len(self.write_failures), "first": self.write_failures[:3]}}


def _info(blob: bytes) -> dict:
    return snapshotsnapshot_info(blob)
