"""A deterministic fake replica, for fast tests and scale simulation.

It honours the same `Replica` protocol as the vLLM replica: it stores token ids per path, applies
keep/append edits, tracks a per-path prefix cache in whole blocks, and writes text shaped like a
reasoning model's: paragraphs, summaries that close their tag, `\\boxed{}` answers, sometimes an
end-of-thinking marker. What it writes depends only on the request and the run seed, never on
timing, so two runs with the same seed give identical results.

With a latency model it also behaves like a continuous-batching engine in time: at most
`max_num_seqs` requests run at once (the rest wait, first come first served); every running
request gains one token per decode step, and a step takes `step_base_s + step_per_seq_s * batch`
seconds; uncached prompt tokens cost `prefill_s_per_token` each, stalling the batch as a prefill
does. It is simulated event by event (one sleep per request completion or arrival, not per
token), so it is exact under a virtual clock and cheap in real time. Without a latency model a
request returns at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, fields

from ..core.rng import stable_int
from ..core.types import GenRequest, GenResult, PathStateMissing, StaleRequest
from . import node_id
from ..telemetry import Telemetry
from .tokenizer import FakeTokenizer

BLOCK = 16
_ALIASES = {"decode_base_s": "step_base_s", "decode_per_seq_s": "step_per_seq_s"}


@dataclass(frozen=True)
class LatencyModel:
    prefill_s_per_token: float = 0.0
    step_base_s: float = 0.0  # one decode step with a single running sequence
    step_per_seq_s: float = 0.0  # extra step time per running sequence (small on a GPU)
    max_num_seqs: int = 256  # sequences decoded at once; later requests wait
    time_scale: float = 1.0  # wall seconds per simulated second (ignored under a virtual clock)

    @classmethod
    def from_dict(cls, d: dict | None) -> "LatencyModel":
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in (d or {}).items():
            k = _ALIASES.get(k, k)
            if k not in names:
                raise ValueError(f"engine.latency.{k}: unknown; known keys: {sorted(names)}")
            kw[k] = v
        return cls(**kw)

    @property
    def active(self) -> bool:
        return bool(self.prefill_s_per_token or self.step_base_s or self.step_per_seq_s)

    def step(self, batch: int) -> float:
        return self.time_scale * (self.step_base_s + self.step_per_seq_s * max(batch, 1))

    def prefill(self, tokens: int) -> float:
        return self.time_scale * tokens * self.prefill_s_per_token


class _Job:
    __slots__ = ("left", "prefill", "done")

    def __init__(self, tokens: int, prefill_s: float, done: asyncio.Future):
        self.left = tokens
        self.prefill = prefill_s
        self.done = done


class _Engine:
    """Continuous batching in simulated time: admission up to `max_num_seqs`, first come first
    served (running requests are never preempted), flat-ish decode steps, prefill stalls. Keeps
    busy time and batch occupancy for `stats()`."""

    def __init__(self, model: LatencyModel):
        self.m = model
        self.waiting: deque[_Job] = deque()
        self.running: list[_Job] = []
        self.arrival = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.busy_s = 0.0
        self.occupied = 0.0  # integral of batch size over busy time

    async def run(self, tokens: int, prefill_s: float) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._loop())
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(_Job(tokens, prefill_s, fut))
        self.arrival.set()
        await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry = 0.0
        while True:
            while self.waiting and len(self.running) < self.m.max_num_seqs:
                self.running.append(self.waiting.popleft())
            if not self.running:
                self.arrival.clear()
                await self.arrival.wait()
                continue
            batch = len(self.running)
            stall = sum(j.prefill for j in self.running)
            if stall > 0:  # prefill of new arrivals holds the whole batch up
                for j in self.running:
                    j.prefill = 0.0
                t0 = loop.time()
                await asyncio.sleep(stall)
                self._account(loop.time() - t0, batch)
                continue
            step = self.m.step(batch)
            done_now = [j for j in self.running if j.left <= 0]
            if not done_now:
                ahead = min(j.left for j in self.running)
                self.arrival.clear()
                t0 = loop.time()
                try:
                    await asyncio.wait_for(self.arrival.wait(), ahead * step - carry)
                except asyncio.TimeoutError:
                    pass
                elapsed = loop.time() - t0 + carry
                # a timer may fire up to the loop's clock resolution early (1 ms under a virtual clock)
                slack = 1.5 * getattr(loop, "_clock_resolution", 0.0) + 1e-12
                steps = min(ahead, int((elapsed + slack) / step)) if step > 0 else ahead
                carry = max(0.0, elapsed - steps * step)
                self._account(loop.time() - t0, batch)
                for j in self.running:
                    j.left -= steps
                done_now = [j for j in self.running if j.left <= 0]
            if done_now:
                carry = 0.0
                self.running = [j for j in self.running if j.left > 0]
                for j in done_now:
                    if not j.done.done():
                        j.done.set_result(None)

    def _account(self, seconds: float, batch: int) -> None:
        self.busy_s += seconds
        self.occupied += seconds * batch


_NUM = re.compile(r"\\boxed\{(-?\d+)\}|answer is (-?\d+)")


class FakeReplica:
    """Deterministic stand-in for a vLLM replica (same protocol, no model)."""

    def __init__(self, index: int, model: str = "fake", engine: dict | None = None, seed: int = 0):
        engine = dict(engine or {})
        self.index = index
        # Content depends on the run's seed, never on which replica serves a path, so placement,
        # failover and timing cannot change what a run writes.
        self.seed = int(engine.get("run_seed", seed))
        self.max_model_len = int(engine.get("max_model_len", 32768))
        self.think_prob = float(engine.get("think_end_prob", 0.1))
        self.eos_prob = float(engine.get("eos_prob", 0.0))
        # summaries of varying length (0: one short sentence, as before); in words of filler
        self.summary_words = int(engine.get("summary_words", 0) or 0)
        self.latency = LatencyModel.from_dict(engine.get("latency"))
        self.capacity = int(self.latency.max_num_seqs if self.latency.active
                            else engine.get("max_num_seqs") or 256)
        self.tok = FakeTokenizer()
        self.paths: dict[str, array] = {}
        self.computed: dict[str, int] = {}  # per path: leading tokens whose KV is "cached"
        self.engine: _Engine | None = None
        self.served = 0
        self.node = node_id()
        self.tm = Telemetry("replica", replica=index)  # Ray metrics; a no-op outside Ray
        self.running = 0
        self.epoch = 0  # the latest coordinator generation seen (`fence`)
        self.inflight: Counter = Counter()  # running requests per coordinator generation
        self._offset: float | None = None  # epoch - loop clock, fixed at first use
        self._reset_counters()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> dict:
        return await self.info()

    async def startup_status(self) -> dict:
        return {"phases": [{"name": "ready", "seconds": 0.0, "done": True}], "ready": True, "error": None}

    async def info(self) -> dict:
        return {"index": self.index, "node": self.node, "pid": os.getpid(), "model": "fake",
                "max_model_len": self.max_model_len,
                "block_size": BLOCK, "device": "cpu", "capacity": self.capacity,
                "startup": [{"name": "ready", "seconds": 0.0, "done": True}],
                "versions": {}, "gpu_names": [], "attention_backend": None, "per_request_seed": False}

    async def drop(self, path_keys: list[str], epoch: int = 0) -> None:
        if epoch < self.epoch:
            return
        for key in path_keys:
            self.paths.pop(key, None)
            self.computed.pop(key, None)

    async def fence(self, epoch: int) -> int:
        """Refuse requests of coordinator generations before `epoch`. Those still running cannot
        be cut short here; they are refused when they end, before they touch a path."""
        self.epoch = max(self.epoch, int(epoch))
        return sum(n for e, n in self.inflight.items() if e < self.epoch)

    async def ping(self) -> int:
        return self.served

    # -- stats ----------------------------------------------------------------------------------
    def _now(self) -> float:
        """Epoch-like seconds from the event loop's clock (virtual under a simulated clock)."""
        loop = asyncio.get_running_loop()
        if self._offset is None:
            self._offset = time.time() - loop.time()
        return loop.time() + self._offset

    def _reset_counters(self) -> None:
        self.counters = {"requests": 0, "new_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0}
        self.first_request_t: float | None = None
        self.last_token_t: float | None = None
        self.window_start: float | None = None
        self.busy_base = (0.0, 0.0) if self.engine is None else (self.engine.busy_s, self.engine.occupied)

    async def stats(self, reset: bool = False) -> dict:
        now = self._now()
        busy = occ = 0.0
        if self.engine is not None:
            busy = self.engine.busy_s - self.busy_base[0]
            occ = self.engine.occupied - self.busy_base[1]
        out = {**self.counters, "busy_s": round(busy, 6), "occupancy": round(occ / busy, 3) if busy else None,
               "first_request_t": self.first_request_t, "last_token_t": self.last_token_t,
               "window_s": round(now - self.window_start, 6) if self.window_start else 0.0,
               "capacity": self.capacity}
        if reset:
            self._reset_counters()
            self.window_start = self._now()
        return out

    # -- prefix cache bookkeeping -------------------------------------------------------------
    def _cached(self, key: str, keep: int, prompt_len: int) -> int:
        """Whole blocks of the path's prompt that this replica computed before: the kept prefix,
        as far as its KV was computed. Unlike vLLM, paths share no blocks (not even the prompt):
        that keeps the reported numbers independent of timing."""
        n = min(self.computed.get(key, 0), keep, prompt_len - 1)  # the last token is recomputed
        n = max(n, 0)
        return n - n % BLOCK

    # -- generation ----------------------------------------------------------------------------
    async def generate(self, req: GenRequest) -> GenResult:
        key = req.path_key
        self._check_epoch(req)
        if req.full is not None:
            self.paths[key] = array("i", req.full)
        elif key not in self.paths:
            raise PathStateMissing(key)
        tokens = self.paths[key][: req.keep]
        tokens.fromlist(list(req.append))
        self.paths[key] = tokens
        self.inflight[req.epoch] += 1
        try:
            return await self._generate(req, key, tokens)
        finally:
            self.inflight[req.epoch] -= 1

    def _check_epoch(self, req: GenRequest) -> None:
        if req.epoch < self.epoch:
            raise StaleRequest(f"replica {self.index}: request for {req.path_key} from coordinator generation "
                               f"{req.epoch}, fenced at {self.epoch}")
        self.epoch = req.epoch

    async def _generate(self, req: GenRequest, key: str, tokens: array) -> GenResult:
        now = self._now()
        if self.first_request_t is None:
            self.first_request_t = now
        if self.window_start is None:
            self.window_start = now
        room = self.max_model_len - len(tokens)
        if room <= 0:
            return GenResult(key, [], "", "context", prompt_tokens=len(tokens),
                             replica=self.index, node=self.node)
        cached = self._cached(key, req.keep, len(tokens))
        limit = min(req.max_tokens, room)
        if req.ignore_eos:
            text, reason, stop_str = self._filler(tokens, req, limit), "length", None
        else:
            text, reason, stop_str = self._write(tokens, req, limit)
        new = self.tok.encode(text)[:limit]
        if reason == "eos":
            new.append(self.tok.eos_token_id)
        if self.latency.active:
            if self.engine is None:
                self.engine = _Engine(self.latency)
                self.busy_base = (0.0, 0.0)
            self.running += 1
            self.tm.running_requests(self.running)
            try:
                await self.engine.run(len(new), self.latency.prefill(len(tokens) - cached))
            finally:
                self.running -= 1
                self.tm.running_requests(self.running)
            if req.epoch < self.epoch:  # a later coordinator took over while this one ran
                raise StaleRequest(f"replica {self.index}: request for {key} outlived coordinator generation "
                                   f"{req.epoch}")
        self.computed[key] = len(tokens) + max(len(new) - 1, 0)
        tokens.fromlist(new)
        self.served += 1
        c = self.counters
        c["requests"] += 1
        c["new_tokens"] += len(new)
        c["prompt_tokens"] += len(tokens) - len(new)
        c["cached_tokens"] += cached
        self.tm.result(len(new), len(tokens) - len(new), cached)
        self.last_token_t = self._now()
        return GenResult(key, new, self.tok.decode(new, skip_special_tokens=True), reason,
                         stop_str=stop_str, prompt_tokens=len(tokens) - len(new), cached_tokens=cached,
                         replica=self.index, node=self.node)

    def _filler(self, tokens, req: GenRequest, limit: int) -> str:
        """Exactly `limit` bytes of reasoning-shaped text (the floor's requests ignore EOS)."""
        rng = random.Random(stable_int(self.seed, req.path_key, len(tokens), "floor"))
        parts, size = [], 0
        while size < limit:
            n = 2 + int(rng.random() * 98)
            part = f"Step: combining {n} with the rest gives {n * 3 % 97}.\n\n"
            parts.append(part)
            size += len(part)
        return "".join(parts)[:limit]

    def _write(self, tokens: list[int], req: GenRequest, limit: int) -> tuple[str, str, str | None]:
        """The text this request produces, why it ended, and the stop string that ended it."""
        context = self.tok.decode(tokens, skip_special_tokens=True)
        rng = random.Random(stable_int(self.seed, req.path_key, len(tokens), context[-200:]))
        belief = self._belief(req.path_key, context, rng)
        if context.endswith("\\boxed{") or context.rstrip().endswith("ANSWER:"):
            return self._clip(f"{belief}}}", limit, "eos")
        if context.rfind("<summarize>") > context.rfind("</summarize>"):
            filler = ""
            if self.summary_words:  # a summary of varying length, sometimes longer than the cap
                words = rng.randint(self.summary_words // 4, self.summary_words * 5 // 4)
                filler = " ".join(rng.choice(("so", "the", "sum", "checks", "again", "then"))
                                  for _ in range(words)) + "."
            body = f" worked through the setup and my current answer is {belief}. {filler}</summarize>"
            return self._stop_at(body, req.stop, limit)
        if req.kind == "answer":
            return self._clip(f"\n\nThe final answer is \\boxed{{{belief}}}.", limit, "eos")
        parts, size = [], 0
        while size < limit:
            roll = rng.random()
            if roll < self.think_prob / 4:
                parts.append(f"So the answer is {belief}.\n</think>\n")
                break
            if roll < (self.think_prob + self.eos_prob) / 4 and self.eos_prob > 0:
                parts.append(f"Therefore the answer is \\boxed{{{belief}}}.")
                return self._clip("".join(parts), limit, "eos")
            n = 2 + int(rng.random() * 98)
            parts.append(f"Step: combining {n} with the rest gives {n * belief % 97 + belief}.")
            parts.append("\n\n" if rng.random() < 0.5 else " ")
            size += len(parts[-2]) + 1
        return self._stop_at("".join(parts), req.stop, limit)

    def _belief(self, key: str, context: str, rng: random.Random) -> int:
        """The path's current answer: its own, or the peers' majority after reading comments."""
        own = stable_int(self.seed, key.rsplit("/", 1)[0], key) % 7 + 1
        comments = context[context.rfind("<comment>"):] if "<comment>" in context else ""
        seen = [int(a or b) for a, b in _NUM.findall(comments)]
        if seen and stable_int(self.seed, key, "adopt") % 2 == 0:
            return Counter(seen).most_common(1)[0][0]
        return own

    def _stop_at(self, text: str, stops: list[str], limit: int) -> tuple[str, str, str | None]:
        best = None
        for s in stops:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None and best[0] + len(best[1]) <= limit:
            return text[: best[0] + len(best[1])], "stop", best[1]
        return self._clip(text, limit, "length" if len(text.encode()) >= limit else "eos")

    @staticmethod
    def _clip(text: str, limit: int, reason: str) -> tuple[str, str, None]:
        raw = text.encode("utf-8")
        if len(raw) > limit:
            return raw[:limit].decode("utf-8", errors="ignore"), "length", None
        return text, reason, None
