"""The issue-18 methods' config keys: defaults, sweeps, combinations, validation and records."""

import pytest

from orchestrator.config import prompt_file, validate
from orchestrator.core.prompts import load_prompts
from orchestrator.core import methods
from orchestrator.core.params import OPTIONAL_KEYS, LeapParams, params_record
from orchestrator.driver import fingerprint
from orchestrator.errors import ConfigError
from tests.conftest import compose

DEFAULTS = {"stopping": None, "consensus_share": 1.0, "consensus_checks": 2, "probe_tokens": 32,
            "confidence_window": 2048, "confidence_keep": 10, "confidence_warmup": 16,
            "confidence_top_logprobs": 20, "confidence_warmup_first": True, "pool_threshold": 0.9, "pool_tokens": 1024}


def points(*overrides):
    return validate(compose(["engine=fake", *overrides]))


def test_the_new_keys_have_the_contract_defaults():
    (p,) = points().values()
    assert {k: getattr(p, k) for k in DEFAULTS} == DEFAULTS
    assert set(OPTIONAL_KEYS) == set(DEFAULTS)
    assert {k: getattr(LeapParams(), k) for k in DEFAULTS} == DEFAULTS


def test_the_new_modes_are_their_strategy_pairs():
    com, stop = methods.COMMUNICATIONS.get, methods.STOPPING_RULES.get
    pairs = {n: (methods.method(n).communication, methods.method(n).stopping) for n in ("pool", "consensus", "deepconf")}
    assert pairs == {"pool": (com("pool"), stop("rounds")), "consensus": (com("none"), stop("consensus")),
                     "deepconf": (com("none"), stop("confidence"))}
    assert methods.method("pool").exchanges and methods.method("pool").uses_leap_note
    assert not methods.method("consensus").exchanges and methods.method("deepconf").baseline is None
    assert methods.method("deepconf").stopping.vote == "confidence"


def test_stopping_combines_any_communication_with_any_rule():
    combined = LeapParams(mode="leap", stopping="consensus").method
    assert combined.communication is methods.method("leap").communication
    assert combined.stopping is methods.STOPPING_RULES.get("consensus")
    assert combined.name == "leap+consensus" and combined.uses_leap_note and combined.baseline is None
    assert LeapParams(mode="leap", stopping="consensus").method is combined  # built once
    assert LeapParams(mode="independent", stopping="rounds").method is methods.method("independent")
    assert methods.find_method("leap", "nope") is None
    with pytest.raises(methods.UnknownName, match="stopping rule 'nope'"):
        LeapParams(stopping="nope").method


def test_new_keys_sweep_per_point():
    pts = points("leap.paths=8", "leap.confidence_warmup=4",
                 "+sweep=[{name: a, mode: deepconf, confidence_keep: 90}, {name: b, mode: leap, stopping: consensus,"
                 " consensus_share: 0.5}, {name: c, mode: pool, pool_tokens: 100, pool_threshold: 0.7}]")
    assert (pts["a"].mode, pts["a"].confidence_keep, pts["a"].confidence_warmup) == ("deepconf", 90.0, 4)
    assert (pts["b"].stopping, pts["b"].consensus_share) == ("consensus", 0.5)
    assert (pts["c"].pool_tokens, pts["c"].pool_threshold) == (100, 0.7)


