"""The issue-18 methods in the round state machine, with scripted engine outputs: consensus
stopping (answer probes, or summaries at LeaP barriers), DeepConf's confidence stopping, the
shared pool; their rows, votes and snapshots."""

from orchestrator.core.group import Group
from orchestrator.core.metrics import summarize
from orchestrator.core.types import GenResult
from tests.unit.test_group import PROBLEM, PROMPTS, TOK, ScriptedEngine, default_script, make_group, reasoning


class BranchingEngine(ScriptedEngine):
    """A scripted replica that honours `branch` (a probe leaves the stored tokens alone) and
    answers `logprobs` with confidences: `conf(path_index, round)` for every token."""

    def __init__(self, group, script, conf=lambda i, r: 1.0):
        super().__init__(group, script)
        self.conf = conf
        self.requests = []

    def answer(self, req):
        self.requests.append(req)
        before = self.state.get(req.path_key)
        res = super().answer(req)
        if req.branch:
            assert before is not None or req.full is not None
            self.state[req.path_key] = list(req.full) if before is None else before
        if req.logprobs:
            path = self.group._by_key[req.path_key]
            res.confidences = [self.conf(path.index, path.round)] * len(res.token_ids)
        return res


def probe_script(answers, think_end_at=None):
    """Segments that never finish; probes answer `answers[i]` (a callable of the round, or a
    value); forced answers give it too."""
    base = default_script(answers)

    def answer(i, rnd):
        a = answers[i]
        return a(rnd) if callable(a) else a

    def script(i, kind, rnd, req):
        if kind == "probe":
            return f"{answer(i, rnd)}}} and more", "length", None
        if kind == "force":
            return f"{answer(i, rnd)}}}", "eos", None
        if kind == "segment" and think_end_at is not None and think_end_at.get(i) == rnd:
            return "All done.</think>", "stop", "</think>"
        return base(i, kind, rnd, req)
    return script


# -- consensus ---------------------------------------------------------------------------------
def test_consensus_probes_stop_the_problem_after_enough_agreeing_checks():
    g = make_group(mode="consensus", max_rounds=5, consensus_checks=2, probe_tokens=6)
    engine = BranchingEngine(g, probe_script([5, 5, 5, 5]))
    engine.run()
    rows = g.records()
    assert [r["stop_reason"] for r in rows] == ["consensus"] * 4
    assert [r["stopped_at_round"] for r in rows] == [2] * 4 and [r["rounds"] for r in rows] == [2] * 4
    assert {r["finish_reason"] for r in rows} == {"forced"}
    forcing = len(TOK.encode(PROMPTS.forcing("math")))
    assert [r["probe_prompt_tokens"] for r in rows] == [2 * forcing] * 4
    assert [r["probe_tokens"] for r in rows] == [12] * 4  # two probes of at most 6 tokens
    assert [r["probe_answers"] for r in rows] == [["5", "5"]] * 4
    # the probes' tokens never entered a path: not in its text, not in sampled_tokens
    assert all("and more" not in r["text"] for r in rows)
    segment = min(g.params.T, len(TOK.encode(reasoning())))
    assert all(r["sampled_tokens"] == 2 * segment + len("5}") + 1 for r in rows)  # + EOS
    probes = [q for q in engine.requests if q.kind == "probe"]
    assert len(probes) == 8 and all(q.branch and q.max_tokens == 6 for q in probes)
    assert not any(q.branch for q in engine.requests if q.kind != "probe")
    assert all([q["kind"] for q in r["requests"]] == ["segment", "probe", "segment", "probe", "force"] for r in rows)
    assert g.barriers_released == 2


def test_consensus_needs_consecutive_agreement_and_the_share():
    # round 1 agrees, round 2 does not (path 3), rounds 3-4 agree: stops at round 4's check
    late = {3: lambda r: 9 if r == 2 else 5}
    g = make_group(mode="consensus", max_rounds=6, consensus_checks=2)
    BranchingEngine(g, probe_script([5, 5, 5, late[3]])).run()
    assert {(r["stop_reason"], r["stopped_at_round"]) for r in g.records()} == {("consensus", 4)}
    # a share of 3/4 is enough at 0.75, not at 1.0 (the default): never stops, runs all rounds
    g = make_group(mode="consensus", max_rounds=4, consensus_checks=1, consensus_share=0.75)
    BranchingEngine(g, probe_script([5, 5, 5, 9])).run()
    assert {(r["stop_reason"], r["stopped_at_round"]) for r in g.records()} == {("consensus", 1)}
    g = make_group(mode="consensus", max_rounds=4, consensus_checks=1)
    BranchingEngine(g, probe_script([5, 5, 5, 9])).run()
    rows = g.records()
    assert {(r["stop_reason"], r["finish_reason"], r["rounds"]) for r in rows} == {(None, "forced", 4)}
    assert all(len(r["probe_answers"]) == 3 for r in rows)  # every round but the last probes


