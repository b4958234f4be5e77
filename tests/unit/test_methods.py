"""The method seam: each built-in strategy's decisions, and a method made only of a new module's
classes and their registration, run end to end by an unchanged `Group`."""

import pytest

from orchestrator.config import ConfigError, validate
from orchestrator.core import methods, routing
from orchestrator.core.methods import Barrier, Communication, StoppingRule
from orchestrator.core.params import LeapParams
from orchestrator.core.paths import PathState, TokenIds
from orchestrator.core.prompts import SUMMARY_OPEN
from orchestrator.core.rng import rng_for
from tests.conftest import compose
from tests.unit.test_group import PROBLEM, ScriptedEngine, default_script, make_group

BUILT_IN = ("leap", "leap_t", "independent", "compute_matched")


def path(round_=1, sampled=0, index=0) -> PathState:
    p = PathState(index=index, key=f"k/{index}", tokens=TokenIds(), prompt_len=0)
    p.round, p.sampled_segments = round_, sampled
    return p


def barrier(summaries, params=LeapParams(paths=4, top_k=2), round_=1) -> Barrier:
    waiting = tuple(path(round_, index=i) for i in range(len(summaries)))
    return Barrier(params, PROBLEM, round_, waiting, tuple(summaries), waiting)


# -- the built-in methods ------------------------------------------------------------------------
def test_the_built_in_modes_are_their_strategy_pairs():
    assert set(BUILT_IN) <= set(methods.method_names())
    pairs = {name: (methods.method(name).communication, methods.method(name).stopping) for name in BUILT_IN}
    com, stop = methods.COMMUNICATIONS.get, methods.STOPPING_RULES.get
    assert pairs == {
        "leap": (com("routed"), stop("rounds")),
        "leap_t": (com("self_opened"), stop("rounds")),
        "independent": (com("none"), stop("rounds")),
        "compute_matched": (com("none"), stop("token_budget")),
    }
    assert [n for n in BUILT_IN if methods.method(n).uses_leap_note] == ["leap"]
    assert [n for n in BUILT_IN if methods.method(n).exchanges] == ["leap", "leap_t"]
    assert {n: methods.method(n).baseline for n in BUILT_IN} == {
        "leap": None, "leap_t": None, "independent": "independent", "compute_matched": "compute_matched"}
    assert LeapParams(mode="leap_t").method is methods.method("leap_t")


def test_unknown_and_repeated_names_are_refused():
    with pytest.raises(methods.UnknownName, match="'nope'.*'leap', 'leap_t'"):
        methods.method("nope")
    assert methods.find_method("nope") is None and methods.find_method(None) is None
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method("leap", "routed", "rounds")
    with pytest.raises(methods.UnknownName, match="communication strategy 'nope'"):
        methods.register_method("x", "nope", "rounds")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        LeapParams(mode="nope").communicates(1)


def test_routed_communicates_in_the_configured_rounds_but_the_last():
    routed = methods.COMMUNICATIONS.get("routed")
    every = LeapParams(max_rounds=4)
    assert [routed.communicates(every, r) for r in (1, 2, 3, 4)] == [True, True, True, False]
    chosen = LeapParams(max_rounds=4, comm_rounds=(2,))
    assert [routed.communicates(chosen, r) for r in (1, 2, 3, 4)] == [False, True, False, False]
    assert routed.segment_stops(every, 1) == [] and routed.exchanges


def test_routed_gives_the_routers_choice_and_a_lone_path_nothing():
    routed = methods.COMMUNICATIONS.get("routed")
    summaries = ["the answer is 5", "the answer is 5!", "maybe 7", "no idea yet at all"]
    for router in ("dispersed", "random"):
        prm = LeapParams(paths=4, top_k=2, router=router, seed=3)
        expected = routing.route(summaries, router, 2, rng=rng_for(3, PROBLEM.id, -1, 2, "router"))
        assert routed.route(barrier(summaries, prm, round_=2)) == expected
    assert routed.route(barrier(["alone"])) == [[]]


def test_self_opened_also_stops_a_communicating_segment_at_the_summary_tag():
    self_opened = methods.COMMUNICATIONS.get("self_opened")
    prm = LeapParams(max_rounds=3, comm_rounds=(2,))
    assert [self_opened.segment_stops(prm, r) for r in (1, 2, 3)] == [[], [SUMMARY_OPEN], []]
    assert self_opened.route(barrier(["a", "b"])) == methods.COMMUNICATIONS.get("routed").route(barrier(["a", "b"]))


def test_none_never_communicates():
    none = methods.COMMUNICATIONS.get("none")
    assert not none.exchanges
    assert not any(none.communicates(LeapParams(max_rounds=4), r) for r in (1, 2, 3, 4))
    assert none.route(barrier(["a", "b"])) == [[], []]


