"""What asking vLLM for top-k logprobs costs: the same requests without and with them.

    python benchmarks/logprobs_cost.py [--model builtin:smollm2] [--sequences 16] [--tokens 128]
                                       [--top 20] [--repeat 3] [--json FILE]

One `VLLMReplica` (the orchestrator's own, so the cost includes the reduction of each token's
top-k to its confidence inside the replica, as DeepConf runs pay it) serves rounds of
`--sequences` concurrent requests of exactly `--tokens` new tokens each (EOS ignored), rounds
with `logprobs=0` and `logprobs=--top` taking turns after one warm-up round of each. Prints
tokens/s of each and their ratio, and the seconds spent in the reduction; `--json` writes them.
The CPU build runs here; on a GPU the same command measures the GPU's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

QUESTIONS = ["What is {a} + {b}?", "Is {a} times {b} even?", "Find {a} minus {b}, then double it.",
             "How many primes lie below {a}{b}?"]


async def measure(args) -> dict:
    from transformers import AutoTokenizer

    from orchestrator.core.types import GenRequest, SamplingSpec
    from orchestrator.engines import vllm_replica
    from orchestrator.models import resolve_model

    model = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model)
    engine = {"max_model_len": 2048, "enforce_eager": True, "kv_cache_space_gib": 1,
              "max_num_seqs": args.sequences, "cpus_per_replica": args.cpus}
    rep = vllm_replica.VLLMReplica(0, model, engine, seed=0)
    t0 = time.monotonic()
    await rep.start()
    start_s = time.monotonic() - t0

    reduced = [0.0]
    reduce = vllm_replica.token_confidences

    def timed(*a, **kw):  # the replica's reduction, timed
        t = time.perf_counter()
        try:
            return reduce(*a, **kw)
        finally:
            reduced[0] += time.perf_counter() - t

    vllm_replica.token_confidences = timed
    sampling = SamplingSpec()
    counter = [0]

    async def round_(top: int) -> float:
        reqs = []
        for i in range(args.sequences):
            counter[0] += 1
            q = QUESTIONS[i % len(QUESTIONS)].format(a=counter[0] % 97, b=i + 3)
            text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False)
            reqs.append(GenRequest(f"bench|q{counter[0]}/{i}", keep=len(ids), append=[], max_tokens=args.tokens,
                                   full=ids, sampling=sampling, ignore_eos=True, logprobs=top))
        t = time.perf_counter()
        results = await asyncio.gather(*(rep.generate(r) for r in reqs))
        wall = time.perf_counter() - t
        assert all(len(r.token_ids) == args.tokens for r in results)
        assert all((r.confidences is None) == (top == 0) for r in results)
        await rep.drop([r.path_key for r in results])
        return args.sequences * args.tokens / wall

    try:
        await round_(0)
        await round_(args.top)  # warm-up of each
        reduced[0] = 0.0
        rates: dict[int, list[float]] = {0: [], args.top: []}
        for _ in range(args.repeat):
            for top in (0, args.top):
                rates[top].append(await round_(top))
    finally:
        vllm_replica.token_confidences = reduce
        info = await rep.info()
        await rep.shutdown()
    plain, asked = statistics.median(rates[0]), statistics.median(rates[args.top])
    return {"model": args.model, "device": info.get("device"), "dtype": info.get("dtype"),
            "vllm": (info.get("versions") or {}).get("vllm"), "engine_start_s": round(start_s, 1),
            "sequences": args.sequences, "tokens": args.tokens, "top": args.top, "repeat": args.repeat,
            "tokens_per_s": {"logprobs_0": round(plain, 1), f"logprobs_{args.top}": round(asked, 1)},
            "rounds_tokens_per_s": {str(k): [round(x, 1) for x in v] for k, v in rates.items()},
            "ratio": round(asked / plain, 3),
            "reduction_s": round(reduced[0], 4),
            "reduction_us_per_token": round(1e6 * reduced[0] / (args.repeat * args.sequences * args.tokens), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2", help="builtin:tiny, builtin:smollm2 or a local path")
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--top", type=int, default=20, help="logprobs asked per token (vLLM allows 20 by default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=1, help="cores the CPU engine binds to")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    res = asyncio.run(measure(args))
    tps = res["tokens_per_s"]
    print(f"{args.model} ({res['device']}, {res['dtype']}, vLLM {res['vllm']}): {args.sequences} sequences x "
          f"{args.tokens} tokens, median of {args.repeat} rounds")
    print(f"  logprobs=0   {tps['logprobs_0']:>9.1f} tokens/s")
    print(f"  logprobs={args.top:<3} {tps[f'logprobs_{args.top}']:>9.1f} tokens/s")
    print(f"  ratio {res['ratio']:.3f} (with/without); reduction to confidences "
          f"{res['reduction_us_per_token']:.1f} us a token inside the replica")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    raise SystemExit(main())