@pytest.mark.parametrize("override, message", [
    ("leap.consensus_share=0", r"leap.consensus_share=0.0 must be a number in \(0, 1\]"),
    ("leap.consensus_share=1.5", r"leap.consensus_share=1.5"),
    ("leap.confidence_keep=100", r"leap.confidence_keep=100.0 must be a percentage in \(0, 100\)"),
    ("leap.confidence_keep=0", r"leap.confidence_keep"),
    ("leap.pool_tokens=0", r"leap.pool_tokens=0 must be an integer >= 1"),
    ("leap.pool_threshold=0", r"leap.pool_threshold"),
    ("leap.consensus_checks=0", r"leap.consensus_checks"),
    ("leap.probe_tokens=0", r"leap.probe_tokens"),
    ("leap.confidence_window=0", r"leap.confidence_window"),
    ("leap.confidence_top_logprobs=0", r"leap.confidence_top_logprobs"),
    ("leap.stopping=nope", r"leap.stopping='nope' is not a registered stopping rule.*'rounds', 'token_budget', "
                           r"'consensus', 'confidence'"),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        points(override)


def test_warmup_must_leave_paths_to_stop():
    with pytest.raises(ConfigError, match=r"leap.confidence_warmup=16 with leap.paths=8"):
        points("leap.mode=deepconf", "leap.paths=8")
    with pytest.raises(ConfigError, match=r"sweep\[0\].confidence_warmup=4"):
        points("leap.paths=4", "+sweep=[{mode: leap, stopping: confidence, confidence_warmup: 4, "
               "confidence_warmup_first: false}]")
    points("leap.mode=leap", "leap.paths=8")  # no confidence stopping: the warm-up count is unused
    points("leap.mode=deepconf", "leap.paths=8", "leap.confidence_warmup=2")


def test_warmup_first_needs_paths_that_do_not_meet_at_barriers():
    with pytest.raises(ConfigError, match=r"leap.confidence_warmup_first=true with leap.mode=pool.*=false"):
        points("leap.mode=pool", "leap.stopping=confidence")
    (p,) = points("leap.mode=pool", "leap.stopping=confidence", "leap.confidence_warmup_first=false").values()
    assert not p.confidence_warmup_first and params_record(p)["confidence_warmup_first"] is False
    (p,) = points("leap.mode=deepconf").values()
    assert p.confidence_warmup_first and "confidence_warmup_first" not in params_record(p)


def test_a_token_budget_belongs_to_a_rule_that_stops_by_tokens():
    with pytest.raises(ConfigError, match="token_budget"):
        points("leap.mode=consensus", "leap.token_budget=100")
    (p,) = points("leap.mode=leap", "leap.stopping=token_budget", "leap.token_budget=100").values()
    assert p.method.stopping.uses_token_budget and p.token_budget == 100


def test_records_leave_out_new_keys_at_their_defaults():
    old = params_record(LeapParams())
    assert not set(OPTIONAL_KEYS) & set(old)
    assert params_record(LeapParams(mode="deepconf", confidence_keep=90.0))["confidence_keep"] == 90.0
    assert "stopping" in params_record(LeapParams(stopping="consensus"))
    cfg = compose(["engine=fake"])
    fp = fingerprint.make(cfg, {"default": LeapParams()}, load_prompts(prompt_file("default")), [])
    assert not set(OPTIONAL_KEYS) & set(fp["points"]["default"])


def test_summary_settings_name_a_combined_method_and_its_changed_knobs():
    from orchestrator.core.metrics import baseline_of, is_leap_mode, point_settings

    assert not set(OPTIONAL_KEYS) & set(point_settings(LeapParams()))
    s = point_settings(LeapParams(mode="independent", stopping="consensus", consensus_share=0.5))
    assert (s["stopping"], s["consensus_share"]) == ("consensus", 0.5) and "probe_tokens" not in s
    assert baseline_of("independent") == "independent" and baseline_of("independent", "consensus") is None
    assert is_leap_mode("leap", "confidence") and not is_leap_mode("consensus")


def test_more_top_logprobs_than_vllm_allows_is_refused_before_the_run():
    with pytest.raises(ConfigError, match=r"confidence_top_logprobs=32 is more than vLLM allows.*max_logprobs=32"):
        validate(compose(["engine=cpu", "leap.mode=deepconf", "leap.confidence_top_logprobs=32"]))
    validate(compose(["engine=cpu", "leap.mode=deepconf", "leap.confidence_top_logprobs=32",
                      "+engine.vllm_args.max_logprobs=32"]))
    validate(compose(["engine=cpu", "leap.mode=leap", "leap.confidence_top_logprobs=32"]))  # asks for none
