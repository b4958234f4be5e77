"""The per-problem round state machine of LeaP (DESIGN.md section 1), written like a scheduler.

A `Group` holds the N paths of one problem at one sweep point. It never calls an engine: the
caller asks `requests()` for what can run now, sends those `GenRequest`s wherever it likes, and
feeds each `GenResult` back through `on_result()` in any order. Paths advance on their own between
barriers; at a communication round the group waits until every active path has its summary, then
routes and appends the peer blocks. `done` turns true when every path has finished, and
`records()` returns the result rows.

What a path receives at a barrier and when a path or the problem stops are decided by the
method the parameters name (`core.methods`); the group only runs the rounds.

Path phases:  segment -> [summary -> barrier ->] segment ... -> force -> done
              a segment that emits the end-of-thinking marker goes to `answer` (the final answer
              after thinking) and leaves the group; EOS or a full context ends the path at once.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import zlib
from array import array
from dataclasses import asdict

from . import routing
from .grading import extract_answer
from .methods import Barrier
from .params import LeapParams
from .paths import PathState, TokenIds
from .prompts import SUMMARY_CLOSE, SUMMARY_OPEN, THINK_END, PromptSet
from .rng import rng_for, stable_int
from .text import extract_summary, paragraph_cut, repair_summary
from .types import GenRequest, GenResult, Problem, SamplingSpec, Tokenizer

log = logging.getLogger(__name__)

class Group:
    """One problem's N paths at one sweep point."""

    def __init__(
        self,
        key: str,
        problem: Problem,
        prompt_ids: list[int],
        params: LeapParams,
        prompts: PromptSet,
        tokenizer: Tokenizer,
        sampling: SamplingSpec = SamplingSpec(),
        embed=None,
        sweep_point: str = "default",
    ):
        self.method = params.method
        self.key = key
        self.problem = problem
        self.params = params
        self.prompts = prompts
        self.tok = tokenizer
        self.sampling = sampling
        self.embed = embed
        self.sweep_point = sweep_point
        self.messages: list[dict] = []
        self.barriers_released = 0  # communication rounds completed (a checkpoint point each)
        self.resumed_from_round: int | None = None  # set by `restore`: the round it went on with
        self.paths = [
            PathState(
                index=i,
                key=f"{key}/{i}",
                tokens=TokenIds(prompt_ids),
                prompt_len=len(prompt_ids),
                segment_start=len(prompt_ids),
            )
            for i in range(params.paths)
        ]
        self._by_key = {p.key: p for p in self.paths}
        self._by_index = {p.index: p for p in self.paths}
        # barrier work done as summaries arrive (see `_arrive`); cleared at every release
        self._parts = prompts.peer_block_parts()
        self._pieces: dict[str, TokenIds] = {}
        self._summary_ids: dict[int, TokenIds] = {}  # a summary's ids and the line suffix's
        self._sim_row: dict[int, dict[int, float]] = {}

    # -- the plan ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(p.phase == "done" for p in self.paths)

    def requests(self) -> list[GenRequest]:
        """Requests for every path that can advance now and has none under way."""
        out = []
        for p in self.paths:
            if p.in_flight is None and p.phase in ("segment", "summary", "answer", "force"):
                out.append(self._request(p))
                p.in_flight = p.phase
        return out

    def _request(self, p: PathState) -> GenRequest:
        prm = self.params
        stop: list[str] = []
        min_tokens = 0
        if p.phase == "segment":
            p.segment_start = len(p.tokens)
            max_tokens = self.method.stopping.segment_tokens(prm, p)
            stop = [THINK_END, *self.method.communication.segment_stops(prm, p.round)]
            min_tokens = min(prm.segment_min_tokens, max_tokens)
        elif p.phase == "summary":
            max_tokens, stop = prm.summary_tokens, [SUMMARY_CLOSE, THINK_END]
        elif p.phase == "answer":
            max_tokens = prm.answer_tokens
        else:  # force
            max_tokens = prm.summary_tokens
        seed = stable_int(prm.seed, self.problem.id, p.index, p.round, p.phase) % (2**31)
        return GenRequest(
            path_key=p.key,
            keep=p.synced,
            append=p.tokens[p.synced:].tolist(),
            max_tokens=max(int(max_tokens), 1),
            stop=stop,
            sampling=SamplingSpec(
                self.sampling.temperature, self.sampling.top_p, self.sampling.top_k,
                self.sampling.min_p, seed,
            ),
            min_tokens=min_tokens,
            kind=p.phase,
        )

    def full_tokens(self, path_key: str) -> list[int]:
        """What a replica that lost (or never had) the path must be sent: its synced prefix."""
        p = self._by_key[path_key]
        return p.tokens[: p.synced].tolist()

    def replica_lost(self, path_key: str) -> None:
        """The path's replica died: nothing of it is cached anywhere any more."""
        p = self._by_key[path_key]
        p.computed = 0

    # -- results -------------------------------------------------------------------------------
    def on_result(self, res: GenResult) -> None:
        p = self._by_key.get(res.path_key)
        if p is None or p.in_flight is None:
            raise ValueError(f"group {self.key}: unexpected result for {res.path_key}")
        kind, p.in_flight = p.in_flight, None
        keep = p.synced
        p.requests.append({
            "round": p.round,
            "kind": kind,
            "prompt_tokens": res.prompt_tokens,
            "cached_tokens": res.cached_tokens,
            "reusable_tokens": min(p.computed, keep),
            "new_tokens": len(res.token_ids),
            "replica": res.replica,
        })
        p.replica, p.node = res.replica, res.node
        new = list(res.token_ids)
        # The replica now holds our tokens plus the new ones, with KV for all but the last new
        # one; each handler appends `new` first and then edits (cuts move these marks back).
        base = len(p.tokens)
        p.synced = base + len(new)
        if new:
            p.computed = base + len(new) - 1
        getattr(self, f"_after_{kind}")(p, res, new)
        if any(q.phase == "barrier" for q in self.paths):
            self._maybe_release()

    def _after_segment(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "segment")
        p.sampled_segments += len(new)
        if res.finish_reason in ("eos", "context"):
            return self._finish(p, res.finish_reason)
        if res.stop_str == THINK_END:
            if self.params.answer_tokens > 0:
                p.phase = "answer"
                return None
            return self._finish(p, "think_end")
        if res.stop_str == SUMMARY_OPEN:  # the model opened its own summary (a segment stop)
            p.summary_start = len(p.tokens)
            p.phase = "summary"
            return None
        if self.method.stopping.last_segment(self.params, p):
            return self._force(p)
        if self.method.communication.communicates(self.params, p.round):
            return self._start_summary(p)
        p.round += 1
        p.phase = "segment"
        return None

    def _start_summary(self, p: PathState) -> None:
        segment = p.tokens[p.segment_start:].tolist()
        keep = paragraph_cut(self.tok, segment)
        p.cut(p.segment_start + keep)
        lead = "" if keep < len(segment) else "\n\n"
        rng = rng_for(self.params.seed, self.problem.id, p.index, p.round, "summary_prompt")
        text = lead + self.prompts.summary_prompt(rng)
        p.summary_start = len(p.tokens)
        p.append(self.tok.encode(text), "summary_prompt")
        p.phase = "summary"

    def _after_summary(self, p: PathState, res: GenResult, new: list[int]) -> None:
        base = len(p.tokens)
        p.append(new, "summary")
        if res.finish_reason == "context":
            return self._finish(p, "context")
        if new and new[-1] == self.tok.eos_token_id:
            p.cut(len(p.tokens) - 1)  # an EOS inside a summary would end the path later
        keep, fix = repair_summary(self.tok, p.tokens[base:].tolist())
        p.cut(base + keep)
        if fix:
            p.append(self.tok.encode(fix), "summary_fix")
        p.summaries.append(extract_summary(self.tok.decode(p.tokens[p.summary_start:].tolist())))
        p.phase = "barrier"
        self._arrive(p)
        return None

    # -- barrier work, done as summaries arrive ------------------------------------------------
    def _arrive(self, p: PathState) -> None:
        """Encode the path's summary and compare it with the summaries already waiting, now:
        releasing the barrier then only sorts and concatenates token ids."""
        text = p.summaries[-1]
        if self._parts is not None:
            entry = TokenIds(self.tok.encode(text))
            entry.extend(self._piece(self._parts[2]))
            self._summary_ids[p.index] = entry
        if self.params.similarity in routing.STRING_SIMILARITIES:
            row = self._sim_row.setdefault(p.index, {})
            others = [q for q in self._sim_row if q != p.index]
            values = routing.similarities_to(text, [self._by_index[q].summaries[-1] for q in others],
                                             self.params.similarity)
            for q, v in zip(others, values):
                row[q] = v
                self._sim_row[q][p.index] = v

    def _matrix(self, waiting: list[PathState], summaries: list[str]):
        """The waiting paths' similarity matrix from the rows built on arrival (None: compute)."""
        if self.params.similarity not in routing.STRING_SIMILARITIES:
            return None
        rows = self._sim_row
        if any(q.index not in rows for q in waiting):  # e.g. restored from a checkpoint
            return None
        return [[1.0 if a is b else rows[a.index][b.index] for b in waiting] for a in waiting]

    def _peer_ids(self, summaries: list[str], waiting: list[PathState], peers) -> list[int] | TokenIds:
        """The peer block's token ids: cached pieces around each summary's ids (array copies
        only), or an encode of the whole block when the prompt file's templates cannot be split."""
        texts = [summaries[j] for j, _ in peers]
        if self._parts is None or not peers or any(waiting[j].index not in self._summary_ids for j, _ in peers):
            return self.tok.encode(self.prompts.peer_block(texts))
        head, prefix, _, tail = self._parts
        ids = TokenIds(self._piece(head))
        for rank, (j, _) in enumerate(peers, start=1):
            if rank > 1:
                ids.extend(self._piece("\n"))
            ids.extend(self._piece(prefix.format(index=rank)))
            ids.extend(self._summary_ids[waiting[j].index])
        ids.extend(self._piece(tail))
        return ids

    def _piece(self, text: str) -> TokenIds:
        ids = self._pieces.get(text)
        if ids is None:
            ids = self._pieces[text] = TokenIds(self.tok.encode(text) if text else ())
        return ids

    def _after_answer(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "answer")
        self._finish(p, "think_end" if res.finish_reason != "context" else "context")

    def _after_force(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "answer")
        self._finish(p, "forced" if res.finish_reason != "context" else "context")

    def _force(self, p: PathState) -> None:
        if not self.params.force_answer:
            return self._finish(p, "length")
        p.append(self.tok.encode(self.prompts.forcing(self.problem.kind)), "force")
        p.phase = "force"
        return None

    def _finish(self, p: PathState, reason: str) -> None:
        p.phase, p.finish = "done", reason

    # -- barrier -------------------------------------------------------------------------------
    def _maybe_release(self) -> None:
        if any(q.phase in ("segment", "summary") for q in self.paths):
            return
        waiting = [q for q in self.paths if q.phase == "barrier"]
        if not waiting:
            return
        round_ = waiting[0].round
        summaries = [q.summaries[-1] for q in waiting]
        barrier = Barrier(self.params, self.problem, round_, tuple(waiting), tuple(summaries),
                          tuple(self.paths), embed=self.embed, similarity=self._matrix(waiting, summaries))
        if self.method.stopping.stop_group(barrier):
            for q in waiting:
                self._force(q)
        else:
            self._route(barrier)
        self.barriers_released += 1
        self._summary_ids.clear()
        self._sim_row.clear()

    def _route(self, barrier: Barrier) -> None:
        waiting, summaries = list(barrier.waiting), list(barrier.summaries)
        routes = self.method.communication.route(barrier)
        if len(routes) != len(waiting):
            raise ValueError(f"group {self.key}: method {self.method.name} routed {len(routes)} of {len(waiting)} paths")
        for q, peers in zip(waiting, routes):
            q.append(self._peer_ids(summaries, waiting, peers), "comment")
            for rank, (j, sim) in enumerate(peers, start=1):
                self.messages.append({
                    "sweep_point": self.sweep_point,
                    "benchmark": self.problem.benchmark,
                    "problem_id": self.problem.id,
                    "round": barrier.round,
                    "recipient": q.index,
                    "sender": waiting[j].index,
                    "rank": rank,
                    "similarity": round(float(sim), 6),
                    "summary": summaries[j],
                })
            q.round += 1
            q.phase = "segment"

    # -- results -------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """One row per path (the paths.parquet schema, minus the run's sweep columns)."""
        rows = []
        for p in self.paths:
            text = self.tok.decode(p.tokens[p.prompt_len:].tolist())
            first = extract_answer(p.summaries[0]) if p.summaries and self.problem.kind == "math" else None
            reqs = p.requests
            rows.append({
                "sweep_point": self.sweep_point,
                "benchmark": self.problem.benchmark,
                "problem_id": self.problem.id,
                "path": p.index,
                "gold": self.problem.gold,
                "answer": None,  # filled by grading.grade_record, off the coordinator
                "correct": None,
                "correct_compat": None,
                "finish_reason": p.finish or "unfinished",
                "rounds": p.round,
                "prompt_tokens": p.prompt_len,
                "sampled_tokens": p.count(injected=False),
                "injected_tokens": p.count(injected=True),
                "cached_tokens": sum(r["cached_tokens"] for r in reqs),
                "uncached_tokens": sum(r["prompt_tokens"] - r["cached_tokens"] for r in reqs),
                "summaries": list(p.summaries),
                "answer_first_summary": first,
                "answer_changed": None,
                "replica": p.replica,
                "node": p.node,
                "text": text,
                "spans": self._span_rows(p, text),
                "requests": [dict(r) for r in reqs],
                "resumed_from_round": self.resumed_from_round,
            })
        return rows

    def _span_rows(self, p: PathState, text: str) -> list[dict]:
        """Spans in token offsets of the generated text, with character offsets into `text` when
        decoding span by span gives `text` back exactly (else null: a seam split a character,
        or the tokenizer does not decode piecewise)."""
        body_start = p.prompt_len
        rows, pieces = [], []
        pos = body_start
        for k, s, e in p.spans:
            if s > pos:  # not covered by a span (never, today): decode it to keep offsets right
                pieces.append(self.tok.decode(p.tokens[pos:s].tolist()))
            piece = self.tok.decode(p.tokens[s:e].tolist())
            pieces.append(piece)
            rows.append({"kind": k, "start": s - body_start, "end": e - body_start, "piece": len(pieces) - 1})
            pos = max(pos, e)
        if pos < len(p.tokens):
            pieces.append(self.tok.decode(p.tokens[pos:].tolist()))
        exact = "".join(pieces) == text
        offsets, acc = [], 0
        for piece in pieces:
            offsets.append(acc)
            acc += len(piece)
        for r in rows:
            i = r.pop("piece")
            r["char_start"] = offsets[i] if exact else None
            r["char_end"] = offsets[i] + len(pieces[i]) if exact else None
        return rows

    # -- checkpoints ---------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The group's whole state as compact bytes (see `restore`). Taken after a barrier
        release, it loses nothing but requests under way, which `restore` sends again."""
        meta = []
        chunks = []
        for p in self.paths:
            meta.append({
                "index": p.index, "key": p.key, "n": len(p.tokens), "prompt_len": p.prompt_len,
                "phase": p.phase, "round": p.round, "in_flight": p.in_flight, "finish": p.finish,
                "segment_start": p.segment_start, "summary_start": p.summary_start,
                "sampled_segments": p.sampled_segments, "spans": [list(s) for s in p.spans],
                "summaries": p.summaries, "requests": p.requests, "replica": p.replica, "node": p.node,
            })
            chunks.append(_le_bytes(p.tokens))
        header = {
            "version": SNAPSHOT_VERSION, "key": self.key, "problem_id": self.problem.id,
            "sweep_point": self.sweep_point, "params": _params_record(self.params),
            "barriers_released": self.barriers_released, "resumed_from_round": self.resumed_from_round,
            "messages": self.messages, "paths": meta,
        }
        head = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 1)
        body = b"".join([SNAPSHOT_MAGIC, struct.pack("<I", len(head)), head, *chunks])
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def restore(
        cls,
        blob: bytes,
        problem: Problem,
        prompt_ids: list[int],
        params: LeapParams,
        prompts: PromptSet,
        tokenizer: Tokenizer,
        sampling: SamplingSpec = SamplingSpec(),
        embed=None,
        sweep_point: str | None = None,
    ) -> "Group":
        """Rebuild a group from `snapshot()` bytes; it continues exactly where the snapshot was.

        Nothing is assumed about replicas: every path is marked as held by none (its next request
        carries its whole token list), and a request that was under way is asked again. Raises
        `CheckpointError` when the bytes are damaged or were made for another problem, sweep
        point, prompt or parameters (the caller then starts the group afresh)."""
        header, tokens = read_snapshot(blob)
        point = header["sweep_point"] if sweep_point is None else sweep_point
        if header["problem_id"] != problem.id or header["sweep_point"] != point:
            raise CheckpointError(f"checkpoint of {header['key']!r} does not belong to {point}|{problem.id}")
        if header["params"] != _params_record(params):
            changed = sorted(k for k, v in _params_record(params).items() if header["params"].get(k) != v)
            raise CheckpointError(f"checkpoint of {header['key']!r} was made with other leap settings "
                                  f"({', '.join(changed)})")
        metas = header["paths"]
        if len(metas) != params.paths:
            raise CheckpointError(f"checkpoint of {header['key']!r} has {len(metas)} paths, not {params.paths}")
        group = cls(header["key"], problem, prompt_ids, params, prompts, tokenizer, sampling,
                    embed=embed, sweep_point=point)
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
        if any(p.phase == "barrier" for p in group.paths):
            group._maybe_release()
        return group


SNAPSHOT_MAGIC = b"LEAPGRP\x01"
SNAPSHOT_VERSION = 1


class CheckpointError(ValueError):
    """Snapshot bytes that are damaged or belong to another group or configuration."""


def _params_record(params: LeapParams) -> dict:
    """The parameters as JSON would give them back (tuples become lists)."""
    return json.loads(json.dumps(asdict(params)))


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