def test_paths_that_finish_leave_the_checks():
    # path 0 ends its thinking in round 1; the others agree from then on
    g = make_group(mode="consensus", max_rounds=4, consensus_checks=1)
    BranchingEngine(g, probe_script([7, 5, 5, 5], think_end_at={0: 1})).run()
    rows = g.records()
    assert rows[0]["stop_reason"] is None and rows[0]["finish_reason"] == "think_end"
    assert [(r["stop_reason"], r["stopped_at_round"]) for r in rows[1:]] == [("consensus", 1)] * 3


def test_consensus_at_leap_barriers_reads_the_summaries():
    g = make_group(mode="leap", stopping="consensus", max_rounds=4, consensus_checks=2)
    engine = BranchingEngine(g, default_script([5, 5, 5, 5]))
    engine.run()
    rows = g.records()
    assert not any(q.kind == "probe" for q in engine.requests)
    assert {m["round"] for m in g.messages} == {1}  # round 2's barrier forced every answer
    assert {(r["stop_reason"], r["stopped_at_round"], r["finish_reason"]) for r in rows} == {("consensus", 2, "forced")}
    assert all(r["probe_tokens"] == 0 and r["vote"] == "majority" and r["vote_weight"] == 1.0 for r in rows)


def test_consensus_snapshot_restores_mid_run():
    script = probe_script([5, 5, 5, lambda r: 9 if r < 3 else 5])
    whole = make_group(mode="consensus", max_rounds=6, consensus_checks=2)
    BranchingEngine(whole, script).run()
    g = make_group(mode="consensus", max_rounds=6, consensus_checks=2)
    engine = BranchingEngine(g, script)
    blobs = []
    while not g.done:
        released = g.barriers_released
        for res in [engine.answer(r) for r in g.requests()]:
            g.on_result(res)
        if g.barriers_released != released:
            blobs.append(g.snapshot())
    restored = Group.restore(blobs[2], PROBLEM, g.paths[0].tokens[: g.paths[0].prompt_len].tolist(), g.params,
                             PROMPTS, TOK, sweep_point="pt")
    assert restored.rule_state == {"agreeing": 1}
    ScriptedEngine.run(BranchingEngine(restored, script))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("requests", "resumed_from_round", "cached_tokens", "uncached_tokens")} for r in rows]  # noqa: E731
    assert strip(restored.records()) == strip(whole.records())


# -- confidence --------------------------------------------------------------------------------
def deepconf(**kw):
    return make_group(**{"mode": "deepconf", "confidence_warmup": 2, "confidence_window": 16, "max_rounds": 4, **kw})


LOW = {3: 0.5}  # path 3 is unsure, the others sure (confidence 2.0 a token)


def test_deepconf_warmup_first_checks_the_others_from_their_first_segment():
    g = deepconf(confidence_keep=90)
    engine = BranchingEngine(g, default_script([5, 5, 5, 7]), conf=lambda i, r: LOW.get(i, 2.0))
    first = g.requests()
    assert sorted(r.path_key for r in first) == ["pt|p1/0", "pt|p1/1"]  # the warm-up paths alone
    assert g.can_request() is False  # both under way, the others wait for them
    for r in first:
        g.on_result(engine.answer(r))
    engine.run()
    rows = g.records()
    assert [r["warmup"] for r in rows] == [True, True, False, False]
    first_other = min(i for i, q in enumerate(engine.requests) if q.path_key in ("pt|p1/2", "pt|p1/3"))
    assert all(g._by_key[q.path_key].index < 2 or i >= first_other for i, q in enumerate(engine.requests))
    assert not any(q.path_key in ("pt|p1/0", "pt|p1/1") for q in engine.requests[first_other:])  # warm-ups done
    assert rows[3]["stop_reason"] == "low_confidence" and rows[3]["stopped_at_round"] == 1
    assert rows[3]["sampled_tokens"] < rows[2]["sampled_tokens"] and rows[3]["vote_weight"] == 0.0
    assert [r["stop_reason"] for r in rows[:3]] == [None] * 3


