"""A deterministic fake replica, for fast tests, simulations and plans.

It honours the same `Replica` protocol as the vLLM replica: it stores token ids per path, applies
keep/append edits, tracks a per-path prefix cache in whole blocks, and writes text shaped like a
reasoning model's: paragraphs, summaries that close their tag, `\\boxed{}` answers, sometimes an
end-of-thinking marker. What it writes depends only on the request and the run seed, never on
timing, so two runs with the same seed give identical results.

With a latency model (`engine.latency`, or a calibrated profile: `engine.profile`) it also takes
the time a continuous-batching engine takes: `batching.Engine` (a batch of at most `max_num_seqs`,
a KV cache with prefix caching and eviction, chunked prefill, decode steps that cost more with
more context). Its cache hits then come from that KV cache, so they shrink when paths were
evicted. Without a latency model a request returns at once.

Given a `writer` (`counted.CountedWriter`: the planner's) it writes no text at all, only token
counts that end the way a path of the given lengths would, and keeps only each path's length.

It runs as a Ray actor in a fake run, or in-process under a virtual clock (`local.LocalHandle`)
for `python -m orchestrator.plan` and `benchmarks/overhead.py --simulate`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from array import array
from collections import Counter
from functools import lru_cache

from ..core.rng import stable_int
from ..core.types import GenRequest, GenResult, PathStateMissing, StaleRequest
from . import node_id
from ..telemetry import Telemetry
from .batching import Engine, LatencyModel
from .busy import BusyClock, point_of
from .profile import Profile, load as load_profile
from .tokenizer import FakeTokenizer

BLOCK = 16  # KV block size of the prefix-cache bookkeeping without a latency model


_NUM = re.compile(r"\\boxed\{(-?\d+)\}|answer is (-?\d+)")


class FakeReplica:
    """Deterministic stand-in for a vLLM replica (same protocol, no model)."""

    def __init__(self, index: int, model: str = "fake", engine: dict | None = None, seed: int = 0,
                 writer=None):
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
        profile = engine.get("profile")
        if profile is not None and not isinstance(profile, Profile):
            profile = load_profile(profile)
        self.latency = LatencyModel.from_dict(engine.get("latency"), profile)
        self.capacity = int(self.latency.max_num_seqs if self.latency.active
                            else engine.get("max_num_seqs") or 256)
        self.block = self.latency.profile.block_size if self.latency.active else BLOCK
        self.writer = writer  # counted.CountedWriter: token counts instead of text (plans)
        self.tok = FakeTokenizer()
        self.paths: dict[str, array] = {}
        self.lengths: dict[str, int] = {}  # with a writer: each path's length only
        self.computed: dict[str, int] = {}  # per path: leading tokens whose KV was computed here
        self.engine: Engine | None = Engine(self.latency) if self.latency.active else None
        self.served = 0
        self.node = node_id()
        self.tm = Telemetry("replica", replica=index)  # Ray metrics; a no-op outside Ray
        self.running = 0
        self.epoch = 0  # the latest coordinator generation seen (`fence`)
        self.inflight: Counter = Counter()  # running requests per coordinator generation
        self.busy_by_point: Counter = Counter()  # engine seconds per sweep point (each step shared)
        self.busy_base: Counter = Counter()  # `busy_by_point` at the last stats reset
        self.clock: BusyClock | None = None  # without a latency model: busy time as the replica measures it
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
                "block_size": self.block, "device": "cpu", "capacity": self.capacity,
                "startup": [{"name": "ready", "seconds": 0.0, "done": True}],
                "versions": {}, "gpu_names": [], "attention_backend": None, "per_request_seed": False}

    async def drop(self, path_keys: list[str], epoch: int = 0) -> None:
        if epoch < self.epoch:
            return
        for key in path_keys:
            self.paths.pop(key, None)
            self.lengths.pop(key, None)
            self.computed.pop(key, None)
            if self.engine is not None:
                self.engine.forget(key)
            if self.writer is not None:
                self.writer.forget(key)

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
        self.engine_base = self.engine.figures() if self.engine is not None else {}
        if self.engine is not None:
            self.engine.reset_peak()

    async def stats(self, reset: bool = False) -> dict:
        """The protocol's figures; with a latency model also the KV cache's since the last reset:
        `peak_kv_tokens` (held by running requests), `evictions` (of paths' cached blocks, a path
        counted each time), `evicted_tokens`, `recomputed_tokens` (prefilled again after an
        eviction or a preemption), `preemptions`, and the seconds requests waited with the batch
        full (`batch_full_s`) or for KV room with batch slots free (`kv_wait_s`)."""
        now = self._now()
        kv = {}
        if self.engine is not None:
            fig = self.engine.figures()
            kv = {k: (v - self.engine_base.get(k, 0) if k in self.engine_base and k not in
                      ("peak_kv_tokens", "kv_capacity_tokens") else v) for k, v in fig.items()}
        busy, occ = kv.pop("busy_s", 0.0), kv.pop("occupied", 0.0)
        if self.engine is not None:
            by_point = {p: round(s - self.busy_base.get(p, 0.0), 6) for p, s in sorted(self.busy_by_point.items())}
        else:
            clock = self._clock()
            clock.advance(now)
            busy, occ, by_point = clock.busy_s, clock.area, clock.point_seconds()
        out = {**self.counters, "busy_s": round(busy, 6), "occupancy": round(occ / busy, 3) if busy else None,
               "first_request_t": self.first_request_t, "last_token_t": self.last_token_t,
               "window_s": round(now - self.window_start, 6) if self.window_start else 0.0,
               "capacity": self.capacity, "busy_by_point": by_point}
        out.update({k: round(v, 6) if isinstance(v, float) else v for k, v in kv.items()})
        if reset:
            self._reset_counters()
            self.window_start = self._now()
            self.busy_base = Counter(self.busy_by_point)
            if self.clock is not None:
                self.clock.reset(self.window_start)
        return out

    def _clock(self) -> BusyClock:
        if self.clock is None:
            self.clock = BusyClock(self._now())
        return self.clock

    def point_figures(self) -> dict[str, dict]:
        """Per sweep point (a path key's part before '|'): engine seconds its requests took (each
        step's time shared among the step's requests), evictions of its paths' cached blocks and
        its tokens prefilled again. For the planner, in-process; empty without a latency model."""
        if self.engine is None:
            return {}
        by_point = self.engine.by_point
        return {point: {"engine_s": self.busy_by_point.get(point, 0.0),
                        "evictions": by_point.get(point, [0, 0])[0],
                        "recomputed_tokens": by_point.get(point, [0, 0])[1]}
                for point in set(self.busy_by_point) | set(by_point)}

    # -- prefix cache bookkeeping -------------------------------------------------------------
    def _cached(self, key: str, keep: int, prompt_len: int) -> int:
        """Whole blocks of the path's prompt that this replica computed before: the kept prefix,
        as far as its KV was computed (what an unbounded cache reuses). Unlike vLLM, paths share
        no blocks (not even the prompt): that keeps the reported numbers independent of timing."""
        n = min(self.computed.get(key, 0), keep, prompt_len - 1)  # the last token is recomputed
        n = max(n, 0)
        return n - n % self.block

    # -- generation ----------------------------------------------------------------------------
    async def generate(self, req: GenRequest) -> GenResult:
        key = req.path_key
        self._check_epoch(req)
        if self.writer is not None:
            return await self._generate_counted(req, key)
        if req.branch:  # a probe: an edited copy; the stored path stays as it was
            base = array("i", req.full) if req.full is not None else self.paths.get(key)
        else:
            if req.full is not None:
                self.paths[key] = array("i", req.full)
            base = self.paths.get(key)
        if base is None:
            raise PathStateMissing(key)
        tokens = base[: req.keep]  # a copy
        tokens.fromlist(list(req.append))
        if not req.branch:
            self.paths[key] = tokens
        self.inflight[req.epoch] += 1
        clock = self._clock() if self.engine is None else None
        if clock is not None:
            clock.start(key, self._now())
        try:
            return await self._generate(req, key, tokens)
        finally:
            self.inflight[req.epoch] -= 1
            if clock is not None:
                clock.end(key, self._now())

    def _check_epoch(self, req: GenRequest) -> None:
        if req.epoch < self.epoch:
            raise StaleRequest(f"replica {self.index}: request for {req.path_key} from coordinator generation "
                               f"{req.epoch}, fenced at {self.epoch}")
        self.epoch = req.epoch

    def _started(self) -> None:
        now = self._now()
        if self.first_request_t is None:
            self.first_request_t = now
        if self.window_start is None:
            self.window_start = now

    async def _generate(self, req: GenRequest, key: str, tokens: array) -> GenResult:
        self._started()
        room = self.max_model_len - len(tokens)
        if room <= 0:
            return GenResult(key, [], "", "context", prompt_tokens=len(tokens), replica=self.index,
                             node=self.node, confidences=self._confidences(req, len(tokens), []))
        limit = min(req.max_tokens, room)
        if req.ignore_eos:
            text, reason, stop_str = self._filler(tokens, req, limit), "length", None
        else:
            text, reason, stop_str = self._write(tokens, req, limit)
        new = self.tok.encode(text)[:limit]
        if reason == "eos":
            new.append(self.tok.eos_token_id)
        prompt = len(tokens)
        cached = await self._serve(req, key, prompt, len(new))
        tokens.fromlist(new)
        return self._result(key, prompt, new, cached, reason, stop_str,
                            self.tok.decode(new, skip_special_tokens=True), self._confidences(req, prompt, new))

    async def _generate_counted(self, req: GenRequest, key: str) -> GenResult:
        """The writer's token counts; only the path's length is kept (plans)."""
        if req.full is not None:
            length = len(req.full)
            if not req.branch:
                self.lengths[key] = length
        elif key in self.lengths:
            length = self.lengths[key]
        else:
            raise PathStateMissing(key)
        prompt = min(length, req.keep) + len(req.append)
        if not req.branch:
            self.lengths[key] = prompt
        self._started()
        room = self.max_model_len - prompt
        if room <= 0:
            return GenResult(key, [], "", "context", prompt_tokens=prompt, replica=self.index, node=self.node,
                             confidences=self._confidences(req, prompt, []))
        new, reason, stop_str = self.writer.write(req, min(req.max_tokens, room))
        self.inflight[req.epoch] += 1
        try:
            cached = await self._serve(req, key, prompt, len(new))
        finally:
            self.inflight[req.epoch] -= 1
        if not req.branch:
            self.lengths[key] = prompt + len(new)
        return self._result(key, prompt, new, cached, reason, stop_str, "", self._confidences(req, prompt, new))

    async def _serve(self, req: GenRequest, key: str, prompt: int, new: int) -> int:
        """Take the engine's time for a request (with a latency model); returns its cached
        tokens. A request that outlived its coordinator generation is refused here."""
        cached = self._cached(key, req.keep, prompt)
        if self.engine is not None:
            self.running += 1
            self.tm.running_requests(self.running)
            try:
                cached, share = await self.engine.run(key, prompt, req.keep, new, cached, branch=req.branch)
            finally:
                self.running -= 1
                self.tm.running_requests(self.running)
            self.busy_by_point[point_of(key)] += share
            if req.epoch < self.epoch:  # a later coordinator took over while this one ran
                raise StaleRequest(f"replica {self.index}: request for {key} outlived coordinator generation "
                                   f"{req.epoch}")
        if not req.branch:  # a probe's KV is not the path's
            self.computed[key] = prompt + max(new - 1, 0)
        return cached

    def _confidences(self, req: GenRequest, prompt: int, new: list[int]) -> list[float] | None:
        """Per-token confidences when the request asks for logprobs (`fake_confidence`)."""
        if req.logprobs <= 0:
            return None
        return [fake_confidence(self.seed, req.path_key, prompt + i, t) for i, t in enumerate(new)]

    def _result(self, key: str, prompt: int, new: list[int], cached: int, reason: str, stop_str: str | None,
                text: str, confidences: list[float] | None = None) -> GenResult:
        self.served += 1
        c = self.counters
        c["requests"] += 1
        c["new_tokens"] += len(new)
        c["prompt_tokens"] += prompt
        c["cached_tokens"] += cached
        self.tm.result(len(new), prompt, cached)
        self.last_token_t = self._now()
        return GenResult(key, new, text, reason, stop_str=stop_str, prompt_tokens=prompt, cached_tokens=cached,
                         replica=self.index, node=self.node, confidences=confidences)

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


@lru_cache(maxsize=1 << 16)
def _confidence_level(seed: int, key: str) -> float:
    """A path's typical confidence: one path in four sits clearly lower (2-4) than the rest (6-12)."""
    r = stable_int(seed, key, "confidence")
    u = (r >> 8) / float(1 << 56)
    return 2.0 + 2.0 * u if r % 4 == 0 else 6.0 + 6.0 * u


def fake_confidence(seed: int, key: str, position: int, token: int) -> float:
    """The fake engine's confidence of token `token` at `position` (its index in the path's token
    list) of path `key`: the path's level plus noise of +-1.5, a function of these four values only,
    so every run and every replica gives the same figure. Positive, like minus a mean of logprobs."""
    noise = stable_int(seed, key, position, token) / float(1 << 64) - 0.5
    return round(max(0.05, _confidence_level(seed, key) + 3.0 * noise), 4)
