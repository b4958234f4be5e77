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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

VERSION = 1


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
        )
    except (KeyError, TypeError) as exc:
        raise ProfileError(f"{source}: missing or unknown field ({exc})") from None


def load(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: not a readable profile ({exc})") from None
    return from_dict(data, str(path))


SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"


def cache_dir() -> Path:
    """Where measured profiles are kept: `$LEAP_PROFILE_DIR`, else
    `~/.cache/leap-orchestrator/profiles/`."""
    env = os.environ.get("LEAP_PROFILE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "leap-orchestrator" / "profiles"


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
