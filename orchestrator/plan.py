"""`python -m orchestrator.plan <the run's overrides> [--lengths-from OUTPUT_DIR] [--out PLAN.json]`

Predicts what the run `python -m orchestrator <the same overrides>` will take, before it is
launched: per sweep point and in total, generation and wall time, GPU-hours, sampled and injected
tokens, prefix-cache hit rate, peak KV use and evictions, each replica's busy fraction, and the
setting that bounds it. Runs in one process (the driver's kind): the config is composed and
checked as the run's would be, the problems and prompts loaded as the run loads them, and the
real coordinator runs over simulated replicas on a virtual clock (`driver/planner.py`).

The engines' speed comes from a profile (`engine.profile=FILE`, else `find_profile`: a measured
one for the run's model and device, else the nearest one scaled to the model; a fake run without
a profile uses its `engine.latency`). The first line says which, how it was scaled, and the
correction earlier runs on the same engines measured (`engines/history.py`), if any.
`--lengths-from DIR` draws path lengths from an earlier run's paths.parquet, each sweep point
from that run's point of the same name when it had one. Without it, a real model's paths take
the lengths the newest finished run of the same point settings recorded (`engines/past_lengths.py`;
the run's own plan does the same), and a point no run recorded uses its whole budget;
`--lengths-from budget` plans every path from its budget. A fake engine writes its own lengths.
`--out` writes the figures as JSON (`Prediction.to_dict()`). Exit status as the run's (2: fix
the command or config).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import compose
from .driver.planner import PlanError, load_lengths, model_files, predict, run_key
from .driver.phases import load_inputs
from .driver.plan_check import remembered
from .engines import history
from .engines.batching import LatencyModel
from .engines.profile import ProfileError, find_profile
from .errors import ConfigError, report


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.plan", description=__doc__.splitlines()[0],
                                 usage="%(prog)s [OVERRIDES ...] [--lengths-from OUTPUT_DIR] [--out PLAN.json]")
    ap.add_argument("--lengths-from", metavar="OUTPUT_DIR",
                    help="draw path lengths from an earlier run's paths.parquet ('budget': every path's whole "
                         "budget; default: the newest earlier run of the same point settings, if any)")
    ap.add_argument("--out", metavar="PLAN.json", help="write the plan's figures as JSON")
    return ap.parse_known_args(argv)


def find(cfg, model_config: dict | None):
    """(profile, the line saying which) for the run `cfg`; PlanError when there is none."""
    if cfg.engine.kind == "fake" and not cfg.engine.profile:
        latency = LatencyModel.from_dict(cfg.engine.latency)
        if not latency.active:
            raise PlanError("a fake engine without engine.latency takes no time: give engine.profile=FILE or "
                            "engine.latency keys (e.g. +engine.latency.step_base_s=0.01) to plan it")
        return latency.profile, "engine.latency of the fake engine (" + ", ".join(
            f"{k}={v}" for k, v in sorted(cfg.engine.latency.items()) if k != "time_scale") + ")"
    try:
        found = find_profile(run_key(cfg, model_config), model_config, cfg.engine.profile)
    except ProfileError as exc:
        raise PlanError(str(exc)) from None
    if found is None:
        kind = "GPU" if cfg.replicas.gpus_per_replica > 0 else "CPU"
        raise PlanError(f"no engine profile for {cfg.model.path} on a {kind} (none measured for it, and none of "
                        f"that device kind to scale from): measure one with `python -m orchestrator.calibrate "
                        f"<the run's overrides>`, or give engine.profile=FILE")
    return found


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    bad = [o for o in overrides if o.startswith("-")]
    try:
        if bad:
            raise ConfigError(f"unknown option(s) {bad}: the plan takes the run's overrides (key=value), "
                              f"--lengths-from OUTPUT_DIR and --out PLAN.json")
        cfg = compose(overrides)
        points, prompts, problems = load_inputs(cfg)
        tokenizer, model_config, notes = model_files(cfg)
        # as the run plans: earlier runs on these engines correct the speed
        profile, source, learned = history.for_plan(*find(cfg, model_config), cfg.engine.kind)
        if args.lengths_from == "budget":
            lengths = None
        elif args.lengths_from:
            lengths = load_lengths(args.lengths_from)
        else:  # as the run plans: the newest earlier run of the same point settings, if any
            lengths = remembered(cfg, points, prompts)
        pred = predict(cfg, points, prompts, problems, profile, lengths, source=source, tokenizer=tokenizer,
                       notes=notes, fixed_s=(learned or {}).get("fixed_s"))
    except Exception as exc:  # one paragraph and an exit status, as a run's failure
        return report(exc)
    print(pred.text(), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(pred.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