def test_deepconf_stops_paths_below_the_warmup_threshold():
    g = deepconf(confidence_keep=90, confidence_warmup_first=False)
    engine = BranchingEngine(g, default_script([5, 5, 5, 7]), conf=lambda i, r: LOW.get(i, 2.0))
    engine.run()
    rows = g.records()
    assert [r["warmup"] for r in rows] == [True, True, False, False]
    assert rows[3]["finish_reason"] == "stopped" and rows[3]["stop_reason"] == "low_confidence"
    assert rows[3]["stopped_at_round"] == 4 and rows[3]["vote_weight"] == 0.0  # the warm-ups end in round 4
    assert "force" not in [q["kind"] for q in rows[3]["requests"]]
    assert [r["stop_reason"] for r in rows[:3]] == [None] * 3
    assert [r["confidence"] for r in rows] == [2.0, 2.0, 2.0, 0.5]
    assert [r["vote_weight"] for r in rows[:3]] == [2.0] * 3 and {r["vote"] for r in rows} == {"confidence"}
    segments = [q for q in engine.requests if q.kind == "segment"]
    assert all(q.logprobs == 20 for q in segments) and not any(q.logprobs for q in engine.requests if q.kind != "segment")


def test_deepconf_threshold_counts_in_rounds_not_in_arrival_order():
    # warm-up path 0 ends its thinking in round 2: from round 2 on, path 3 is checked
    def script(i, kind, rnd, req):
        if kind == "segment" and i == 0 and rnd == 2:
            return "Sure now.</think>", "stop", "</think>"
        return default_script([5, 5, 5, 7])(i, kind, rnd, req)

    runs = []
    for order in (None, 1, 2, 3):
        g = deepconf(max_rounds=6, confidence_warmup_first=False)
        BranchingEngine(g, script, conf=lambda i, r: LOW.get(i, 2.0)).run(order=order)
        runs.append(g.records())
    assert all(r == runs[0] for r in runs)
    assert runs[0][3]["stopped_at_round"] == 6  # path 1 (a warm-up) ends in round 6


def test_a_path_ahead_of_the_warmups_waits_for_them():
    def script(i, kind, rnd, req):  # warm-up 0 ends its thinking in round 1
        if kind == "segment" and i == 0:
            return "Sure.</think>", "stop", "</think>"
        return default_script([5, 5, 5, 7])(i, kind, rnd, req)

    g = deepconf(max_rounds=3, confidence_warmup_first=False)
    engine = BranchingEngine(g, script, conf=lambda i, r: LOW.get(i, 2.0))
    first = {r.path_key: r for r in g.requests()}
    g.on_result(engine.answer(first["pt|p1/3"]))  # path 3 ends round 1 before any warm-up
    assert g.paths[3].phase == "pending" and not [r for r in g.requests() if r.path_key == "pt|p1/3"]
    g.on_result(engine.answer(first["pt|p1/0"]))
    assert g.paths[3].phase == "pending"  # warm-up 1 may still end its thinking in round 1
    blob = g.snapshot()
    g.on_result(engine.answer(first["pt|p1/1"]))
    assert g.paths[3].phase == "segment" and g.paths[3].round == 2  # it did not: go on
    restored = Group.restore(blob, PROBLEM, g.paths[0].tokens[: g.paths[0].prompt_len].tolist(), g.params,
                             PROMPTS, TOK, sweep_point="pt")
    assert restored.paths[3].phase == "pending" and restored.paths[3].pending == ["length", None]
    assert list(restored.paths[3].confidences) == [0.5] * g.paths[3].sampled_segments


def test_a_partial_window_never_stops_a_path():
    g = deepconf(confidence_window=100000)
    BranchingEngine(g, default_script([5, 5, 5, 7]), conf=lambda i, r: LOW.get(i, 2.0)).run()
    rows = g.records()
    assert [r["stop_reason"] for r in rows] == [None] * 4 and rows[3]["vote_weight"] == 0.5


def test_a_confidence_point_votes_by_weight_without_stopped_paths():
    row = lambda i, answer, correct, weight, stop=None: {  # noqa: E731
        "sweep_point": "dc", "benchmark": "b", "problem_id": "p", "path": i, "answer": answer,
        "correct": correct, "correct_compat": correct, "sampled_tokens": 10, "injected_tokens": 0,
        "vote": "confidence", "vote_weight": weight, "stop_reason": stop, "probe_tokens": 0}
    rows = [row(0, "1", False, 1.0), row(1, "1", False, 1.0), row(2, "2", True, 2.5),
            row(3, "1", False, 0.0, "low_confidence"), row(4, "1", False, 0.0, "low_confidence")]
    m = summarize(rows)["dc"]["b"]
    assert m["vote"] == "confidence" and m["cons@N"] == 1.0 and m["cons@N_shortest"] == 1.0
    assert m["per_problem"]["p"]["majority_answer"] == "2" and m["per_problem"]["p"]["votes"] == 1
    majority = [dict(r, vote="majority", vote_weight=1.0) for r in rows]
    assert summarize(majority)["dc"]["b"]["cons@N"] == 0.0


