"""What earlier runs on the same engines measured against their plan, and the correction the next
plan takes from it.

A calibration is one moment of the machine: on the 2-core CPU machine here, the same replay took
up to 9% (float32) and 18% (bf16) longer from one minute to the next, so a profile's
`replay_factor` carries that moment's error into every plan made with it. Each run that planned
itself and finished measures the truth for its own workload: after it, the run plans again with
the path lengths it sampled (`driver.plan_check.recheck`), and measured over replanned generation
time is how far the profile's speed was off, free of the lengths' error. That ratio is appended
to `runs.jsonl` in the profile cache (`profile.cache_dir()`), under the profile's digest; a later
plan with the same profile (the run's own, and `python -m orchestrator.plan`) multiplies its
`replay_factor` by the median of the last `WINDOW` ratios and says so on its first line. Each
run also records its wall less generation time (the start of Ray, the engines and the
coordinator, the context check, writing: 65-96 s in this machine's CPU runs, where the
profile's start-up phases and the planner's fixed driver time say 49-53 s); their median
replaces that part of the next plan's wall time. A new calibration has a new digest, so it
starts with no history; deleting runs.jsonl forgets it all.

    prof, source, learned = for_plan(prof, source, engine_kind)  # learned: corrected()'s dict
    prof, learned = corrected(prof)  # learned: {"digest", "factor", "runs", "fixed_s"}
    record(learned, measured_s=67.1, replanned_s=56.1, output_dir="outputs/demo", fixed_s=95.7)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from .profile import Profile, cache_dir

log = logging.getLogger(__name__)

HISTORY_FILE = "runs.jsonl"
WINDOW = 5  # the last runs whose median corrects a plan
PLAUSIBLE = (0.25, 4.0)  # a ratio outside this is a broken run (or clock), not the engines' speed


def digest(prof: Profile) -> str:
    """A short fingerprint of what sets a plan's speed: the key, the fitted step and prefill
    model, the KV capacity and the replay factor (a new calibration differs in all of them)."""
    data = {"key": prof.key, "decode": asdict(prof.decode), "prefill": asdict(prof.prefill),
            "kv": prof.kv_capacity_tokens, "replay_factor": prof.replay_factor, "fitted_from": prof.fitted_from}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def history_file() -> Path:
    return cache_dir() / HISTORY_FILE


def entries(key: str, path: Path | None = None) -> list[dict]:
    """The runs recorded for the profile digest `key`, oldest first (lines that cannot be read,
    and ratios no engine's speed explains, are skipped)."""
    path = path or history_file()
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:  # no history yet
        return out
    for line in lines:
        try:
            entry = json.loads(line)
            ratio = float(entry["ratio"])
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("digest") == key and PLAUSIBLE[0] <= ratio <= PLAUSIBLE[1]:
            out.append(entry)
    return out


def corrected(prof: Profile, path: Path | None = None) -> tuple[Profile, dict]:
    """`prof` with its replay factor times the median of the last WINDOW runs' ratios (itself
    when there are none), and {"digest", "factor", "runs", "fixed_s"} for `record`, the plan's
    line and its wall time: `fixed_s` is the median of those runs' wall less generation time
    (Ray's and the engines' start, the coordinator's, the context check, writing), None when
    none recorded it."""
    key = digest(prof)
    recent = entries(key, path)[-WINDOW:]
    if not recent:
        return prof, {"digest": key, "factor": 1.0, "runs": 0, "fixed_s": None}
    factor = round(statistics.median(float(e["ratio"]) for e in recent), 4)
    fixed = [float(e["fixed_s"]) for e in recent if isinstance(e.get("fixed_s"), (int, float)) and e["fixed_s"] >= 0]
    fixed_s = round(statistics.median(fixed), 1) if fixed else None
    note = (f"speed corrected x{factor:.3f}: the median of the last {len(recent)} run(s) on these engines, "
            f"measured over planned ({history_file() if path is None else path})")
    if fixed_s is not None:
        note += f"; wall = generation + {fixed_s:.0f} s, their median outside generation"
    out = replace(prof, replay_factor=prof.replay_factor * factor, notes=[*prof.notes, note])
    return out, {"digest": key, "factor": factor, "runs": len(recent), "fixed_s": fixed_s}


def for_plan(prof: Profile, source: str, engine_kind: str) -> tuple[Profile, str, dict | None]:
    """What a plan (the run's own, and `python -m orchestrator.plan`) plans with: a real engine's
    profile `corrected` and its `source` line saying so; a fake engine's as it is (its time is
    its latency model, which no run measures), with no history (None)."""
    if engine_kind == "fake":
        return prof, source, None
    prof, learned = corrected(prof)
    return prof, source + describe(learned), learned


def describe(learned: dict | None) -> str:
    """The words a plan's first line adds for a correction; "" for none."""
    if not learned or not learned.get("runs"):
        return ""
    return f"; x{learned['factor']:.3f} from the last {learned['runs']} run(s) on these engines"


def record(learned: dict, measured_s: float, replanned_s: float, output_dir: str = "",
           path: Path | None = None, fixed_s: float | None = None) -> float | None:
    """Append a finished run's ratio for the profile `learned` names (`corrected`'s dict, with
    the factor its replan used): measured over replanned time, times that factor, so the ratio is
    against the profile as calibrated; and `fixed_s`, its wall less generation time. Returns the
    ratio, or None when nothing was written (a figure missing, or the cache not writable: a
    warning, never a failed run)."""
    if not (isinstance(measured_s, (int, float)) and isinstance(replanned_s, (int, float))
            and measured_s > 0 and replanned_s > 0 and math.isfinite(measured_s) and math.isfinite(replanned_s)):
        return None
    ratio = round(measured_s / replanned_s * float(learned.get("factor") or 1.0), 4)
    entry = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "digest": learned["digest"], "ratio": ratio,
             "measured_s": round(measured_s, 3), "replanned_s": round(replanned_s, 3),
             "factor_used": learned.get("factor"), "output_dir": str(output_dir)}
    if isinstance(fixed_s, (int, float)) and fixed_s >= 0:
        entry["fixed_s"] = round(fixed_s, 3)
    path = path or history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as exc:
        log.warning("could not record the run's speed in %s (%s); later plans go uncorrected", path, exc)
        return None
    return ratio


__all__ = ["WINDOW", "corrected", "describe", "digest", "entries", "for_plan", "record"]
