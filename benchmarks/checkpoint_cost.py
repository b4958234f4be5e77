"""What a checkpoint costs at one barrier: bytes, and milliseconds to snapshot, to write (temp
file + fsync + rename) and to read back and restore.

The group is shaped like the paper's setting at its last barrier: 32 paths of 16K tokens each
(token ids drawn from a 152K vocabulary), three rounds of 256-token summaries, four peer messages
per path per round, and every request's record.

    python benchmarks/checkpoint_cost.py [--paths 32] [--tokens 16384] [--repeat 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.driver.checkpoint import CheckpointStore
from orchestrator.core.group import Group
from orchestrator.core.params import LeapParams
from orchestrator.core.paths import TokenIds
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem
from orchestrator.config import prompt_file
from orchestrator.engines.tokenizer import FakeTokenizer

VOCAB = 152_064
PROMPT = 200
SUMMARY = "I set up the equations, checked the two cases and my current answer is 42. " * 14  # ~1K chars


def build(paths: int, tokens: int, rounds: int = 3, top_k: int = 4, seed: int = 0) -> Group:
    rng = random.Random(seed)
    tok = FakeTokenizer()
    params = LeapParams(paths=paths, T=tokens // (rounds + 1), max_rounds=rounds + 1, top_k=top_k)
    prompt = [rng.randrange(VOCAB) for _ in range(PROMPT)]
    problem = Problem(id="bench", benchmark="bench", question="?", gold="42")
    group = Group("pt|bench", problem, prompt, params, load_prompts(prompt_file("default")), tok, sweep_point="pt")
    step = (tokens - PROMPT) // rounds
    for p in group.paths:
        p.tokens = TokenIds(prompt + [rng.randrange(VOCAB) for _ in range(tokens - PROMPT)])
        for r in range(rounds):
            start = PROMPT + r * step
            p.spans += [("segment", start, start + step - 400), ("summary_prompt", start + step - 400, start + step - 380),
                        ("summary", start + step - 380, start + step - 124), ("comment", start + step - 124, start + step)]
            p.summaries.append(SUMMARY)
            for kind in ("segment", "summary"):
                p.requests.append({"round": r + 1, "kind": kind, "prompt_tokens": start, "cached_tokens": start - 16,
                                   "reusable_tokens": start - 16, "new_tokens": step // 2, "replica": 0})
        p.round, p.phase = rounds + 1, "segment"
    for r in range(rounds):
        for q in range(paths):
            for rank in range(top_k):
                group.messages.append({"sweep_point": "pt", "benchmark": "bench", "problem_id": "bench", "round": r + 1,
                                       "recipient": q, "sender": (q + rank + 1) % paths, "rank": rank + 1,
                                       "similarity": 0.5, "summary": SUMMARY})
    group.barriers_released = rounds
    return group


def measure(paths: int, tokens: int, repeat: int, folder: Path) -> dict:
    group = build(paths, tokens)
    store = CheckpointStore(folder)
    snap, write, load = [], [], []
    blob = b""
    for _ in range(repeat):
        t0 = time.perf_counter()
        blob = group.snapshot()
        t1 = time.perf_counter()
        store.write("pt", "bench", blob)
        t2 = time.perf_counter()
        back = store.load_all()[("pt", "bench")]
        Group.restore(back, group.problem, group.paths[0].tokens[:PROMPT].tolist(), group.params, group.prompts,
                      group.tok, sweep_point="pt")
        t3 = time.perf_counter()
        snap.append((t1 - t0) * 1e3)
        write.append((t2 - t1) * 1e3)
        load.append((t3 - t2) * 1e3)
    token_bytes = 4 * sum(len(p.tokens) for p in group.paths)
    return {"paths": paths, "tokens_per_path": tokens, "bytes": len(blob), "token_bytes": token_bytes,
            "snapshot_ms": statistics.median(snap), "write_ms": statistics.median(write),
            "restore_ms": statistics.median(load)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir; use the run's disk)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        m = measure(args.paths, args.tokens, args.repeat, Path(tmp))
    print(f"checkpoint of {m['paths']} paths x {m['tokens_per_path']} tokens (one barrier, median of {args.repeat}):")
    print(f"  size     {m['bytes'] / 2**20:.2f} MiB ({m['bytes']:,} bytes; token ids {m['token_bytes']:,}, "
          f"everything else {m['bytes'] - m['token_bytes']:,})")
    print(f"  snapshot {m['snapshot_ms']:.1f} ms  (coordinator: Group.snapshot)")
    print(f"  write    {m['write_ms']:.1f} ms  (driver: temp file + fsync + rename)")
    print(f"  restore  {m['restore_ms']:.1f} ms  (read + Group.restore, on a rerun or a coordinator restart)")


if __name__ == "__main__":
    main()
