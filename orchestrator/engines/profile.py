"""An engine profile: what a simulated replica needs to take the time a real one takes.

`python -m orchestrator.calibrate` measures one on the run's own engine; `python -m
orchestrator.plan` (and `benchmarks/overhead.py --simulate`) feed it to the fake replica's latency
model. The time model, per engine step:

    step_s = decode.step_base_s
           + decode.step_per_seq_s           x sequences decoding in the step
           + decode.step_per_context_token_s x their context tokens, summed
           + prefill.s_per_token             x uncached prompt tokens prefilled in the step
                                               (at most prefill.chunk_tokens a step: chunked prefill)
           + prefill.s_per_cached_token      x prompt tokens served from the prefix cache

The KV cache holds `kv_capacity_tokens` tokens in blocks of `block_size`; at most `max_num_seqs`
sequences run at once. `model_bytes` (weights and KV bytes per token) lets a profile measured on
one model stand in for another on the same device (`scaled_to`): decode steps read the weights
once and every context token's KV once, prefill does work in proportion to the weights.

A profile is JSON (`save`/`load`), keyed by model, engine version, dtype and device (`key`).
Measured profiles are kept in the profile cache (`cache_dir()`: `$LEAP_PROFILE_DIR`, else
`~/.cache/leap-orchestrator/profiles/`), one file per key (`cache_path(key)`); shipped ones in
`orchestrator/engines/profiles/`.
`find_profile` looks one up for a run: a file named by `engine.profile`, else an exact match in
the cache directory, else the nearest one on the same kind of device (shipped: `profiles/`, the
H100's), scaled to the run's model. Runs wherever a profile is read: the driver (the planner, the
run's own plan) or a fake replica given `engine.profile`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"
KEY_FIELDS = ("model", "engine", "dtype", "device")
# How `python -m orchestrator.calibrate` measures, recorded in a profile's measurements: 3, its
# replay shaped like a run's requests and timed on every co-located replica; 2, through the run's
# Ray replica actors, with a short-context replay; 1, its engines in the calibrating process
# (steps 8-12% faster than a run's on a 2-core machine). A cached profile of an older method is
# measured again.
CALIBRATION = 3
_WILD = (None, "", "auto", "any")
DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp16": 2,
               "bf16": 2, "fp8": 1, "float8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decode:
    step_base_s: float  # a step's fixed cost (weights read once, launch overheads)
    step_per_seq_s: float = 0.0  # each sequence in the step
    step_per_context_token_s: float = 0.0  # each context token of the step's sequences (KV reads)


@dataclass(frozen=True)
class Prefill:
    s_per_token: float  # an uncached prompt token
    s_per_cached_token: float = 0.0  # a prompt token found in the prefix cache
    chunk_tokens: int = 2048  # uncached prompt tokens one step may take (max_num_batched_tokens)


@dataclass(frozen=True)
class ModelBytes:
    weights: int  # bytes of weights a decode step reads
    kv_per_token: int  # bytes of KV cache one token takes (all layers, K and V)


@dataclass(frozen=True)
class Profile:
    key: dict  # {"model", "engine", "dtype", "device"}
    decode: Decode
    prefill: Prefill
    kv_capacity_tokens: int
    block_size: int = 16
    max_num_seqs: int = 256
    startup_s: dict = field(default_factory=dict)  # engine start-up phases, seconds
    model_bytes: ModelBytes | None = None
    fitted_from: str = ""  # what was measured, in words
    notes: list = field(default_factory=list)  # e.g. how the profile was scaled
    measurements: dict = field(default_factory=dict)  # the raw points a calibration fitted, for the record
    # a run's engine time over what the step model above gives for it, measured by calibrate's
    # LeaP-shaped replay (per-request work, stop-string checks, the other replicas' front-ends
    # on shared cores); the simulator multiplies every step's time by it (`step_s` does not). 1.0:
    # none measured.
    replay_factor: float = 1.0

    def step_s(self, seqs: int, context_tokens: int, prefill_tokens: int = 0, cached_tokens: int = 0) -> float:
        """One engine step's seconds (see the module docstring)."""
        d, p = self.decode, self.prefill
        decode = (d.step_base_s + d.step_per_seq_s * seqs + d.step_per_context_token_s * context_tokens
                  if seqs else 0.0)
        if not seqs and prefill_tokens:
            decode = d.step_base_s  # a prefill-only step still runs the model once
        return decode + p.s_per_token * prefill_tokens + p.s_per_cached_token * cached_tokens

    def scaled_to(self, model: str, target: ModelBytes, kv_budget_bytes: int | None = None) -> "Profile":
        """This device's profile for another model: step costs in proportion to the bytes a step
        reads (weights; KV per context token), prefill to the weights, the KV capacity to the
        bytes one token takes (or `kv_budget_bytes` / KV bytes per token when given)."""
        if self.model_bytes is None:
            raise ValueError("the profile records no model_bytes, so it cannot be scaled to another model")
        w = target.weights / self.model_bytes.weights
        kv = target.kv_per_token / self.model_bytes.kv_per_token
        if kv_budget_bytes is not None:
            capacity = int(kv_budget_bytes // target.kv_per_token)
        else:
            capacity = int(self.kv_capacity_tokens / kv)
        capacity -= capacity % self.block_size
        note = (f"scaled from {self.key.get('model')} to {model}: weights x{w:.3g}, KV per token x{kv:.3g}, "
                f"KV capacity {capacity:,} tokens")
        return replace(
            self,
            key={**self.key, "model": model},
            decode=Decode(self.decode.step_base_s * w, self.decode.step_per_seq_s * w,
                          self.decode.step_per_context_token_s * kv),
            prefill=replace(self.prefill, s_per_token=self.prefill.s_per_token * w,
                            s_per_cached_token=self.prefill.s_per_cached_token * w),
            kv_capacity_tokens=max(capacity, self.block_size),
            model_bytes=target,
            notes=[*self.notes, note],
        )

    def matches(self, key: dict) -> bool:
        """Whether this profile is the one for `key`: every field the key names equals this
        profile's. None, "" and "auto" name nothing; a device of just "cpu" or "gpu" matches that
        kind of device; an engine without a version ("vllm") matches any version of it (a
        profile's engine is "NAME VERSION"); models match by name (a path's or hub id's last part)."""
        for name in KEY_FIELDS:
            want, have = key.get(name), self.key.get(name)
            if want in _WILD:
                continue
            want_s, have_s = str(want), str(have or "")
            if name == "device":
                ok = device_kind(have) == want_s.lower() if want_s.lower() in ("cpu", "gpu") else want_s == have_s
            elif name == "engine":
                ok = want_s == have_s if " " in want_s else have_s.split(" ")[0] == want_s
            elif name == "model":
                ok = _model_name(want) == _model_name(have)
            else:
                ok = want_s.lower() == have_s.lower()
            if not ok:
                return False
        return True

    def describe(self) -> str:
        k = self.key
        return f"{k.get('model')} on {k.get('device')} ({k.get('engine')}, {k.get('dtype')})"

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


class ProfileError(ValueError):
    """A profile file that cannot be read; the message names the file and the field."""


def from_dict(data: dict, source: str = "profile") -> Profile:
    if data.get("version") != VERSION:
        raise ProfileError(f"{source}: version {data.get('version')!r}, expected {VERSION}")
    try:
        mb = data.get("model_bytes")
        return Profile(
            key=dict(data["key"]),
            decode=Decode(**data["decode"]),
            prefill=Prefill(**data["prefill"]),
            kv_capacity_tokens=int(data["kv_capacity_tokens"]),
            block_size=int(data.get("block_size", 16)),
            max_num_seqs=int(data.get("max_num_seqs", 256)),
            startup_s=dict(data.get("startup_s") or {}),
            model_bytes=ModelBytes(**mb) if mb else None,
            fitted_from=str(data.get("fitted_from", "")),
            notes=list(data.get("notes") or []),
            measurements=dict(data.get("measurements") or {}),
            replay_factor=float(data.get("replay_factor", 1.0)),
        )
    except (KeyError, TypeError) as exc:
        raise ProfileError(f"{source}: missing or unknown field ({exc})") from None


def load(path: str | Path) -> Profile:
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: not a readable profile ({exc})") from None
    return from_dict(data, str(path))


def cache_path(key: dict, directory: str | Path | None = None) -> Path:
    """The cache file of the profile keyed `key`: readable words of the key and a hash of all of it."""
    words = "-".join(str(key.get(k, "")) for k in ("model", "dtype", "engine"))
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", words).strip("-")[:80]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(directory if directory is not None else cache_dir()) / f"{slug}-{digest}.json"


def model_bytes(config: dict, dtype_bytes: int = 2) -> ModelBytes:
    """Weights and KV bytes per token of a Hugging Face decoder config (`config.json` as a dict):
    the parameters of a Llama/Qwen-style transformer and, per token, K and V of every layer."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config["vocab_size"])
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    params = layers * (attn + mlp + 2 * hidden) + embed + hidden
    kv = 2 * layers * kv_heads * head_dim * dtype_bytes
    return ModelBytes(weights=int(params * dtype_bytes), kv_per_token=int(kv))


def device_kind(device) -> str:
    """"cpu" for a CPU device name ("cpu", "cpu: <model name>"), else "gpu"."""
    return "cpu" if str(device or "").strip().lower().startswith("cpu") else "gpu"


def _model_name(model) -> str:
    """A model's name for matching: the last part of a path or hub id (case-insensitive)."""
    return str(model or "").rstrip("/").rsplit("/", 1)[-1].lower()


def dtype_bytes(dtype: str | None, config: dict | None = None) -> int:
    """Bytes per weight and KV element of `dtype` ("auto": the checkpoint's torch_dtype)."""
    name = str(dtype or "auto").lower().replace("torch.", "")
    if name == "auto" and config:
        name = str(config.get("torch_dtype") or "bfloat16").lower().replace("torch.", "")
    return DTYPE_BYTES.get(name, 2)


def cache_dir() -> Path:
    """Where measured profiles are kept: $LEAP_PROFILE_DIR, else $LEAP_CACHE_DIR/profiles, else
    ~/.cache/leap-orchestrator/profiles."""
    env = os.environ.get("LEAP_PROFILE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("LEAP_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "leap-orchestrator") / "profiles"


def outdated(prof: Profile) -> bool:
    """Whether `prof` was measured by an older calibration (`CALIBRATION`); profiles written by
    hand or fitted elsewhere (no replay recorded) are not."""
    m = prof.measurements
    return "replay" in m and m.get("calibration") != CALIBRATION


def known_profiles(dirs: list[Path] | None = None) -> list[tuple[Profile, Path]]:
    """Every readable profile in the cache directory, then the shipped ones (unreadable files
    and outdated measurements are skipped with a warning)."""
    out = []
    for d in dirs if dirs is not None else [cache_dir(), SHIPPED_DIR]:
        for path in sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []:
            try:
                prof = load(path)
            except ProfileError as exc:
                log.warning("skipping profile %s", exc)
                continue
            if outdated(prof):
                log.warning("skipping profile %s: measured by an older calibration; run "
                            "python -m orchestrator.calibrate again", path)
                continue
            out.append((prof, path))
    return out


def find_profile(key: dict, model_config: dict | None = None, explicit: str | None = None,
                 dirs: list[Path] | None = None) -> tuple[Profile, str] | None:
    """The profile for a run whose engines are `key` ({"model", "engine", "dtype", "device"};
    a device of "gpu" or "cpu" when only its kind is known), and a line saying what was done:

    1. `explicit` (`engine.profile`): that file; scaled to the run's model when it was measured
       on another one and `model_config` (the model's config.json) says the run model's size;
    2. else a profile in the cache directory (`cache_dir()`) or shipped that `matches` the key;
    3. else the nearest one on the same kind of device (the same device first, then the closest
       weights), scaled by the model's bytes per token (needs `model_config`).

    None when nothing applies (no profile for the device kind, or none that can be scaled)."""
    if explicit:
        prof = load(explicit)
        if _same_model(prof, key) or model_config is None or prof.model_bytes is None:
            return prof, f"profile {explicit}: {prof.describe()}"
        scaled = _scale(prof, key, model_config)
        return scaled, f"profile {explicit}, {scaled.notes[-1]}"
    found = known_profiles(dirs)
    for prof, path in found:
        if prof.matches(key):
            return prof, f"exact profile {path}: {prof.describe()}"
    if model_config is None:
        return None
    kind = device_kind(key.get("device")) if key.get("device") not in _WILD else "gpu"
    same = [(p, path) for p, path in found if device_kind(p.key.get("device")) == kind and p.model_bytes]
    if not same:
        return None
    target = model_bytes(model_config, dtype_bytes(key.get("dtype"), model_config))
    device = key.get("device")

    def distance(item):
        p, _ = item
        return (device not in _WILD and device != p.key.get("device"),
                abs(math.log(target.weights / p.model_bytes.weights)))

    prof, path = min(same, key=distance)
    scaled = _scale(prof, key, model_config)
    return scaled, f"nearest profile {path.name} ({prof.describe()}), {scaled.notes[-1]}"


def _same_model(prof: Profile, key: dict) -> bool:
    return key.get("model") in _WILD or _model_name(key.get("model")) == _model_name(prof.key.get("model"))


def _scale(prof: Profile, key: dict, model_config: dict) -> Profile:
    """`prof` for the key's model. On a GPU the weights and the KV cache share the memory the
    engine takes, so the KV budget is the profile's less the extra weights; on a CPU the KV
    space is set apart (engine.kv_cache_space_gib) and stays the profile's."""
    target = model_bytes(model_config, dtype_bytes(key.get("dtype"), model_config))
    budget = prof.kv_capacity_tokens * prof.model_bytes.kv_per_token
    if device_kind(prof.key.get("device")) == "gpu":
        budget -= target.weights - prof.model_bytes.weights
    if budget <= 0:
        raise ProfileError(f"{prof.describe()}: the model {key.get('model')} ({target.weights / 2**30:.1f} GiB of "
                           f"weights) leaves no room for a KV cache on that device")
    return prof.scaled_to(str(key.get("model")), target, kv_budget_bytes=int(budget))
