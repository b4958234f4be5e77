"""Token counts without text: what the fake replica writes for a plan (`python -m orchestrator.plan`).

Runs in the planner's process, inside in-process fake replicas on a virtual clock. A plan needs
each request's token count and how it ends (a stop string, EOS, its length cap), not words, and
writing a reasoning model's text for a whole sweep would take longer than a plan may. The writer
cycles a filler paragraph's token ids (in the run's tokenizer, or the fake's bytes) to the count,
ending with the stop string's ids, so the coordinator's paragraph cuts, summary repair and peer
blocks work as they would on model text.

How long things are (`Lengths`, a dict; see `lengths_from_rows`):
  think     each path's thinking length in sampled segment tokens, and how it ended ("think_end",
            "eos", or None: it ran to its budget); a path of the plan draws one (by seed and
            path key) and ends its thinking there. Absent: every path uses its whole budget.
  summary, answer, force    lengths of those requests, one drawn per request. Absent: the cap.
  points    the same four per sweep point of the earlier run ({name: {think, ...}}): a path of
            the plan draws from its own point's when the earlier run had a point of that name
            (an independent baseline's paths stop at EOS far sooner than a LeaP point's), else
            from all of them.
"""

from __future__ import annotations

from ..core.prompts import SUMMARY_CLOSE, THINK_END
from ..core.rng import stable_int
from ..core.types import GenRequest
from .busy import point_of

FILLER = "Step: combining the two cases gives the same count, so the sum checks out again.\n\n"


def lengths_from_rows(rows: list[dict], source: str = "") -> dict:
    """`Lengths` from an earlier run's path rows (paths.parquet: sweep_point, finish_reason,
    requests): all of them, and per sweep point under "points"."""
    pooled = _pools()
    points: dict[str, dict] = {}
    for row in rows:
        mine = [pooled]
        if row.get("sweep_point") is not None:
            mine.append(points.setdefault(str(row["sweep_point"]), _pools()))
        seg = 0
        for q in row.get("requests") or []:
            kind, n = q.get("kind"), int(q.get("new_tokens") or 0)
            if kind == "segment":
                seg += n
            elif kind in ("summary", "answer", "force"):
                for pools in mine:
                    pools[kind].append(n)
        finish = row.get("finish_reason")
        for pools in mine:
            pools["think"].append([seg, finish if finish in ("think_end", "eos") else None])
            pools["paths"] += 1
    return {"source": source, **pooled, "points": points}


def _pools() -> dict:
    return {"paths": 0, "think": [], "summary": [], "answer": [], "force": []}


class CountedWriter:
    """Token ids of the right count and ending for each request (see the module docstring)."""

    def __init__(self, tokenizer, lengths: dict | None = None, seed: int = 0):
        filler = tokenizer.encode(FILLER)
        self.long = filler * (1 + (1 << 17) // max(len(filler), 1))  # sliced to any request's length
        self.think_end = tokenizer.encode(THINK_END)
        self.close = tokenizer.encode(SUMMARY_CLOSE)
        self.eos = tokenizer.eos_token_id
        self.lengths = lengths or {}
        self.seed = seed
        self.sampled: dict[str, int] = {}  # thinking tokens each path sampled so far
        self.drawn: dict[str, int] = {}  # requests drawn per path (a new draw each)

    def forget(self, key: str) -> None:
        self.sampled.pop(key, None)
        self.drawn.pop(key, None)

    def _pool(self, pool: str, key: str) -> list:
        """The path `key`'s lengths of `pool`: its sweep point's in the earlier run, where that
        point had some, else the whole run's."""
        own = (self.lengths.get("points") or {}).get(point_of(key))
        if own and own.get(pool):
            return own[pool]
        return self.lengths.get(pool) or []

    def _draw(self, pool: str, key: str, default: int) -> int:
        values = self._pool(pool, key)
        if not values:
            return default
        n = self.drawn.get(key, 0)
        self.drawn[key] = n + 1
        return int(values[stable_int(self.seed, pool, key, n) % len(values)])

    def _fill(self, n: int) -> list[int]:
        if n > len(self.long):
            return (self.long * (n // len(self.long) + 1))[:n]
        return self.long[:n]

    def write(self, req: GenRequest, limit: int) -> tuple[list[int], str, str | None]:
        """(token ids, finish reason, stop string) of `req`, at most `limit` tokens."""
        key, kind = req.path_key, req.kind
        if req.ignore_eos or not (req.branch or kind in ("segment", "summary", "answer", "force")):
            return self._fill(limit), "length", None
        if req.branch:  # an answer probe: an answer's length, drawn without moving the path's own draws
            values = self._pool("answer", key)
            n = int(values[stable_int(self.seed, "probe", key, req.keep) % len(values)]) if values else req.max_tokens
            return self._ending(n, limit, [self.eos], "eos", None)
        if kind == "segment":
            return self._segment(key, limit)
        if kind == "summary":
            n = self._draw("summary", key, req.max_tokens)
            return self._ending(n, limit, self.close, "stop", SUMMARY_CLOSE)
        n = self._draw(kind, key, req.max_tokens)
        return self._ending(n, limit, [self.eos], "eos", None)

    def _segment(self, key: str, limit: int) -> tuple[list[int], str, str | None]:
        think = self._pool("think", key)
        done = self.sampled.get(key, 0)
        total, end = None, None
        if think:
            total, end = think[stable_int(self.seed, "think", key) % len(think)]
        if total is None or end is None or total - done > limit:
            ids, reason, stop = self._fill(limit), "length", None
        elif end == "eos":
            ids, reason, stop = self._ending(total - done, limit, [self.eos], "eos", None)
        else:
            ids, reason, stop = self._ending(total - done, limit, self.think_end, "stop", THINK_END)
        self.sampled[key] = done + len(ids)
        return ids, reason, stop

    def _ending(self, n: int, limit: int, tail: list[int], reason: str, stop: str | None):
        n = max(n, len(tail))
        if n > limit:
            return self._fill(limit), "length", None
        return self._fill(n - len(tail)) + tail, reason, stop
