"""Path lengths remembered from earlier runs of the same sweep points, for the next plan of them.

A plan made from the budget is an upper bound: real paths stop at EOS, and answers and summaries
end well before their caps (W2 with `leap.mode=independent` here: 25,208 tokens sampled where
the budget says 28,672; its answers took 22 of their 64 tokens on average, its thinking 362 of
384), so its plan came out 8-9% slower than the same plan with the run's own lengths. The lengths
a sweep point's paths take depend on the model, its sampling, the prompts and the point's method
settings, not on the seed nor on the replicas. So each finished run on a real engine appends,
for each of its sweep points, the lengths its paths took (`counted.lengths_from_rows` pools,
each thinned to at most MAX_POOL values) under that point's key to `lengths.jsonl` in the profile
cache (`profile.cache_dir()`), and a later plan of a point with the same key (the run's own plan
before it starts, and `python -m orchestrator.plan` without `--lengths-from`) draws its paths'
lengths from the newest such record, and says so on its notes. A point no run has recorded
plans from its budget, as before. Deleting lengths.jsonl forgets it all.

    keys = point_keys(fingerprint_run, {name: params_record})   # name -> key
    remember(keys, lengths_from_rows(rows), "outputs/w2")
    lengths = recall(keys)   # a `Lengths` dict for `CountedWriter`, or None
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from .profile import cache_dir

log = logging.getLogger(__name__)

LENGTHS_FILE = "lengths.jsonl"
MAX_POOL = 2000  # values kept per pool and point: evenly thinned beyond it (a paper sweep's point has 960 paths)
POOLS = ("think", "summary", "answer", "force")


def lengths_file() -> Path:
    return cache_dir() / LENGTHS_FILE


def point_keys(run: dict, points: dict[str, dict]) -> dict[str, str]:
    """Each sweep point's key: what its paths' lengths depend on. `run` is the fingerprint's
    global part (model, engine, sampling, prompts, dataset), `points` each point's settings
    (`params_record`); the seed is left out, as a new seed draws from the same distribution."""
    out = {}
    for name, params in points.items():
        kept = {k: v for k, v in params.items() if k != "seed"}
        blob = json.dumps({"run": run, "point": kept}, sort_keys=True, default=str)
        out[name] = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    return out


def _thin(values: list) -> list:
    if len(values) <= MAX_POOL:
        return list(values)
    step = len(values) / MAX_POOL
    return [values[int(i * step)] for i in range(MAX_POOL)]


def remember(keys: dict[str, str], lengths: dict, output_dir: str = "", path: Path | None = None) -> int:
    """Append the lengths of each point of `keys` that `lengths` (`lengths_from_rows`'s, per
    sweep point) holds paths of. Returns how many points were written (0 when the cache is not
    writable: a warning, never a failed run)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = []
    for name, key in keys.items():
        pools = (lengths.get("points") or {}).get(name)
        if not pools or not pools.get("think"):
            continue
        entry = {"when": when, "key": key, "point": name, "output_dir": str(output_dir),
                 "paths": int(pools.get("paths") or len(pools["think"]))}
        entry.update({pool: _thin(pools.get(pool) or []) for pool in POOLS})
        lines.append(json.dumps(entry, separators=(",", ":")))
    if not lines:
        return 0
    path = path or lengths_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as exc:
        log.warning("could not record the run's path lengths in %s (%s); later plans use the budget", path, exc)
        return 0
    return len(lines)


def recall(keys: dict[str, str], path: Path | None = None) -> dict | None:
    """The newest recorded lengths of each point of `keys`, as a `Lengths` dict whose "points"
    are keyed by this run's point names (no pooled values: a point nobody recorded keeps its
    budget), or None when no point has any."""
    path = path or lengths_file()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:  # nothing recorded yet
        return None
    wanted = {key: [n for n, k in keys.items() if k == key] for key in set(keys.values())}
    newest: dict[str, dict] = {}
    for line in lines:
        if not any(key in line for key in wanted):  # skip parsing the other workloads' lines
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("key") in wanted and isinstance(entry.get("think"), list) and entry["think"]:
            newest[entry["key"]] = entry  # later lines are newer
    if not newest:
        return None
    points = {}
    for key, entry in newest.items():
        for name in wanted[key]:
            points[name] = {"paths": int(entry.get("paths") or len(entry["think"])),
                            **{pool: entry.get(pool) or [] for pool in POOLS}}
    sources = sorted({(e["when"], e.get("output_dir") or "?") for e in newest.values()})
    where = "; ".join(f"{d} ({w})" for w, d in sources)
    return {"source": f"the earlier run{'s' if len(sources) > 1 else ''} of the same point settings in {where}",
            "paths": sum(p["paths"] for p in points.values()), "points": points, "remembered": True,
            **{pool: [] for pool in POOLS}}


__all__ = ["LENGTHS_FILE", "MAX_POOL", "lengths_file", "point_keys", "recall", "remember"]
