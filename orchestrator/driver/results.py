"""Result files: the parquet schema, crash-safe writing, reading and resume.

Layout under `output_dir`:
    parts/<point-hash>/<problem-hash>.parquet   one file per finished group (paths and messages),
                                                 written to a temp name and renamed: a kill leaves
                                                 either the whole file or none
    paths.parquet      one row per path (every finished group), rebuilt from the parts
    messages.parquet   one row per delivered peer summary
    summary.json       metrics per sweep point and benchmark; when some groups have no result,
                       also `_incomplete`: each missing group and why (the exit status is then 1)
    config.json        the resolved config of the run;  run_info.json  wall time, groups run/skipped,
                       and the faults met (replica deaths, moved paths, coordinator restarts,
                       groups resumed from a checkpoint)
    checkpoints/       the last barrier's state of each group not yet written (`checkpoint.py`)
    fingerprint.json   what the results depend on (`fingerprint.py`); every part and checkpoint
                       carries its group's share, and a rerun that would change it is refused
    .lock              held by the run writing here (`lock.py`)
    corrupt/           parts that could not be read, moved aside; their groups run again

Resume: a group whose part file exists (and reads through) is complete and is not run again; a group with a
checkpoint under `checkpoints/` (see `checkpoint.py`) continues from its last barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
META_KEY = "leap"  # a part file's schema metadata: its group and fingerprint (JSON)

REQUEST = pa.struct([
    ("round", pa.int32()), ("kind", pa.string()), ("prompt_tokens", pa.int64()),
    ("cached_tokens", pa.int64()), ("reusable_tokens", pa.int64()), ("new_tokens", pa.int64()), ("replica", pa.int32()),
])
# start/end: token offsets into the generated tokens; char_start/char_end: character offsets into
# `text` (null when the tokenizer's pieces do not decode to `text` exactly)
SPAN = pa.struct([("kind", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                  ("char_start", pa.int64()), ("char_end", pa.int64())])

# `correct` (and `correct_compat`, `round_correct` items) null: ungraded, no check could decide it
PATHS_SCHEMA = pa.schema([
    ("sweep_point", pa.string()), ("benchmark", pa.string()), ("problem_id", pa.string()),
    ("path", pa.int32()), ("gold", pa.string()), ("answer", pa.string()),
    ("correct", pa.bool_()), ("correct_compat", pa.bool_()), ("finish_reason", pa.string()),
    ("rounds", pa.int32()), ("prompt_tokens", pa.int64()), ("sampled_tokens", pa.int64()),
    ("injected_tokens", pa.int64()), ("cached_tokens", pa.int64()), ("uncached_tokens", pa.int64()),
    ("summaries", pa.list_(pa.string())), ("answer_first_summary", pa.string()),
    ("answer_changed", pa.bool_()), ("replica", pa.int32()), ("node", pa.string()),
    ("text", pa.string()), ("spans", pa.list_(SPAN)), ("requests", pa.list_(REQUEST)),
    # the round a group went on with after a restart from its checkpoint; null: ran in one go
    ("resumed_from_round", pa.int32()),
    # per communication round: the answer in the path's summary, and whether it was right
    ("round_answers", pa.list_(pa.string())), ("round_correct", pa.list_(pa.bool_())),
    # how a path was stopped early (null: it ended on its own: think_end, eos, context, length,
    # or forced by its round or token budget) and in which round: consensus (answer forced),
    # low_confidence (finish_reason stopped, no answer, out of the vote)
    ("stop_reason", pa.string()), ("stopped_at_round", pa.int32()),
    # answer probes: tokens they sampled (not in sampled_tokens) and forcing tokens they sent
    ("probe_tokens", pa.int64()), ("probe_prompt_tokens", pa.int64()),
    ("warmup", pa.bool_()),  # a DeepConf warm-up path
    ("confidence", pa.float64()),  # lowest window confidence (null: no confidences asked)
    ("vote_weight", pa.float64()), ("vote", pa.string()),  # its weight in the point's vote (majority | confidence)
    ("probe_answers", pa.list_(pa.string())),  # each answer probe's (normalized) answer
])
MESSAGES_SCHEMA = pa.schema([
    ("sweep_point", pa.string()), ("benchmark", pa.string()), ("problem_id", pa.string()),
    ("round", pa.int32()), ("recipient", pa.int32()), ("sender", pa.int32()), ("rank", pa.int32()),
    ("similarity", pa.float64()), ("summary", pa.string()),
])


def slug(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, rename. The file's mode follows the
    umask, like any file the user creates (mkstemp's 0600 would hide results from colleagues)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise lose it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. not allowed on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class ResultStore:
    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)
        self.parts = self.root / "parts"

    def part_path(self, point: str, problem_id: str) -> Path:
        return self.parts / slug(point) / f"{slug(problem_id)}.parquet"

    def is_done(self, point: str, problem_id: str) -> bool:
        return self.part_path(point, problem_id).is_file()

    def write_group(self, point: str, problem_id: str, paths: list[dict], messages: list[dict],
                    stamp: dict | None = None) -> None:
        """One finished group, as one atomic file: paths and messages together, and in the
        file's metadata the group's key and `stamp` (what it was made with: `fingerprint.for_group`)."""
        paths_t = pa.Table.from_pylist(paths, schema=PATHS_SCHEMA)
        msgs_t = pa.Table.from_pylist(messages, schema=MESSAGES_SCHEMA)
        payload = pa.table({
            "kind": pa.array(["paths", "messages"]),
            "ipc": pa.array([_ipc(paths_t), _ipc(msgs_t)], type=pa.binary()),
        })
        meta = {"point": point, "problem_id": problem_id, "fingerprint": stamp}
        payload = payload.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
        atomic_write_table(self.part_path(point, problem_id), payload)

    def check_parts(self) -> list[tuple[dict | None, Path]]:
        """Read every part through; one that cannot be read (an interrupted copy, a torn NFS
        write) is moved aside to `corrupt/` with a warning, so its group runs again. Returns
        (metadata or None for a part written before parts had any, file) for the readable ones."""
        found = []
        for part in sorted(self.parts.glob("*/*.parquet")):
            try:
                table = pq.read_table(part)
                _unpack(table)
            except (pa.ArrowException, OSError, ValueError, KeyError) as exc:  # damaged, or lacking its columns
                aside = self.root / "corrupt" / f"{part.parent.name}-{part.name}.{int(time.time())}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, aside)
                log.warning("result part %s is unreadable (%s: %s): moved to %s; its group runs again",
                            part, type(exc).__name__, str(exc)[:200], aside)
                continue
            raw = (table.schema.metadata or {}).get(META_KEY.encode())
            found.append((json.loads(raw) if raw else None, part))
        return found

    def read_parts(self) -> tuple[pa.Table, pa.Table]:
        paths, msgs = [], []
        for part in sorted(self.parts.glob("*/*.parquet")):
            p, m = _unpack(pq.read_table(part))
            paths.extend(p)
            msgs.extend(m)
        paths_t = pa.concat_tables([_conform(t, PATHS_SCHEMA) for t in paths]) if paths \
            else PATHS_SCHEMA.empty_table()
        msgs_t = pa.concat_tables([_conform(t, MESSAGES_SCHEMA) for t in msgs]) if msgs \
            else MESSAGES_SCHEMA.empty_table()
        order = [("sweep_point", "ascending"), ("benchmark", "ascending"), ("problem_id", "ascending")]
        paths_t = paths_t.sort_by(order + [("path", "ascending")])
        msgs_t = msgs_t.sort_by(order + [("round", "ascending"), ("recipient", "ascending"),
                                         ("rank", "ascending")])
        return paths_t, msgs_t

    def consolidate(self, summary: dict) -> tuple[pa.Table, pa.Table]:
        """Rewrite paths.parquet, messages.parquet and summary.json from every finished part."""
        paths_t, msgs_t = self.read_parts()
        atomic_write_table(self.root / "paths.parquet", paths_t)
        atomic_write_table(self.root / "messages.parquet", msgs_t)
        self.write_json("summary.json", summary)
        return paths_t, msgs_t

    def write_json(self, name: str, obj: dict) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write_bytes(self.root / name, text.encode("utf-8"))


def _unpack(table: pa.Table) -> tuple[list[pa.Table], list[pa.Table]]:
    """A part's (paths tables, messages tables)."""
    paths, msgs = [], []
    for kind, blob in zip(table.column("kind").to_pylist(), table.column("ipc").to_pylist()):
        (paths if kind == "paths" else msgs).append(pa.ipc.open_stream(blob).read_all())
    return paths, msgs


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part written by an older version: columns it lacks are null, in today's order."""
    if table.schema.equals(schema):
        return table
    cols = [_cast(table.column(f.name), f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _cast(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    if column.type.equals(to):
        return column
    try:
        return column.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # a struct that gained fields (spans' char offsets): rebuild, the new fields null
        return pa.chunked_array([pa.array(column.to_pylist(), type=to)], type=to)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
