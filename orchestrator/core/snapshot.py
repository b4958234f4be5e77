"""A group's whole state as compact checksummed bytes, and back: the checkpoint a coordinator
hands out after every barrier (`Group.snapshot`, `Group.restore`).

Layout: magic, the length of a zlib-compressed JSON header (key, problem, sweep point,
parameters, messages, each path's state), the header, each path's token ids as little-endian
int32, and a CRC-32 of everything before it.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from typing import Callable

from .params import LeapParams, params_record
from .paths import TokenIds
from .types import Problem

SNAPSHOT_MAGIC = b"LEAPGRP\x01"
SNAPSHOT_VERSION = 1


class CheckpointError(ValueError):
    """Snapshot bytes that are damaged or belong to another group or configuration."""


def pack(group) -> bytes:
    """`group`'s state (a `Group`) as snapshot bytes."""
    meta = []
    chunks = []
    for p in group.paths:
        meta.append({
            "index": p.index, "key": p.key, "n": len(p.tokens), "prompt_len": p.prompt_len,
            "phase": p.phase, "round": p.round, "in_flight": p.in_flight, "finish": p.finish,
            "segment_start": p.segment_start, "summary_start": p.summary_start,
            "sampled_segments": p.sampled_segments, "spans": [list(s) for s in p.spans],
            "summaries": p.summaries, "requests": p.requests, "replica": p.replica, "node": p.node,
        })
        chunks.append(_le_bytes(p.tokens))
    header = {
        "version": SNAPSHOT_VERSION, "key": group.key, "problem_id": group.problem.id,
        "sweep_point": group.sweep_point, "params": params_record(group.params),
        "barriers_released": group.barriers_released, "resumed_from_round": group.resumed_from_round,
        "messages": group.messages, "paths": meta,
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 1)
    body = b"".join([SNAPSHOT_MAGIC, struct.pack("<I", len(head)), head, *chunks])
    return body + struct.pack("<I", zlib.crc32(body))


def restore(blob: bytes, problem: Problem, prompt_ids: list[int], params: LeapParams,
            sweep_point: str | None, make: Callable[[str, str], object]):
    """Check `blob` against the problem, sweep point, parameters and prompt, then load its state
    into `make(key, sweep_point)` (a fresh group) and return that. Every path is marked as held
    by no replica and a request that was under way is asked again. Raises `CheckpointError`."""
    header, tokens = read_snapshot(blob)
    point = header["sweep_point"] if sweep_point is None else sweep_point
    if header["problem_id"] != problem.id or header["sweep_point"] != point:
        raise CheckpointError(f"checkpoint of {header['key']!r} does not belong to {point}|{problem.id}")
    if header["params"] != params_record(params):
        changed = sorted(k for k, v in params_record(params).items() if header["params"].get(k) != v)
        raise CheckpointError(f"checkpoint of {header['key']!r} was made with other leap settings "
                              f"({', '.join(changed)})")
    metas = header["paths"]
    if len(metas) != params.paths:
        raise CheckpointError(f"checkpoint of {header['key']!r} has {len(metas)} paths, not {params.paths}")
    group = make(header["key"], point)
    prompt = list(prompt_ids)
    for p, meta, ids in zip(group.paths, metas, tokens):
        if ids[: meta["prompt_len"]] != prompt:
            raise CheckpointError(f"checkpoint of {header['key']!r}: path {meta['index']} starts with "
                                  f"another prompt (prompt file or chat template changed)")
        p.tokens = ids
        p.prompt_len = meta["prompt_len"]
        p.phase, p.round, p.finish = meta["phase"], meta["round"], meta["finish"]
        p.segment_start, p.summary_start = meta["segment_start"], meta["summary_start"]
        p.sampled_segments = meta["sampled_segments"]
        p.spans = [(k, s, e) for k, s, e in meta["spans"]]
        p.summaries = list(meta["summaries"])
        p.requests = [dict(r) for r in meta["requests"]]
        p.replica, p.node = meta["replica"], meta["node"]
        # no replica is assumed to hold anything; work under way is asked for again
        p.synced = p.computed = 0
        p.in_flight = None
    group.messages = list(header["messages"])
    group.barriers_released = header["barriers_released"]
    group.resumed_from_round = _resume_round(metas)
    return group


def _le_bytes(ids: array) -> bytes:
    if sys.byteorder == "little":
        return ids.tobytes()
    swapped = array("i", ids)
    swapped.byteswap()
    return swapped.tobytes()


def read_snapshot(blob: bytes) -> tuple[dict, list[TokenIds]]:
    """Parse and check `Group.snapshot()` bytes: (header, each path's token ids)."""
    view = memoryview(blob)
    fixed = len(SNAPSHOT_MAGIC) + 4
    if len(view) < fixed + 4 or bytes(view[: len(SNAPSHOT_MAGIC)]) != SNAPSHOT_MAGIC:
        raise CheckpointError("not a group checkpoint (bad magic bytes)")
    (crc,) = struct.unpack("<I", view[-4:])
    if zlib.crc32(view[:-4]) != crc:
        raise CheckpointError("group checkpoint is damaged (checksum mismatch)")
    (head_len,) = struct.unpack("<I", view[len(SNAPSHOT_MAGIC):fixed])
    try:
        header = json.loads(zlib.decompress(view[fixed: fixed + head_len]))
    except (zlib.error, ValueError) as exc:
        raise CheckpointError(f"group checkpoint header is unreadable: {exc}") from exc
    if header.get("version") != SNAPSHOT_VERSION:
        raise CheckpointError(f"group checkpoint version {header.get('version')} is not {SNAPSHOT_VERSION}")
    pos, end = fixed + head_len, len(view) - 4
    tokens = []
    for meta in header["paths"]:
        n = meta["n"] * 4
        if pos + n > end:
            raise CheckpointError("group checkpoint is truncated")
        ids = TokenIds()
        ids.frombytes(view[pos: pos + n])
        if sys.byteorder != "little":
            ids.byteswap()
        tokens.append(ids)
        pos += n
    if pos != end:
        raise CheckpointError("group checkpoint has trailing bytes")
    return header, tokens


def snapshot_info(blob: bytes) -> dict:
    """What a checkpoint holds, without a tokenizer: key, sweep point, problem id, params, the
    barriers released so far and the round the group would resume with."""
    header, _ = read_snapshot(blob)
    return {"key": header["key"], "sweep_point": header["sweep_point"], "problem_id": header["problem_id"],
            "params": header["params"], "barriers_released": header["barriers_released"],
            "round": _resume_round(header["paths"])}


def _resume_round(metas: list[dict]) -> int:
    """The round the group goes on with: after a barrier, the round its released paths start
    (paths still writing an earlier round's answer are behind it)."""
    active = [m["round"] for m in metas if m["phase"] != "done"]
    return max(active) if active else max((m["round"] for m in metas), default=1)
