"""The fake replica's engine in simulated time: continuous batching over a KV cache, from a `Profile`.

It runs in the fake replica's process (a Ray worker in a fake run; the planner's or the
benchmark's own process under a virtual clock) and decides only *when* a request ends, never
what it writes. The model, as vLLM's V1 scheduler behaves:

- **Batch.** At most `max_num_seqs` requests run; later ones wait, first come first served (a
  request that does not fit holds back the ones behind it).
- **KV cache.** `kv_capacity_tokens` in blocks of `block_size`. A running request holds blocks for
  its whole context. When it ends, its full blocks stay cached under its path (prefix caching)
  until evicted; a path's next request reuses min(cached, kept prefix, prompt - 1) tokens, in
  whole blocks (paths share no blocks, not even the problem's prompt). Room for a request, or for
  running ones that grow, is made by evicting cached blocks least recently used first, from the
  tail of a path's blocks (the order of vLLM's free-block queue); a path that comes back prefills
  what it lost again (`recomputed_tokens`). When the running requests alone outgrow the cache,
  the most recently admitted is preempted: its blocks go back to the cache and it waits at the
  head of the queue, to be recomputed when it is admitted again.
- **Chunked prefill.** Each step takes up to `chunk_tokens` uncached prompt tokens (first come
  first served) besides one token for every running request whose prefill is done; the step that
  completes a prefill samples the request's first token.
- **Step time** = `Profile.step_s(decoding requests, their context tokens, prefill tokens, cached
  tokens of the requests admitted for the step)` x `Profile.replay_factor` x `time_scale`.

It is event driven: a stretch of decode steps with nothing arriving is one sleep to the next
event (a request ending, the cache filling up, an arrival that can join the batch); only steps
that prefill are taken one at a time. Decoding requests are kept lazily (when each ends, its
context offset, blocks counted per residue), so an event costs O(log batch), not O(batch).
Under a virtual clock (aiotools) the times are exact.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

from .busy import point_of
from .profile import Decode, Prefill, Profile

UNBOUNDED_KV = 1 << 40  # tokens: a latency model without a KV capacity never evicts
_ALIASES = {"decode_base_s": "step_base_s", "decode_per_seq_s": "step_per_seq_s"}
# engine.latency keys -> (profile part, field)
_KEYS = {
    "step_base_s": ("decode", "step_base_s"),
    "step_per_seq_s": ("decode", "step_per_seq_s"),
    "step_per_context_token_s": ("decode", "step_per_context_token_s"),
    "prefill_s_per_token": ("prefill", "s_per_token"),
    "s_per_cached_token": ("prefill", "s_per_cached_token"),
    "chunk_tokens": ("prefill", "chunk_tokens"),
    "kv_capacity_tokens": (None, "kv_capacity_tokens"),
    "block_size": (None, "block_size"),
    "max_num_seqs": (None, "max_num_seqs"),
}
_COSTS = ("step_base_s", "step_per_seq_s", "step_per_context_token_s", "prefill_s_per_token", "s_per_cached_token")


@dataclass(frozen=True)
class LatencyModel:
    """What the simulated engine runs on: a `Profile` and `time_scale` (every step's time is
    multiplied by it: a fake run through Ray can go faster than the engine it stands for).
    `profile` None: no latency, requests return at once."""

    profile: Profile | None = None
    time_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict | None, profile: Profile | None = None) -> "LatencyModel":
        """`engine.latency` (keys: see `_KEYS`, `time_scale`, and the old names decode_base_s,
        decode_per_seq_s) over `profile` (`engine.profile`), or over an unbounded KV cache
        without one. Without a profile and without a cost, there is no latency model."""
        d = dict(d or {})
        scale = float(d.pop("time_scale", 1.0))
        parts = {"decode": {}, "prefill": {}, None: {}}
        for k, v in d.items():
            k = _ALIASES.get(k, k)
            if k not in _KEYS:
                raise ValueError(f"engine.latency.{k}: unknown; known keys: {sorted([*_KEYS, 'time_scale'])}")
            part, name = _KEYS[k]
            parts[part][name] = v
        if profile is None:
            costs = {_ALIASES.get(k, k) for k, v in d.items() if v}
            if not costs & set(_COSTS):
                return cls(None, scale)
            profile = Profile(key={"model": "fake", "engine": "fake", "dtype": "", "device": "simulated"},
                              decode=Decode(0.0), prefill=Prefill(0.0), kv_capacity_tokens=UNBOUNDED_KV,
                              fitted_from="engine.latency")
        profile = replace(profile, decode=replace(profile.decode, **parts["decode"]),
                          prefill=replace(profile.prefill, **parts["prefill"]),
                          **{k: int(v) for k, v in parts[None].items()})
        return cls(profile, scale)

    @property
    def active(self) -> bool:
        return self.profile is not None

    @property
    def max_num_seqs(self) -> int:
        return self.profile.max_num_seqs if self.profile is not None else 256


class _Job:
    __slots__ = ("key", "prompt", "keep", "ideal", "left", "ctx", "pre", "fed", "blocks", "hit", "share",
                 "seq", "end", "base", "acc0", "done", "gone", "branch", "path_keep", "own")

    def __init__(self, key: str, prompt: int, keep: int, left: int, ideal: int, done: asyncio.Future,
                 branch: bool = False):
        self.key, self.prompt, self.keep, self.left, self.ideal, self.done = key, prompt, keep, left, ideal, done
        self.branch = branch  # a probe: when it ends, the path's own cached prefix is what stays cached
        self.path_keep = keep  # a probe: the path's tokens it shares
        self.own = 0  # a probe: the path's cached tokens when it was first admitted
        self.ctx = prompt  # context tokens, prompt and what it generated so far
        self.pre = 0  # uncached prompt tokens still to prefill
        self.fed = 0  # tokens whose KV is computed
        self.blocks = 0  # blocks held while prefilling (decoding jobs are counted by residue)
        self.hit: int | None = None  # cached tokens at first admission (what the result reports)
        self.share = 0.0  # its share of step time (each step's time split among its requests)
        self.seq = 0
        self.end = 0  # decoding: the step count at which it ends
        self.base = 0  # decoding: ctx - step count
        self.acc0 = 0.0
        self.gone = False  # decoding entry no longer valid (finished or preempted)


FIGURES = ("busy_s", "occupied", "evictions", "evicted_tokens", "recomputed_tokens", "preemptions",
           "batch_full_s", "kv_wait_s", "prefill_tokens", "steps")


class Engine:
    """One replica's engine (see the module docstring). `run()` serves a request; `figures()`
    are its counters; `forget()` marks a finished path's cached blocks as never to be reused."""

    def __init__(self, model: LatencyModel):
        p = model.profile
        self.p, self.scale = p, model.time_scale * p.replay_factor
        self.B = max(int(p.block_size), 1)
        self.cap = max(int(p.kv_capacity_tokens) // self.B, 1)
        self.max_seqs = max(int(p.max_num_seqs), 1)
        self.chunk = max(int(p.prefill.chunk_tokens), 1)
        self.waiting: deque[_Job] = deque()
        self.running: dict[int, _Job] = {}  # by admission order
        self.filling: list[_Job] = []  # running, prefill not done (admission order)
        self.heap: list[tuple[int, int, _Job]] = []  # decoding jobs by the step they end
        self.n_dec = 0
        self.sum_base = 0  # decoding job j has base_j + S tokens computed (its context less one)
        self.residue = [0] * self.B  # decoding jobs by base mod B
        self.held_pre = 0  # blocks of the jobs still prefilling
        self.cache: OrderedDict[str, int] = OrderedDict()  # cached tokens of paths not running, LRU first
        self.cached = 0  # blocks in `cache`
        self.dead: set[str] = set()  # finished paths: their blocks wait for eviction, never reused
        self.S = 0  # decode steps so far
        self.acc = 0.0  # a decoding job's share of step time so far
        self.fresh_hits = 0  # cached tokens of the jobs admitted for the next step
        self.seq = 0
        self.t = 0.0  # the engine's clock: the loop time of the last step boundary
        self.wake: asyncio.Future | None = None  # resolved by an arrival while the loop may take one
        self.task: asyncio.Task | None = None
        self.f = dict.fromkeys(FIGURES, 0.0)
        self.by_point: dict[str, list[float]] = {}  # sweep point -> [evictions, recomputed tokens]
        self.peak_blocks = 0
        self._ver = 0  # bumped whenever the set of decoding jobs changes
        self._memo_ver = -1
        self._memo: dict[int, int] = {}  # decoding jobs' blocks by step count, for this _ver
        self.overflow = 0  # steps run with the KV cache overfull (one request larger than it)
        self.blocked: str | None = None  # why the queue's head waits: "batch_full_s" or "kv_wait_s"

    # -- requests --------------------------------------------------------------------------------
    async def run(self, key: str, prompt: int, keep: int, new: int, ideal: int,
                  branch: bool = False) -> tuple[int, float]:
        """Serve a request of `prompt` context tokens (its first `keep` as the path had them), that
        generates `new` tokens; `ideal` is what an unbounded cache would reuse. Returns (cached
        tokens at admission, its share of step time). A `branch` (a probe) reuses the path's
        cached prefix but leaves it cached as the path had it: its own tokens are not the path's."""
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.t = max(self.t, loop.time())
            self.task = asyncio.ensure_future(self._loop())
        job = _Job(key, prompt, keep, new, ideal, loop.create_future(), branch)
        self.waiting.append(job)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(True)
        await job.done
        return job.hit or 0, job.share

    def forget(self, key: str) -> None:
        if key in self.cache:
            self.dead.add(key)

    def figures(self) -> dict:
        out = dict(self.f)
        out["peak_kv_tokens"] = self.peak_blocks * self.B
        out["kv_capacity_tokens"] = self.cap * self.B if self.cap * self.B < UNBOUNDED_KV else None
        out["kv_overflow_steps"] = self.overflow
        return out

    def _point(self, key: str) -> list[float]:
        point = point_of(key)
        got = self.by_point.get(point)
        if got is None:
            got = self.by_point[point] = [0, 0]
        return got

    def reset_peak(self) -> None:
        self.peak_blocks = self._held(self.S)

    # -- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._settle()
            if not self.running:
                await self._arrival(loop, None)
                self.t = max(self.t, loop.time())
                continue
            if self.filling:
                await self._mixed_step(loop)
            else:
                await self._decode(loop)

    async def _arrival(self, loop, until: float | None) -> bool:
        """Wait for a request to arrive, until loop time `until` at most (None: no limit);
        whether one did."""
        self.wake = fut = loop.create_future()
        timer = loop.call_at(until, _resolve, fut) if until is not None else None
        try:
            return await fut
        finally:
            self.wake = None
            if timer is not None:
                timer.cancel()

    async def _until(self, loop, t: float) -> None:
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.t = t

    def _account(self, dt: float, steps: int) -> None:
        f = self.f
        f["busy_s"] += dt
        f["occupied"] += dt * len(self.running)
        f["steps"] += steps
        if self.blocked:
            f[self.blocked] += dt

    async def _mixed_step(self, loop) -> None:
        """One step that prefills (up to `chunk_tokens`) beside the decoding requests."""
        budget, fills, tokens = self.chunk, [], 0
        for j in self.filling:
            if budget <= 0:
                break
            take = min(j.pre, budget)
            budget -= take
            tokens += take
            fills.append((j, take))
        n = self.n_dec
        ctx = self.sum_base + n * (self.S + 1)
        dt = self.scale * self.p.step_s(n, ctx, tokens, self.fresh_hits)
        self.fresh_hits = 0
        await self._until(loop, self.t + dt)
        self._account(dt, 1)
        self.f["prefill_tokens"] += tokens
        each = dt / (n + len(fills))
        self.acc += each
        self.S += 1  # the decoding requests gain a token each
        for j, take in fills:
            j.share += each
            j.pre -= take
            j.fed += take
            if not j.pre:
                self.filling.remove(j)
                self.held_pre -= j.blocks
                if j.left > 0:  # the step that ends a prefill samples the first token
                    j.left -= 1
                    j.ctx += 1
                self._start_decoding(j)

    async def _decode(self, loop) -> None:
        """Decode steps until the next event: a request ends, the cache fills, or an arrival
        that can join the batch (at the end of the step it arrives in)."""
        while self.heap and self.heap[0][2].gone:
            heapq.heappop(self.heap)
        n = self.n_dec
        k_max = self.heap[0][0] - self.S
        if n > 1 and self._held_bound(self.S + k_max) > self.cap:
            k_max = max(self._kv_horizon(k_max), 1)
        d = self.p.decode
        a = self.scale * (d.step_base_s + d.step_per_seq_s * n
                          + d.step_per_context_token_s * (self.sum_base + n * (self.S + 1)))
        b = self.scale * d.step_per_context_token_s * n  # contexts grow by n tokens a step

        def span(k: int) -> float:
            return k * a + b * k * (k - 1) / 2

        t0 = self.t
        end = t0 + span(k_max)
        k = k_max
        if not self.waiting and len(self.running) < self.max_seqs and end > loop.time():
            if await self._arrival(loop, end):  # it joins at the end of the step under way
                k = min(k_max, _steps_covering(a, b, loop.time() - t0))
        dt = span(k)
        await self._until(loop, t0 + dt)
        if k:
            self._account(dt, k)
            self.acc += dt / n
            self.S += k

    # -- boundaries ------------------------------------------------------------------------------
    def _settle(self) -> None:
        """At a step boundary: finished requests leave, the cache makes room (or the newest
        request is preempted), and waiting requests are admitted."""
        held = self._held(self.S)
        self.peak_blocks = max(self.peak_blocks, held)
        # what the running requests grew into since the last boundary, before any of them ends
        # (no path was touched meanwhile, so this evicts what step-by-step eviction would)
        self._evict(held)
        while self.heap and (self.heap[0][2].gone or self.heap[0][0] <= self.S):
            _, _, j = heapq.heappop(self.heap)
            if not j.gone:
                self._stop_decoding(j)
                self._finish(j)
        for j in [j for j in self.filling if not j.pre]:  # nothing to generate (never, in practice)
            self.filling.remove(j)
            self.held_pre -= j.blocks
            self._finish(j)
        self._evict(self._held(self.S + 1))
        while len(self.running) > 1 and self._held(self.S + 1) > self.cap:
            self._preempt()
        if self._held(self.S + 1) > self.cap:
            self.overflow += 1
        self._admit()

    def _admit(self) -> None:
        self.blocked = None
        while self.waiting:
            if len(self.running) >= self.max_seqs:
                self.blocked = "batch_full_s"
                return
            j = self.waiting[0]
            need = -(-j.prompt // self.B)
            if self.running and self._held(self.S + 1) + need > self.cap:
                self.blocked = "kv_wait_s"  # cached blocks can all be evicted, running ones cannot
                return
            self.waiting.popleft()
            own = self.cache.pop(j.key, None)
            hit = usable = 0
            if own is not None:
                self.cached -= own // self.B
                if j.key not in self.dead:
                    usable = own
                    hit = max(min(own, j.keep, j.prompt - 1), 0)
                    hit -= hit % self.B
                self.dead.discard(j.key)
            if j.hit is None:
                j.hit = hit
                j.own = usable
            if j.ideal > hit:
                self.f["recomputed_tokens"] += j.ideal - hit
                self._point(j.key)[1] += j.ideal - hit
            self.fresh_hits += hit
            j.fed, j.pre, j.blocks = hit, j.prompt - hit, need
            self.held_pre += need
            self.seq += 1
            j.seq = self.seq
            self.running[j.seq] = j
            self.filling.append(j)
            self._evict(self._held(self.S + 1))

    def _start_decoding(self, j: _Job) -> None:
        j.base = j.fed - self.S
        j.end = self.S + j.left
        j.acc0 = self.acc
        j.gone = False
        self._ver += 1
        self.n_dec += 1
        self.sum_base += j.base
        self.residue[j.base % self.B] += 1
        heapq.heappush(self.heap, (j.end, j.seq, j))

    def _stop_decoding(self, j: _Job) -> None:
        """Take a decoding job out of the lazy sums; its context and share brought up to date."""
        j.gone = True
        j.fed = j.base + self.S
        j.ctx = j.fed + 1
        j.left = j.end - self.S
        j.share += self.acc - j.acc0
        self._ver += 1
        self.n_dec -= 1
        self.sum_base -= j.base
        self.residue[j.base % self.B] -= 1

    def _finish(self, j: _Job) -> None:
        """A request ends: its full blocks stay cached under its path, most recently used."""
        del self.running[j.seq]
        keep = max(j.own, min(j.fed, j.path_keep)) if j.branch else j.fed
        keep -= keep % self.B
        self.cache[j.key] = keep
        self.cached += keep // self.B
        if not j.done.done():
            j.done.set_result(None)

    def _preempt(self) -> None:
        """The most recently admitted request gives its blocks back (to the cache, as a path that
        stopped) and waits at the head of the queue; it is recomputed when admitted again."""
        j = self.running.pop(next(reversed(self.running)))
        if j in self.filling:
            self.filling.remove(j)
            self.held_pre -= j.blocks
        else:
            self._stop_decoding(j)
        self.f["preemptions"] += 1
        keep = j.fed - j.fed % self.B
        self.cache[j.key] = keep
        self.cached += keep // self.B
        j.prompt = j.keep = j.ctx
        j.ideal = keep
        self.waiting.appendleft(j)
        self._evict(self._held(self.S + 1))

    def _evict(self, held: int) -> None:
        """Evict cached blocks, least recently used path first, from the tail, until `held`
        blocks of running requests and the cache fit."""
        over = held + self.cached - self.cap
        while over > 0 and self.cache:
            key, tokens = next(iter(self.cache.items()))
            blocks = tokens // self.B
            take = min(blocks, over)
            over -= take
            self.cached -= take
            if key not in self.dead:
                self.f["evictions"] += 1
                self.f["evicted_tokens"] += take * self.B
                self._point(key)[0] += 1
            if take == blocks:
                del self.cache[key]
                self.dead.discard(key)
            else:
                self.cache[key] = tokens - take * self.B

    # -- blocks ----------------------------------------------------------------------------------
    def _held(self, S: int) -> int:
        """Blocks the running requests hold at decode step S: sum of ceil(computed tokens / B)
        over the decoding ones (base + S computed), counted by residue, plus the prefilling ones'
        blocks (their whole prompt's). A decode step computes one more token per request, so
        `_held(S + 1)` is what the next step needs."""
        if self._memo_ver != self._ver:
            self._memo_ver, self._memo = self._ver, {}
        got = self._memo.get(S)
        if got is None:
            got = self._memo[S] = self._decoding_blocks(S)
        return got + self.held_pre

    def _decoding_blocks(self, S: int) -> int:
        B, n = self.B, self.n_dec
        if not n:
            return 0
        s = (S + B - 1) % B
        mods = sum(c * ((r + s) % B) for r, c in enumerate(self.residue) if c)
        return (self.sum_base + n * S + n * (B - 1) - mods) // B

    def _held_bound(self, S: int) -> int:
        return (self.sum_base + self.n_dec * S) // self.B + self.n_dec + self.held_pre

    def _kv_horizon(self, k_max: int) -> int:
        """The most decode steps (at most k_max) after which the running requests still fit."""
        lo, hi = 0, k_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._held(self.S + mid) <= self.cap:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


def _steps_covering(a: float, b: float, elapsed: float) -> int:
    """The fewest steps whose time (k a + b k (k-1) / 2) reaches `elapsed`."""
    if elapsed <= 0:
        return 0
    if b <= 0:
        if a <= 0:
            return 0
        k = math.ceil(elapsed / a - 1e-9)
    else:
        # b/2 k^2 + (a - b/2) k - elapsed = 0
        h = a - b / 2
        k = math.ceil((-h + math.sqrt(h * h + 2 * b * elapsed)) / b - 1e-9)
    k = max(k, 1)
    while k > 1 and (k - 1) * a + b * (k - 1) * (k - 2) / 2 >= elapsed * (1 - 1e-12):
        k -= 1
    return k
