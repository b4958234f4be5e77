"""What a run's results depend on, so that one output directory never mixes two configs.

A fingerprint has three parts:

    run       flat {config key: value} of everything global that changes a path's tokens or its
              grade: the model, the engine's numerics, sampling, the prompts (by content), the
              benchmark kind and the similarity model
    points    {sweep point: its method settings} (every `leap.*` value, the seed included; the
              issue-18 knobs only where they differ from their defaults)
    problems  {problem id: a hash of its question, gold answer and kind}

It is written to `output_dir/fingerprint.json` and stamped into every result part (parquet
metadata) and every checkpoint. A rerun may add sweep points or problems (a larger
`dataset.limit`, a longer sweep); it may not change anything a finished or checkpointed group
was made with: `compare` lists each difference, and the run is refused before Ray starts.
Deliberately left out: speed and placement knobs (replica count, batch sizes, timeouts,
`engine.latency` and `engine.profile`, which only set how long the fake engine takes), labels
(`model.name`), and the dataset's file path (its content counts, not where it lies).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from ..core.params import params_record

RUN_KEYS = (
    "model.path", "engine.kind", "engine.dtype", "engine.max_model_len", "engine.per_request_seed",
    "engine.vllm_args", "engine.think_end_prob", "engine.eos_prob",
    "sampling.temperature", "sampling.top_p", "sampling.top_k", "sampling.min_p",
    "dataset.name", "leap.embedding_model",
)
FILE = "fingerprint.json"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _get(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    if hasattr(node, "items"):  # an OmegaConf or plain mapping
        node = dict(node.items())
    return node


def make(cfg, points: dict, prompts, problems) -> dict:
    """The fingerprint of a run about to start (`points`: name -> LeapParams)."""
    run = {key: _jsonable(_get(cfg, key)) for key in RUN_KEYS}
    prompt_fields = {k: v for k, v in asdict(prompts).items() if k != "source"}
    run["prompts"] = digest(prompt_fields)
    return {
        "run": run,
        "points": {name: _jsonable(params_record(p)) for name, p in points.items()},
        "problems": {p.id: digest([p.question, p.gold, p.kind, p.benchmark]) for p in problems},
    }


def for_group(fp: dict, point: str, problem_id: str) -> dict:
    """What one group was made with: stamped into its part file and checkpoints."""
    return {"run": fp["run"], "points": {point: fp["points"].get(point)},
            "problems": {problem_id: fp["problems"].get(problem_id)}}


def group_digest(fp: dict, point: str, problem_id: str) -> str:
    return digest(for_group(fp, point, problem_id))


def merge(old: dict, new: dict) -> dict:
    """What the directory holds after this run: the earlier points and problems stay listed."""
    return {"run": new["run"], "points": {**old.get("points", {}), **new["points"]},
            "problems": {**old.get("problems", {}), **new["problems"]}}


def compare(old: dict, new: dict) -> list[str]:
    """Each difference that would mix results, as a line; empty when the rerun may continue."""
    lines = []
    old_run, new_run = old.get("run", {}), new.get("run", {})
    for key in sorted(set(old_run) | set(new_run)):
        if old_run.get(key) != new_run.get(key):
            lines.append(f"{key}: {_show(old_run.get(key))} -> {_show(new_run.get(key))}"
                         + (" (the prompts' text)" if key == "prompts" else ""))
    for name, params in sorted(new.get("points", {}).items()):
        before = old.get("points", {}).get(name)
        if before is None or before == params:
            continue
        changed = [f"leap.{k}: {_show(before.get(k))} -> {_show(params.get(k))}"
                   for k in sorted(set(before) | set(params)) if before.get(k) != params.get(k)]
        lines.append(f"sweep point {name!r}: " + ", ".join(changed))
    differ = [pid for pid, h in new.get("problems", {}).items()
              if old.get("problems", {}).get(pid) not in (None, h)]
    if differ:
        shown = ", ".join(sorted(differ)[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        lines.append(f"dataset content: {len(differ)} problem(s) with the same id but another question or "
                     f"answer ({shown})")
    return lines


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, sort_keys=True)
