"""What running the engines inside Ray's replica actors costs: the same requests on the same
engines, once started in this process (as calibration did before 2026-12-03) and once as a run
starts them (Ray, the run's placement, replica actors, a Ray call per request; as calibration
does now). Prints each workload's seconds in both ways and the difference; `--json` writes them.

    python benchmarks/actor_cost.py                               # W2's engines: SmolLM2 float32, 2 x 1 core
    python benchmarks/actor_cost.py --reps 3 --json actor_cost.json
    python benchmarks/actor_cost.py -- +experiment=demo           # other overrides (after --)

Workloads, each on every replica at once, as calibration runs them:
  batch16   16 sequences, 64-token random prompts, exactly 200 new tokens each (timed on replica 0)
  batch24   24 sequences (more than a batch: a queue), the same
  replay    calibration's LeaP-shaped replay (`orchestrator/driver/replay.py`), 64 new tokens a
            request (the replicas' mean time)

Measured 2026-12-03 here (2 cores; means of 4-6 runs a way), with the replay of that morning
(96-token prompts, 1.5 paths a slot, timed on replica 0): through the actors +8.5%, +9.3% and
+11.8%; one later round of this script gave +0.2%, +14.1% and +6.2%. Single runs vary by up to
10%, so take several (`--reps`) on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.config import compose, sampling_spec, validate  # noqa: E402
from orchestrator.core.prompts import SUMMARY_CLOSE, THINK_END  # noqa: E402
from orchestrator.driver.calibration import _Bench, _Remote, _tokenizer_size, checkpoint_config  # noqa: E402
from orchestrator.driver.replay import replay  # noqa: E402
from orchestrator.driver.replicas import engine_options, model_path  # noqa: E402

W2 = ["+experiment=demo", "model=smollm2", "engine=cpu", "engine.dtype=float32", "replicas.count=2",
      "replicas.gpus_per_replica=0", "replicas.cpus_per_replica=1"]


async def workloads(reps: list, cfg, model: str, rounds: int) -> dict[str, list[float]]:
    vocab = _tokenizer_size(model, int((checkpoint_config(model) or {}).get("vocab_size") or 1000))
    bench = _Bench(reps, sampling_spec(cfg), vocab, cfg.leap.seed)
    await bench.run([bench.tokens(16)], 4)  # warm-up
    out: dict[str, list[float]] = {"batch16": [], "batch24": [], "replay": []}
    for _ in range(rounds):
        for name, n in (("batch16", 16), ("batch24", 24)):
            out[name].append(round((await bench.run([bench.tokens(64) for _ in range(n)], 200))[0], 2))
        done = await replay(bench, 16, [THINK_END, SUMMARY_CLOSE], 64)
        out["replay"].append(round(done["seconds"], 2))
    return out


async def in_process(cfg, model: str, rounds: int, log_file: str) -> dict:
    from orchestrator.engines.vllm_replica import VLLMReplica

    opts = dict(engine_options(cfg), log_file=log_file)
    reps = [VLLMReplica(i, model, opts, cfg.leap.seed + i) for i in range(cfg.replicas.count)]
    try:
        for rep in reps:  # one after the other: each reads its core binding from this process's env
            await rep.start()
        return await workloads(reps, cfg, model, rounds)
    finally:
        for rep in reversed(reps):
            await rep.shutdown()


def through_actors(cfg, model: str, rounds: int, log_file: str) -> dict:
    from orchestrator.driver.cluster import Cluster

    cluster = Cluster.start(cfg)
    try:
        cluster.create_replicas(model, log_file=log_file)
        cluster.await_replicas()
        return asyncio.run(workloads([_Remote(h) for h in cluster.replicas], cfg, model, rounds))
    finally:
        cluster.teardown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1, help="rounds of the three workloads in each way")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--logs", default="/tmp/actor_cost", help="directory for the engines' logs")
    ap.add_argument("overrides", nargs="*", help=f"the run's overrides (default: {' '.join(W2)})")
    args = ap.parse_args()
    cfg = compose(args.overrides or W2)
    validate(cfg)
    model = model_path(cfg)
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    inproc = asyncio.run(in_process(cfg, model, args.reps, f"{args.logs}/in-process.log"))
    actors = through_actors(cfg, model, args.reps, f"{args.logs}/actor-{{index}}.log")
    print(f"{'workload':<10} {'in-process s':>14} {'actors s':>10} {'difference':>11}")
    rows = {}
    for name in inproc:
        a, b = sum(inproc[name]) / len(inproc[name]), sum(actors[name]) / len(actors[name])
        rows[name] = {"in_process_s": inproc[name], "actors_s": actors[name], "difference_pct": round(100 * (b / a - 1), 1)}
        print(f"{name:<10} {a:>14.2f} {b:>10.2f} {100 * (b / a - 1):>+10.1f}%")
    print(f"({args.reps} round(s) a way, {time.monotonic() - t0:.0f} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": args.overrides or W2, "workloads": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
