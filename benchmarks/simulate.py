"""Simulate a LeaP run at cluster scale on one machine: fake replicas with a latency model.

Every replica is a real Ray actor and every request goes through the real coordinator; only the
model is replaced by the fake engine, which sleeps per request for
    uncached_prompt_tokens * prefill + new_tokens * (decode_base + decode_per_seq * batch)
scaled by --time-scale. Prints wall time (simulated seconds = wall / time-scale), throughput,
how spread out the groups' finishing times are, and the prefix-cache hit rate.

    python benchmarks/simulate.py --replicas 8 --problems 30 --paths 32 --T 4096 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--problems", type=int, default=30)
    ap.add_argument("--paths", type=int, default=32)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--groups-in-flight", type=int, default=30)
    # defaults: rough 7B-on-one-GPU numbers (decode step ~25 ms at batch 64), not calibrated here
    ap.add_argument("--prefill", type=float, default=5e-5, help="seconds per uncached prompt token")
    ap.add_argument("--decode-base", type=float, default=0.02, help="seconds per decode step")
    ap.add_argument("--decode-per-seq", type=float, default=8e-5, help="extra step seconds per sequence in flight")
    ap.add_argument("--time-scale", type=float, default=0.002, help="wall seconds per simulated second")
    args = ap.parse_args()

    import ray

    from orchestrator.config import Config, DatasetConfig, EngineConfig, LeapConfig, ReplicasConfig
    from orchestrator.driver.runner import run

    out = Path(tempfile.mkdtemp(prefix="leap-sim-"))
    cfg = Config(
        engine=EngineConfig(kind="fake", max_model_len=10**6, latency={
            "prefill_s_per_token": args.prefill, "decode_base_s": args.decode_base,
            "decode_per_seq_s": args.decode_per_seq, "time_scale": args.time_scale}),
        dataset=DatasetConfig(name="synthetic"),
        leap=LeapConfig(paths=args.paths, T=args.T, max_rounds=args.rounds, top_k=args.top_k),
        replicas=ReplicasConfig(count=args.replicas, gpus_per_replica=0, cpus_per_replica=0.25,
                                max_groups_in_flight=args.groups_in_flight),
        output_dir=str(out), progress=False, plots=False,
    )
    # more problems than the synthetic set has: repeat it under new ids via a local file
    from orchestrator.driver.data import load_problems

    base = load_problems("synthetic")
    rows = [{"id": f"sim-{i}", "problem": base[i % len(base)].question, "answer": base[i % len(base)].gold}
            for i in range(args.problems)]
    data = out / "problems.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg.dataset.path = str(data)
    ray.init(num_cpus=max(4, args.replicas + 2), include_dashboard=False, namespace="orchestrator",
             log_to_driver=False)
    t0 = time.monotonic()
    summary = run(cfg)
    wall = time.monotonic() - t0
    ray.shutdown()
    finish = sorted(p.stat().st_mtime for p in (out / "parts").glob("*/*.parquet"))
    paths = pq.read_table(out / "paths.parquet", columns=["sampled_tokens", "injected_tokens"]).to_pylist()
    sampled = sum(p["sampled_tokens"] for p in paths)
    metrics = summary["default"]["synthetic"]
    gen = json.loads((out / "run_info.json").read_text())["generation_s"]
    sim = gen / args.time_scale
    print(f"replicas={args.replicas} problems={args.problems} paths={args.paths} T={args.T} rounds={args.rounds}")
    print(f"wall {wall:.1f} s in all; generation {gen:.1f} s = {sim / 60:.1f} simulated minutes")
    print(f"sampled tokens {sampled:,}  ->  {sampled / sim:,.0f} simulated tok/s, "
          f"{sampled / sim / args.replicas:,.0f} per replica")
    if finish:
        spread = [(t - finish[0]) / args.time_scale for t in finish]
        print(f"groups finished over {spread[-1] / 60:.1f} simulated minutes "
              f"(first to last; median at {spread[len(spread) // 2] / 60:.1f})")
    print(f"prefix-cache hit rate {metrics['prefix_cache_hit_rate']}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
