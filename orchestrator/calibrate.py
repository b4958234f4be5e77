"""`python -m orchestrator.calibrate [OVERRIDES ...] [--out PROFILE] [--budget-s SECONDS]`

Measures the engine a run with these Hydra overrides would start (its replica 0, started as the
run starts it: Ray and the replica actors, with the run's other replicas beside it where they
share this machine's cores) and writes its profile: decode step time against batch size and
context, prefill throughput (cached and uncached), the KV cache's capacity in tokens, the
start-up phases (see `orchestrator.driver.calibration`). The config is composed exactly as
`python -m orchestrator OVERRIDES` composes it, and checked the same way before any engine
starts: a bad override ends as one paragraph naming the key, exit status 2.

The profile goes to the profile cache (`$LEAP_PROFILE_DIR`, else
`~/.cache/leap-orchestrator/profiles/`), where `python -m orchestrator.plan` and the run look it up
by its key, and also to `--out` when given. The engine's own output goes to PROFILE.log (or the
cache file's .log). `--budget-s` bounds the whole calibration, engine start included (default
150 s): the measuring gets what the start leaves, at least half the budget (a start slowed by
a busy machine makes the calibration run past its budget rather than measure too little).

    python -m orchestrator.calibrate engine=cpu model=smollm2 --out smollm2-cpu.json
    python -m orchestrator.calibrate model.path=random:qwen2.5-1.5b --out h100.json   # on a GPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .config import Config, compose, validate
from .driver.calibration import DEFAULT_BUDGET_S, calibrate, check_calibratable, colocated, engine_logs
from .driver.replicas import model_path
from .engines.profile import Profile, cache_path
from .errors import report


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m orchestrator.calibrate",
        description="Measure the configured engine (the run's replica 0, as a Ray actor) and write its profile.")
    ap.add_argument("overrides", nargs="*", help="the run's Hydra overrides, e.g. engine=cpu model=smollm2")
    ap.add_argument("--out", help="also write the profile here (it always goes to the profile cache)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help=f"seconds for the whole calibration, engine start included (default "
                         f"{DEFAULT_BUDGET_S:.0f}); measuring gets what the start leaves")
    args = ap.parse_args(argv)
    if not args.budget_s > 0:
        ap.error(f"--budget-s {args.budget_s}: must be > 0")
    return args


def load_config(overrides: list[str]) -> Config:
    """The run's config, checked as the run checks it; only a real engine can be calibrated."""
    cfg = compose(overrides)
    validate(cfg)
    check_calibratable(cfg)
    return cfg


def summary(prof: Profile, paths: list[Path]) -> str:
    d, p = prof.decode, prof.prefill
    residuals = [abs(x["residual"]) for x in prof.measurements.get("decode", []) if not x.get("dropped")]
    lines = [
        f"profile of {prof.key['model']} ({prof.key['dtype']}) on {prof.key['device']}, {prof.key['engine']}",
        f"  decode step   {d.step_base_s * 1e3:.3f} ms + {d.step_per_seq_s * 1e3:.4f} ms/sequence "
        f"+ {d.step_per_context_token_s * 1e6:.5f} us/context token"
        + (f"  (fit: worst residual {max(residuals):.1%} over {len(residuals)} points)" if residuals else ""),
        f"  prefill       {p.s_per_token * 1e6:.1f} us/token uncached, {p.s_per_cached_token * 1e6:.2f} "
        f"us/token cached, {p.chunk_tokens} tokens a step",
        f"  KV cache      {prof.kv_capacity_tokens:,} tokens in blocks of {prof.block_size}; "
        f"at most {prof.max_num_seqs} sequences",
        "  start-up      " + ", ".join(f"{k} {v:.1f} s" for k, v in prof.startup_s.items()),
        f"  took          {prof.measurements.get('total_s', 0):.0f} s",
    ]
    lines += [f"  written       {path}" for path in paths]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = None
    try:
        cfg = load_config(args.overrides)
        model = model_path(cfg)
        target = Path(args.out) if args.out else None
        log_file = str((target or Path(cfg.output_dir) / "calibrate.json").with_suffix(".log").resolve())
        t0 = time.monotonic()
        prof = calibrate(cfg, model, args.budget_s, log_file=log_file)
        paths = [prof.save(cache_path(prof.key))]
        if target is not None:
            paths.append(prof.save(target))
        print(summary(prof, paths))
        print(f"calibrated in {time.monotonic() - t0:.0f} s; engine log {engine_logs(log_file, colocated(cfg))}")
        return 0
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except Exception as exc:  # one paragraph and an exit status, as `python -m orchestrator` does
        return report(exc, debug=bool(cfg and cfg.debug))


if __name__ == "__main__":
    sys.exit(main())
