"""Calibration's replay: a short LeaP-shaped workload on the started engines, and the factor
by which the real engines' time exceeds what the fitted step model gives the same requests
(`Profile.replay_factor`).

The step model (`engines/profile.py`) is fitted to clean batches: every sequence alike, no stop
strings, nothing else running. A run differs: requests come and go one path at a time, each
appends a block and goes on from its cached prefix, the front-end checks stop strings on every
token, and on a CPU machine the other replicas' front-ends, the coordinator and the driver use
the same cores as the engines. The replay does what a run's engines see (on every co-located
replica at once) and times it; the same requests through the simulator (`engines/batching.py`)
on a virtual clock give the model's time; their ratio scales every simulated step.

Runs in the driver's process (`python -m orchestrator.calibrate`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

from aiotools import VirtualClock

from ..core.types import GenRequest
from ..engines.batching import Engine, LatencyModel
from ..engines.profile import Profile

# The replay's requests are shaped like a run's on this machine's workloads (per request, from
# run_info.json's replica_stats: W2 719 prompt tokens, 103 of them uncached, 92 new; the demo
# 508, 91 and 66): contexts of hundreds of tokens and a block of about a hundred new prompt
# tokens before each request. A replay of short contexts (96-token prompts, 32-token blocks, 1.5
# paths a slot) gave the demo's bf16 engines 0.80-0.91 of the step model where the demo's runs
# took 0.95-1.26 of it (its real lengths planned), and one shaped like the demo's requests
# (300-token prompts, 120-token blocks, 4 requests, 12 paths) 1.07-1.08. This one is as near
# that as the 3-minute budget allows on a CPU, where prefill is slow.
REPLAY_PROMPT = 128  # unique prompt tokens a replay path starts from
REPLAY_APPEND = 64  # tokens appended before each later request (a peer block)
REPLAY_ROUNDS = 3  # requests per replay path (4 took W2's calibration to 177 s of its 180)
REPLAY_PATHS = 1.0  # replay paths per batch slot (W2 keeps 2 a slot, the demo 0.75)
# of the measuring budget: the replay sets the level of every plan and a single one varies by
# 5-15% here, so it gets about as long as the decode points together
REPLAY_SHARE = 0.45
# A run's engines spend most of their time decoding full batches (W2 here: about two thirds by
# the step model, the rest prefilling appended blocks), so the replay's tokens are sized for
# decode to take at least this share of its modelled time; with less, the factor measures the
# prefill and request overheads and misses the decode steps' error.
REPLAY_DECODE_SHARE = 0.6
MIN_NEW, MAX_NEW = 16, 128  # new tokens per replay request (their mean: see REPLAY_SPREAD)
# A run's requests end at different steps (stop strings, EOS, summaries of different lengths), so
# its appended blocks are prefilled a request or two at a time beside a decoding batch; requests
# that all end together would prefill theirs in one large chunk, which costs a CPU less per token.
# Each replay request generates new x (1 - SPREAD ... 1 + SPREAD), a different share for each path
# and round, the mean `new`.
REPLAY_SPREAD = 0.5


async def replay(bench, max_seqs: int, stops: list[str], new: int) -> dict:
    """A LeaP-shaped workload on every replica at once, timed on each: REPLAY_PATHS x
    `max_seqs` paths, each REPLAY_ROUNDS requests that generate `new` tokens with the run's stop
    strings (EOS held back by min_tokens), a REPLAY_APPEND-token block appended to the path
    before each later request, which goes on from the path's cached prefix, as a run's
    requests do. Returns the replicas' mean seconds (and each one's) and every path's
    (prompt, kept, new) requests."""
    paths = max(int(math.ceil(REPLAY_PATHS * max_seqs)), 2)
    sizes = spread(new, paths)
    prompts = [bench.tokens(REPLAY_PROMPT) for _ in range(paths)]
    appends = [[bench.tokens(REPLAY_APPEND) for _ in range(REPLAY_ROUNDS)] for _ in range(paths)]
    run = next(bench._ids)

    async def path(rep, i: int, j: int, shape: list) -> None:
        key, kept = f"replay-{run}-{i}-{j}", 0
        for r in range(REPLAY_ROUNDS):
            append = prompts[j] if r == 0 else appends[j][r]
            n = sizes[j][r]
            res = await rep.generate(GenRequest(
                path_key=key, keep=kept, append=append, max_tokens=n, min_tokens=n, stop=stops,
                sampling=bench.sampling, full=[] if r == 0 else None, kind="segment"))
            shape.append((kept + len(append), kept, len(res.token_ids)))
            kept += len(append) + len(res.token_ids)
        await rep.drop([key])

    async def replica(i: int, rep) -> tuple[float, list]:
        shapes: list[list] = [[] for _ in range(paths)]
        t0 = time.perf_counter()
        await asyncio.gather(*(path(rep, i, j, shapes[j]) for j in range(paths)))
        return time.perf_counter() - t0, shapes

    timed = await asyncio.gather(*(replica(i, r) for i, r in enumerate(bench.reps)))
    each = [t for t, _ in timed]  # the co-located replicas ran the same requests at once
    return {"seconds": sum(each) / len(each), "each_s": each, "paths": paths, "new_tokens": new,
            "shapes": timed[0][1]}


def spread(new: int, paths: int) -> list[list[int]]:
    """New tokens of each replay path's requests: `new` x (1 - REPLAY_SPREAD ... 1 + REPLAY_SPREAD),
    evenly over the paths, each round's order shifted so that a path is not always the longest."""
    shift = max(paths // REPLAY_ROUNDS, 1)
    out = []
    for j in range(paths):
        row = []
        for r in range(REPLAY_ROUNDS):
            u = ((j + r * shift) % paths) / max(paths - 1, 1)
            row.append(max(int(round(new * (1 - REPLAY_SPREAD + 2 * REPLAY_SPREAD * u))), 1))
        out.append(row)
    return out


def replay_s(profile: Profile, shapes: list[list[tuple[int, int, int]]]) -> float:
    """The seconds `profile` (its step model, without `replay_factor`) gives the replay: the
    same requests through the simulator (`engines/batching.py`) on a virtual clock."""
    model = LatencyModel(replace(profile, replay_factor=1.0))

    async def path(engine: Engine, j: int, reqs: list) -> None:
        for prompt, kept, new in reqs:
            await engine.run(f"replay-{j}", prompt, kept, new, kept)

    async def main() -> float:
        with VirtualClock().patch_loop():
            engine, loop = Engine(model), asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(*(path(engine, j, reqs) for j, reqs in enumerate(shapes)))
            return loop.time() - t0

    return asyncio.run(main())


def replay_tokens(profile: Profile, max_seqs: int, budget_s: float) -> int:
    """New tokens per replay request so that the replay takes about `budget_s` by the fitted
    step model, and at least enough for decode to take REPLAY_DECODE_SHARE of it (MIN_NEW to
    MAX_NEW: the budget gives way to the share)."""
    paths = max(int(math.ceil(REPLAY_PATHS * max_seqs)), 2)
    step = profile.step_s(max_seqs, max_seqs * (REPLAY_PROMPT + REPLAY_ROUNDS * REPLAY_APPEND))
    prefill = paths * (REPLAY_PROMPT + (REPLAY_ROUNDS - 1) * REPLAY_APPEND) * profile.prefill.s_per_token
    per_token = max(paths * REPLAY_ROUNDS / max_seqs * step, 1e-9)
    by_budget = (budget_s - prefill) / per_token
    by_share = REPLAY_DECODE_SHARE / (1 - REPLAY_DECODE_SHARE) * prefill / per_token
    return int(min(MAX_NEW, max(MIN_NEW, by_budget, by_share)))


def with_replay(prof: Profile, replayed: dict, predicted_s: float, at_once: int) -> Profile:
    """`prof` with the replay's factor: its measured seconds over what the step model gives it."""
    factor = replayed["seconds"] / max(predicted_s, 1e-9)
    requests = sum(len(s) for s in replayed["shapes"])
    new = sum(n for s in replayed["shapes"] for _, _, n in s)
    where = f"on each of {at_once} replicas at once" if at_once > 1 else "on the replica"
    text = (f"; a LeaP-shaped replay ({replayed['paths']} paths x {REPLAY_ROUNDS} requests {where}, "
            f"{REPLAY_APPEND} tokens appended before each later request, {replayed.get('new_tokens', '?')} new tokens "
            f"a request on average, {1 - REPLAY_SPREAD:.1f}-{1 + REPLAY_SPREAD:.1f}x that, the run's stop strings): "
            f"{replayed['seconds']:.1f} s measured{' (their mean)' if at_once > 1 else ''}, "
            f"{predicted_s:.1f} s by the step model -> replay_factor {factor:.3f}")
    record = {"seconds": round(replayed["seconds"], 3), "predicted_s": round(predicted_s, 3),
              "each_s": [round(t, 3) for t in replayed.get("each_s", [replayed["seconds"]])],
              "paths": replayed["paths"], "requests": requests, "new_tokens": new, "at_once": at_once}
    return replace(prof, replay_factor=round(factor, 4), fitted_from=prof.fitted_from + text,
                   measurements={**prof.measurements, "replay": record})