def test_round_budget_forces_after_max_rounds():
    rounds = methods.STOPPING_RULES.get("rounds")
    prm = LeapParams(T=100, max_rounds=3, token_budget=50)  # a budget means nothing to it
    assert rounds.segment_tokens(prm, path(2, sampled=90)) == 100
    assert [rounds.last_segment(prm, path(r, sampled=500)) for r in (1, 2, 3)] == [False, False, True]
    assert rounds.sampled_cap(prm) == 300 and not rounds.uses_token_budget
    assert not rounds.stop_group(barrier(["a", "b"]))


def test_token_budget_forces_when_the_budget_is_spent():
    budget = methods.STOPPING_RULES.get("token_budget")
    prm = LeapParams(T=100, max_rounds=2, token_budget=250, mode="compute_matched")
    assert [budget.segment_tokens(prm, path(r, sampled=s)) for r, s in ((1, 0), (2, 100), (3, 200))] == [100, 100, 50]
    assert [budget.last_segment(prm, path(r, sampled=s)) for r, s in ((2, 200), (3, 249), (3, 250))] == [
        False, False, True]
    assert budget.sampled_cap(prm) == 250 and budget.uses_token_budget
    unset = LeapParams(T=100, max_rounds=2, mode="compute_matched")  # leap.match_point: set at run time
    assert budget.segment_tokens(unset, path()) == 100 and budget.last_segment(unset, path(2))
    assert budget.sampled_cap(unset) is None


# -- a new method: one module's classes and their registration -----------------------------------
class FirstOtherPeer(Communication):
    """Every waiting path hears only from the lowest-index other waiting path."""

    def route(self, b: Barrier):
        return [[(0 if i else 1, 0.0)] for i in range(len(b.waiting))]


class TwoRounds(StoppingRule):
    """Force the answer after round 2, whatever leap.max_rounds says."""

    def segment_tokens(self, params, p):
        return params.T

    def last_segment(self, params, p):
        return p.round >= 2

    def sampled_cap(self, params):
        return 2 * params.T


class StopAtSecondBarrier(TwoRounds):
    """Leave the paths alone, but end the whole problem at round 2's barrier."""

    def last_segment(self, params, p):
        return p.round >= params.max_rounds

    def stop_group(self, b: Barrier):
        return b.round >= 2


@pytest.fixture
def registered():
    methods.register_communication("test_first_other", FirstOtherPeer())
    methods.register_stopping("test_two_rounds", TwoRounds())
    methods.register_stopping("test_stop_at_barrier_2", StopAtSecondBarrier())
    methods.register_method("test_first_other_two_rounds", "test_first_other", "test_two_rounds")
    methods.register_method("test_first_other_group_stop", "test_first_other", "test_stop_at_barrier_2")
    yield
    for name in ("test_first_other_two_rounds", "test_first_other_group_stop"):
        methods.METHODS.unregister(name)
    methods.COMMUNICATIONS.unregister("test_first_other")
    for name in ("test_two_rounds", "test_stop_at_barrier_2"):
        methods.STOPPING_RULES.unregister(name)


def test_a_registered_method_runs_in_an_unchanged_group(registered):
    g = ScriptedEngine(make_group(mode="test_first_other_two_rounds", max_rounds=4), default_script([5, 4, 5, 9])).run()
    # round 1 communicates (leap.comm_rounds: all but the last of 4), round 2 is the method's last
    assert [(m["round"], m["recipient"], m["sender"], m["rank"]) for m in g.messages] == [
        (1, 0, 1, 1), (1, 1, 0, 1), (1, 2, 0, 1), (1, 3, 0, 1)]
    assert all(m["summary"] == g.paths[m["sender"]].summaries[0] for m in g.messages)
    rows = g.records()
    assert [r["rounds"] for r in rows] == [2] * 4 and {r["finish_reason"] for r in rows} == {"forced"}
    assert all(len(r["summaries"]) == 1 and r["text"].count("<comment>") == 1 for r in rows)


def test_a_stopping_rule_can_end_the_whole_problem_at_a_barrier(registered):
    g = ScriptedEngine(make_group(mode="test_first_other_group_stop", max_rounds=4), default_script([5] * 4)).run()
    assert {m["round"] for m in g.messages} == {1}  # round 2's barrier forced every answer instead
    rows = g.records()
    assert [r["rounds"] for r in rows] == [2] * 4 and {r["finish_reason"] for r in rows} == {"forced"}
    assert all(len(r["summaries"]) == 2 and r["text"].count("<comment>") == 1 for r in rows)
    assert g.barriers_released == 2


def test_config_accepts_a_registered_mode_and_lists_the_names_for_an_unknown_one(registered):
    (params,) = validate(compose(["engine=fake", "leap.mode=test_first_other_two_rounds"])).values()
    assert params.method.stopping is methods.STOPPING_RULES.get("test_two_rounds")
    with pytest.raises(ConfigError, match=r"leap\.mode='gossip'.*'leap'.*'test_first_other_two_rounds'"):
        validate(compose(["engine=fake", "leap.mode=gossip"]))
