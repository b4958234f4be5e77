"""The run checks its plan: when an engine profile applies to the run's engines, the run predicts
itself before any engine starts (`planner.predict`: the real coordinator over simulated replicas
on a virtual clock, seconds) and records the prediction as `predicted` in run_info.json, beside
the figures it then measures; the report shows one against the other (`report.data.plan_table`).

    facts = plan_check.check(cfg, points, prompts, problems, todo, model)
    # {} when no profile applies; else {"predicted": Prediction.to_dict() | {"error": ...}, "plan_s": s}
    facts = plan_check.recheck(cfg, points, prompts, problems, todo, model, rows, measured_s, wall_s)
    # after the run: {"replanned": {generation_s, wall_s, ...}}, the plan with the run's own lengths
    plan_check.remember(cfg, points, prompts, todo, rows)  # its lengths, for the next plan of these points

A profile applies when `engine.profile` names one, or when the engine is a real one and
`engines.profile.find_profile` finds one for its key (an exact profile, or the nearest one on the
same kind of device, scaled by the model's bytes). For a real engine, earlier runs with the same
profile correct its speed (`engines.history`), and each finished run records its own ratio; and
a plan given no lengths draws them from the newest finished run of the same point settings, when
one recorded them (`engines.past_lengths`), else from the budget. A
plan that fails never fails the run: a warning, and `predicted: {"error": ...}`. The console
shows one line before the run starts:

    plan: generation ~5:42, wall ~6:10 (exact profile ~/.cache/leap-orchestrator/profiles/...; planned in 0.8 s)
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from . import calibration, console, fingerprint, planner
from ..config import Config
from ..core.params import params_record
from ..core.types import Problem
from ..engines import history, past_lengths
from ..engines import profile as profiles
from ..engines.counted import lengths_from_rows

log = logging.getLogger(__name__)


def profile_key(cfg: Config, model: str) -> dict:
    """The key of the profile that describes this run's engines: the one calibration writes for
    the same config (`calibration.profile_key`), so a calibrated engine is found exactly."""
    return calibration.profile_key(cfg, model)


def check(cfg: Config, points: dict, prompts, problems: list[Problem], todo: list[tuple], model: str,
          lengths: dict | None = None, announce: bool = True) -> dict:
    """run_info.json's `predicted` and `plan_s` for the groups `todo` ((point, problem) pairs),
    or {} when no profile applies. Never raises (but for Ctrl-C). `lengths`: path lengths from an
    earlier run (`planner.load_lengths`; a run plans with its budget's); `announce`: print the
    plan's line."""
    explicit = cfg.engine.profile
    if cfg.engine.kind == "fake" and not explicit:
        return {}  # the fake engine's time is its latency model, not an engine's: nothing to plan
    t0 = time.monotonic()
    try:
        found = profiles.find_profile(profile_key(cfg, model), calibration.checkpoint_config(model), explicit)
    except Exception as exc:  # an unreadable profile file, a lookup that broke: the run goes on
        return _failed(exc, None, t0)
    if found is None:
        log.info("plan: no engine profile for %s (python -m orchestrator.calibrate writes one); the run "
                 "goes on without a plan", profile_key(cfg, model))
        return {}
    profile, source, learned = history.for_plan(*found, cfg.engine.kind)  # earlier runs' correction
    wanted = {pt for pt, _ in todo}
    wanted |= {points[pt].match_point for pt in wanted if points[pt].match_point in points}
    ids = {pb.id for _, pb in todo}
    if lengths is None:  # earlier runs of the same point settings say how long their paths were
        lengths = remembered(cfg, {pt: p for pt, p in points.items() if pt in wanted}, prompts)
    try:
        # the run's own tokenizer (the prepared model's), so prompts and injected text are counted
        # in its tokens, as `python -m orchestrator.plan` counts them
        tokenizer = None if cfg.engine.kind == "fake" else model
        predicted = planner.predict(cfg, {pt: p for pt, p in points.items() if pt in wanted}, prompts,
                                    [pb for pb in problems if pb.id in ids], profile, source=source,
                                    lengths=lengths, tokenizer=tokenizer,
                                    fixed_s=(learned or {}).get("fixed_s")).to_dict()
    except Exception as exc:  # the plan is advice: whatever breaks it is a warning
        return _failed(exc, source, t0)
    plan_s = round(time.monotonic() - t0, 3)
    predicted["profile"] = predicted.get("profile") or source
    if learned is not None:
        predicted["history"] = learned
    predicted.setdefault("plan_s", plan_s)
    if announce:
        console.line(line(predicted, plan_s))
    return {"predicted": predicted, "plan_s": plan_s}


def point_keys(cfg: Config, points: dict, prompts) -> dict[str, str]:
    """Each sweep point's key for the lengths its paths take (`engines.past_lengths`): the
    run's fingerprint (model, engine, sampling, prompts, dataset) and the point's settings."""
    run = fingerprint.make(cfg, points, prompts, [])["run"]
    return past_lengths.point_keys(run, {name: params_record(p) for name, p in points.items()})


def remembered(cfg: Config, points: dict, prompts) -> dict | None:
    """The lengths earlier runs of these points recorded, for a real engine's plan; None for a
    fake engine (its own writer says how long its paths are) or when none did."""
    if cfg.engine.kind == "fake":
        return None
    try:
        return past_lengths.recall(point_keys(cfg, points, prompts))
    except Exception as exc:  # a plan is advice: an unreadable record means the budget's lengths
        log.warning("plan: earlier runs' path lengths could not be read (%s); planning from the budget", exc)
        return None


def remember(cfg: Config, points: dict, prompts, todo: list[tuple], rows: list[dict]) -> int:
    """After a finished run on a real engine: record the lengths its paths took (the groups of
    `todo` only, a resumed run's earlier ones were recorded when they ran), per sweep point, for
    the next plan of the same settings. Returns the points recorded."""
    if cfg.engine.kind == "fake":
        return 0
    wanted = {(pt, pb.id) for pt, pb in todo}
    mine = [r for r in rows if (r.get("sweep_point"), r.get("problem_id")) in wanted]
    if not mine:
        return 0
    try:
        return past_lengths.remember(point_keys(cfg, points, prompts), lengths_from_rows(mine), cfg.output_dir)
    except Exception as exc:  # never fails a finished run
        log.warning("could not record the run's path lengths for later plans (%s)", exc)
        return 0


REPLANNED = ("generation_s", "wall_s", "sampled_tokens", "injected_tokens", "cache_hit_rate")


def recheck(cfg: Config, points: dict, prompts, problems: list[Problem], todo: list[tuple], model: str,
            rows: list[dict], measured_s: float | None = None, wall_s: float | None = None) -> dict:
    """run_info.json's `replanned`, after a run that planned itself: the same plan again with the
    path lengths the run sampled (`rows`: its paths, by sweep_point, problem_id, finish_reason and
    requests) instead of the budget's. The budget is an upper bound where paths stop at EOS (W2
    independent: 24,010 sampled tokens of 28,672), so the plan's error mixes the lengths' with the
    time model's; this one has only the time model's. {} when there is nothing to plan again."""
    wanted = {(pt, pb.id) for pt, pb in todo}
    mine = [r for r in rows if (r.get("sweep_point"), r.get("problem_id")) in wanted]
    if not mine:
        return {}
    facts = check(cfg, points, prompts, problems, todo, model, lengths_from_rows(mine, "this run"), announce=False)
    predicted = facts.get("predicted")
    if not predicted:
        return {}
    if predicted.get("error"):
        return {"replanned": {"error": predicted["error"]}}
    again = {k: predicted.get(k) for k in REPLANNED}
    again.update(paths=len(mine), plan_s=facts.get("plan_s"))
    gen = again.get("generation_s")
    if isinstance(gen, (int, float)) and measured_s:
        console.line(f"plan with this run's path lengths: generation ~{tqdm.format_interval(gen)} "
                     f"(measured {tqdm.format_interval(measured_s)}, {100 * (gen - measured_s) / measured_s:+.1f}%)")
    if predicted.get("history") and measured_s:  # the next plan on these engines learns from this run
        fixed = wall_s - measured_s if isinstance(wall_s, (int, float)) else None
        again["speed_ratio"] = history.record(predicted["history"], measured_s, gen, cfg.output_dir, fixed_s=fixed)
    return {"replanned": again}


def _failed(exc: BaseException, source: str | None, t0: float) -> dict:
    log.warning("the run's plan failed (%s: %s); the run goes on without one", type(exc).__name__, exc)
    predicted = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    if source:
        predicted["profile"] = source
    return {"predicted": predicted, "plan_s": round(time.monotonic() - t0, 3)}


def line(predicted: dict, plan_s: float) -> str:
    """`plan: generation ~5:42, wall ~6:10 (<profile>; planned in 0.8 s)`."""
    def about(key: str) -> str:
        value = predicted.get(key)
        return f"~{tqdm.format_interval(value)}" if isinstance(value, (int, float)) else "?"

    return (f"plan: generation {about('generation_s')}, wall {about('wall_s')} ({predicted.get('profile')}; "
            f"planned in {plan_s:.1f} s)")
