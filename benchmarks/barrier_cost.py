"""Coordinator work per barrier, with a real tokenizer: 32 paths, summaries of ~256 tokens, top-4.

    python benchmarks/barrier_cost.py [--model builtin:smollm2] [--paths 32] [--repeat 20]

Drives one group's state machine by hand up to its first barrier and times, in the coordinator's
own code: the work each arriving summary costs (`on_result` of a summary: repair, extraction,
encoding the summary, its similarity row) and the release itself (`on_result` of the last
summary: routing and building every path's peer block). Prints medians and p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--paths", type=int, default=32)
    ap.add_argument("--summary-words", type=int, default=240, help="about 256 tokens with SmolLM2's tokenizer")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--router", default="dispersed")
    args = ap.parse_args(argv)
    if args.paths < 2:
        ap.error("--paths must be at least 2: a barrier of one path has no peers to route")

    from orchestrator.config import CONF_DIR
    from orchestrator.core.group import Group
    from orchestrator.core.params import LeapParams
    from orchestrator.core.prompts import load_prompts
    from orchestrator.core.types import GenResult, Problem
    from orchestrator.engines.tokenizer import load_tokenizer, render_prompt
    from orchestrator.models import resolve_model

    tok = load_tokenizer(resolve_model(args.model))  # what the coordinator loads
    prompts = load_prompts(CONF_DIR / "prompts" / "default.yaml")
    problem = Problem("p", "bench", "Find the sum of all integer bases b > 9 for which 17_b divides 97_b.", "70")
    params = LeapParams(paths=args.paths, T=64, max_rounds=2, top_k=4, router=args.router, summary_tokens=400)
    words = ("the base b must satisfy divisibility so we write nine b plus seven over b plus seven and "
             "reduce which leaves fifty six over b plus seven hence b plus seven divides fifty six").split()
    arrive, release, total, lengths = [], [], [], []
    for rep in range(args.repeat):
        rng = random.Random(rep)
        g = Group("bench|p", problem, render_prompt(tok, prompts, problem, params), params, prompts, tok)
        for req in g.requests():  # segments
            text = " ".join(rng.choice(words) for _ in range(40)) + ".\n\nNext"
            g.on_result(GenResult(req.path_key, tok.encode(text), text, "length"))
        reqs = g.requests()  # summaries
        spent = 0.0
        for n, req in enumerate(reqs):
            body = " ".join(rng.choice(words) for _ in range(args.summary_words)) + " </summarize>"
            ids = tok.encode(body)
            lengths.append(len(ids))
            res = GenResult(req.path_key, ids, body, "stop", stop_str="</summarize>")
            t0 = time.perf_counter()
            g.on_result(res)
            dt = (time.perf_counter() - t0) * 1e3
            (release if n == len(reqs) - 1 else arrive).append(dt)
            spent += dt
        assert g.barriers_released == 1
        total.append(spent)
    q = lambda xs, f: sorted(xs)[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    print(f"{args.paths} paths, summaries of {statistics.mean(lengths):.0f} tokens on average, "
          f"{args.router} top-4, tokenizer {type(tok.hf).__name__} ({args.model})")
    print(f"per arriving summary: median {statistics.median(arrive):.2f} ms, p95 {q(arrive, 0.95):.2f} ms")
    print(f"barrier release:      median {statistics.median(release):.2f} ms, p95 {q(release, 0.95):.2f} ms"
          "  (the last summary's own arrival work, routing, every path's peer block)")
    print(f"whole barrier ({args.paths} summaries arriving, the last one releasing; CPU): median {statistics.median(total):.1f} ms, "
          f"max {max(total):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