def test_probe_tokens_count_in_the_tokens_per_path():
    rows = [{"sweep_point": "c", "benchmark": "b", "problem_id": "p", "path": 0, "answer": "1", "correct": True,
             "correct_compat": True, "sampled_tokens": 100, "injected_tokens": 10, "probe_tokens": 12,
             "probe_prompt_tokens": 8, "vote": "majority", "vote_weight": 1.0}]
    assert summarize(rows)["c"]["b"]["tokens_per_path"] == {"sampled": 100.0, "injected": 10.0, "total": 130.0,
                                                           "probe": 20.0}


# -- pool --------------------------------------------------------------------------------------
def test_pool_sends_the_same_deduplicated_pool_to_every_path():
    g = make_group(mode="pool", max_rounds=2)
    BranchingEngine(g, default_script([5, 5, 5, "quite another thing, 123456 perhaps, or not at all"])).run()
    by_recipient = {}
    for m in g.messages:
        by_recipient.setdefault(m["recipient"], []).append(m["sender"])
    # paths 1 and 2 wrote path 0's summary again: dropped; the odd one out stays
    assert by_recipient == {i: [0, 3] for i in range(4)}
    texts = [r["text"] for r in g.records()]
    blocks = [t[t.index("<comment>"): t.index("</comment>")] for t in texts]
    assert len(set(blocks)) == 1


def test_pool_is_capped_in_summary_tokens():
    whole = make_group(mode="pool", max_rounds=2, pool_threshold=1.0)  # nothing counts as a duplicate
    BranchingEngine(whole, default_script([1, 2, 3, 4])).run()
    lengths = [len(TOK.encode(p.summaries[0])) for p in whole.paths]
    assert {m["sender"] for m in whole.messages} == {0, 1, 2, 3}
    g = make_group(mode="pool", max_rounds=2, pool_threshold=1.0, pool_tokens=lengths[0] + lengths[1] + lengths[2] - 1)
    BranchingEngine(g, default_script([1, 2, 3, 4])).run()
    assert {(m["recipient"], m["sender"]) for m in g.messages} == {(i, j) for i in range(4) for j in (0, 1)}


def test_a_group_says_when_it_can_send_a_request():
    g = make_group(mode="consensus", max_rounds=3)
    engine = BranchingEngine(g, probe_script([5, 5, 5, 9]))
    assert g.can_request()
    reqs = g.requests()
    assert not g.can_request()
    for res in [engine.answer(r) for r in reqs]:
        g.on_result(res)
    assert g.can_request() and {p.phase for p in g.paths} == {"probe"}


def test_other_methods_snapshot_as_before():
    from orchestrator.core.snapshot import read_snapshot

    g = make_group(mode="leap", max_rounds=3)
    engine = ScriptedEngine(g, default_script([5, 4, 5, 9]))
    while g.barriers_released == 0:
        for res in [engine.answer(r) for r in g.requests()]:
            g.on_result(res)
    header, tokens, confidences = read_snapshot(g.snapshot())
    assert "rule_state" not in header and all(len(c) == 0 for c in confidences)
    assert {k for meta in header["paths"] for k in meta} == {
        "index", "key", "n", "prompt_len", "phase", "round", "in_flight", "finish", "segment_start",
        "summary_start", "sampled_segments", "spans", "summaries", "requests", "replica", "node"}


def test_context_budgets_count_the_pool_by_its_token_cap():
    from orchestrator.core.budget import first_round
    from orchestrator.core.params import LeapParams

    routed = first_round(LeapParams(paths=8, top_k=2, summary_tokens=64), PROMPTS, TOK)
    small = first_round(LeapParams(mode="pool", paths=8, summary_tokens=64, pool_tokens=100), PROMPTS, TOK)
    large = first_round(LeapParams(mode="pool", paths=8, summary_tokens=64, pool_tokens=10_000), PROMPTS, TOK)
    assert (routed.k, small.k, large.k) == (2, 8, 8)
    assert large.peers - small.peers == 8 * 64 - 100
