"""Prefix-cache reuse of a finished run, from its paths.parquet.

For every request after a path's first, "reusable" is the prefix the replica computed in earlier
requests and that the request kept (whole KV blocks only); "cached" is what the engine reported
as served from its prefix cache. Prints the ratio per request kind and overall.

    python benchmarks/cache_reuse.py OUTPUT_DIR [--block 32]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--block", type=int, default=32, help="the engine's KV block size")
    args = ap.parse_args()
    rows = pq.read_table(args.output_dir / "paths.parquet", columns=["requests"]).to_pylist()
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # n, reusable, cached, prompt
    worst = 1.0
    for row in rows:
        for req in row["requests"][1:]:
            whole = (min(req["reusable_tokens"], req["prompt_tokens"] - 1) // args.block) * args.block
            s = stats[req["kind"]]
            s[0] += 1
            s[1] += whole
            s[2] += min(req["cached_tokens"], whole)
            s[3] += req["prompt_tokens"]
            if whole:
                worst = min(worst, min(req["cached_tokens"], whole) / whole)
    print(f"{'kind':<10} {'requests':>8} {'reusable':>10} {'cached':>10} {'cached/reusable':>16} {'cached/prompt':>14}")
    total = [0, 0, 0, 0]
    for kind, s in sorted(stats.items()):
        total = [a + b for a, b in zip(total, s)]
        print(f"{kind:<10} {s[0]:>8} {s[1]:>10} {s[2]:>10} {s[2] / max(s[1], 1):>16.3f} {s[2] / max(s[3], 1):>14.3f}")
    print(f"{'all':<10} {total[0]:>8} {total[1]:>10} {total[2]:>10} {total[2] / max(total[1], 1):>16.3f} "
          f"{total[2] / max(total[3], 1):>14.3f}")
    print(f"worst single request: {worst:.3f} of its reusable prefix cached")


if __name__ == "__main__":
    main()
