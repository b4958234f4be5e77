"""The round state machine with hand-built engine outputs: no Ray, no engine, no model.

A scripted engine answers each request from a per-path script, the way vLLM's scheduler tests
hand-build model outputs. Tokens are bytes (the fake tokenizer), so token counts are characters.
"""

import random

import pytest

from orchestrator.core.grading import grade_record
from orchestrator.core.group import Group
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.text import paragraph_cut, repair_summary
from orchestrator.core.types import GenResult, Problem
from orchestrator.config import prompt_file
from orchestrator.engines.tokenizer import FakeTokenizer

TOK = FakeTokenizer()
PROMPTS = load_prompts(prompt_file("default"))
PROBLEM = Problem(id="p1", benchmark="unit", question="What is 2+3?", gold="5")


class ScriptedEngine:
    """Holds token state like a replica and answers from `script(path_index, kind, round)`."""

    def __init__(self, group, script):
        self.group, self.script, self.state = group, script, {}

    def answer(self, req):
        tokens = self.state.get(req.path_key, [])
        if req.full is not None:
            tokens = list(req.full)
        tokens = tokens[: req.keep] + list(req.append)
        path = self.group._by_key[req.path_key]
        text, reason, stop = self.script(path.index, req.kind, path.round, req)
        ids = TOK.encode(text)[: req.max_tokens]
        if reason == "eos":
            ids.append(TOK.eos_token_id)
        self.state[req.path_key] = tokens + ids
        return GenResult(req.path_key, ids, text, reason, stop_str=stop, prompt_tokens=len(tokens))

    def run(self, order=None, first_full=True):
        rng = random.Random(order)
        seen = set()
        while not self.group.done:
            reqs = self.group.requests()
            assert reqs, "group stuck with nothing to run"
            for r in reqs:
                if r.path_key not in seen and first_full:
                    r.full = self.group.full_tokens(r.path_key)
                    seen.add(r.path_key)
            # the engine holds exactly what the core thinks it holds
            for r in reqs:
                held = self.state.get(r.path_key, r.full or [])
                assert held[: r.keep] == self.group._by_key[r.path_key].tokens[: r.keep]
            results = [self.answer(r) for r in reqs]
            if order is not None:
                rng.shuffle(results)
            for res in results:
                self.group.on_result(res)
        return self.group


def reasoning(n_par=3, answer=None):
    body = "".join(f"Paragraph {i} of careful work.\n\n" for i in range(n_par)) + "Trailing half senten"
    return body


def default_script(answers):
    def script(i, kind, rnd, req):
        if kind == "segment":
            return reasoning(), "length", None
        if kind == "summary":
            return f" found that the answer is {answers[i]}. </summarize>", "stop", "</summarize>"
        if kind == "force":
            return f"{answers[i]}}}", "eos", None
        return "done", "eos", None
    return script


def make_group(**kw):
    params = LeapParams(**{"paths": 4, "T": 80, "max_rounds": 3, "top_k": 2, "summary_tokens": 64, **kw})
    prompt = TOK.apply_chat_template([{"role": "user", "content": PROBLEM.question}])
    return Group("pt|p1", PROBLEM, prompt, params, PROMPTS, TOK, sweep_point="pt")


def test_full_loop_cuts_summarizes_routes_and_forces():
    g = ScriptedEngine(make_group(), default_script([5, 4, 5, 9])).run()
    rows = [grade_record(r) for r in g.records()]  # the driver grades, off the coordinator
    assert [r["finish_reason"] for r in rows] == ["forced"] * 4
    assert [r["rounds"] for r in rows] == [3, 3, 3, 3]
    # two communication rounds (1 and 2; the last round never communicates), k=2 peers each
    assert len(g.messages) == 2 * 4 * 2
    assert all(m["recipient"] != m["sender"] for m in g.messages)
    text = rows[0]["text"]
    assert text.count("<summarize>") == 2 and text.count("</summarize>") == 2
    assert text.count("<comment>") == 2 and "Peer 2:" in text
    # the half sentence after the last paragraph break was cut before summarizing
    assert "Trailing half senten<summarize>" not in text.replace(" ", "")
    assert "senten" + PROMPTS.triggers[0] not in text
    assert rows[0]["answer"] == "5" and rows[0]["correct"] and rows[0]["correct_compat"]
    assert rows[3]["answer"] == "9" and not rows[3]["correct"]
    assert all(r["injected_tokens"] > 0 and r["sampled_tokens"] > 0 for r in rows)


def test_dispersed_routing_uses_the_summaries():
    g = ScriptedEngine(make_group(top_k=1), default_script([5, 5, 5, 123456])).run()
    round1 = [m for m in g.messages if m["round"] == 1]
    # the odd one out is the least similar peer for everyone else
    assert all(m["sender"] == 3 for m in round1 if m["recipient"] != 3)


def test_scrambled_reply_order_changes_nothing():
    base = ScriptedEngine(make_group(), default_script([1, 2, 3, 4])).run()
    for seed in range(3):
        other = ScriptedEngine(make_group(), default_script([1, 2, 3, 4])).run(order=seed)
        assert other.records() == base.records()
        assert other.messages == base.messages


def test_eos_and_think_end_leave_the_group_in_different_rounds():
    def script(i, kind, rnd, req):
        if kind == "segment" and i == 0 and rnd == 1:
            return "The answer is \\boxed{5}.", "eos", None
        if kind == "segment" and i == 1 and rnd == 2:
            return "Enough.\n</think>", "stop", "</think>"
        if kind == "answer":
            return "\n\nSo \\boxed{5}.", "eos", None
        return default_script([5, 5, 6, 7])(i, kind, rnd, req)

    g = ScriptedEngine(make_group(), script).run()
    rows = g.records()
    assert rows[0]["finish_reason"] == "eos" and rows[0]["rounds"] == 1 and rows[0]["summaries"] == []
    assert rows[1]["finish_reason"] == "think_end" and rows[1]["rounds"] == 2
    assert rows[2]["finish_reason"] == "forced"
    # path 0 left before round 1's barrier: nobody hears from it or sends to it
    assert all(0 not in (m["sender"], m["recipient"]) for m in g.messages)
    # round 2: path 1 left too, paths 2 and 3 see only each other
    r2 = [(m["recipient"], m["sender"]) for m in g.messages if m["round"] == 2]
    assert sorted(r2) == [(2, 3), (3, 2)]


def test_single_active_path_gets_the_no_comments_block():
    def script(i, kind, rnd, req):
        if kind == "segment" and i > 0:
            return "Done: \\boxed{5}", "eos", None
        return default_script([5] * 4)(i, kind, rnd, req)

    g = ScriptedEngine(make_group(), script).run()
    text = g.records()[0]["text"]
    assert PROMPTS.no_comments.strip() in text
    assert g.messages == []


def test_summary_that_hits_the_cap_is_closed():
    def script(i, kind, rnd, req):
        if kind == "summary":
            return "x" * 200, "length", None
        return default_script([5] * 4)(i, kind, rnd, req)

    g = ScriptedEngine(make_group(summary_tokens=16), script).run()
    row = g.records()[0]
    assert row["summaries"][0].endswith("x...")
    assert "x... </summarize>" in row["text"]


def test_summary_with_partial_tag_or_think_end_is_repaired():
    keep, fix = repair_summary(TOK, TOK.encode(" the answer is 5. </summ"))
    assert fix == "arize>" and keep == len(TOK.encode(" the answer is 5. </summ"))
    ids = TOK.encode(" the answer is 5.</think> more")
    keep, fix = repair_summary(TOK, ids)
    assert TOK.decode(ids[:keep]) == " the answer is 5." and fix == "... </summarize>"
    # a lone "<" is not taken for the start of the closing tag; "</" is
    assert repair_summary(TOK, TOK.encode("so 3 <"))[1] == "... </summarize>"
    assert repair_summary(TOK, TOK.encode("so 3 </"))[1] == "summarize>"


def test_segment_without_paragraph_break_is_kept_whole():
    seg = TOK.encode("one long line without breaks")
    assert paragraph_cut(TOK, seg) == len(seg)
    seg = TOK.encode("first\n\nsecond part")
    assert TOK.decode(seg[: paragraph_cut(TOK, seg)]) == "first\n\n"

    def script(i, kind, rnd, req):
        if kind == "segment":
            return "no break at all here", "length", None
        return default_script([5] * 4)(i, kind, rnd, req)

    g = ScriptedEngine(make_group(), script).run()
    text = g.records()[0]["text"]
    # nothing was cut: the trigger starts a new paragraph right after the whole segment
    assert any(f"no break at all here\n\n{t} <summarize>" in text for t in PROMPTS.triggers)


def test_context_exhaustion_ends_the_path_with_a_reason():
    def script(i, kind, rnd, req):
        if kind == "segment" and rnd == 2:
            return "", "context", None
        return default_script([5] * 4)(i, kind, rnd, req)

    g = ScriptedEngine(make_group(), script).run()
    assert {r["finish_reason"] for r in g.records()} == {"context"}


def test_only_configured_rounds_communicate():
    g = ScriptedEngine(make_group(max_rounds=4, comm_rounds=(2,)), default_script([1, 2, 3, 4])).run()
    assert {m["round"] for m in g.messages} == {2}
    assert all(len(r["summaries"]) == 1 for r in g.records())


def test_independent_mode_never_summarizes():
    g = ScriptedEngine(make_group(mode="independent"), default_script([1, 2, 3, 4])).run()
    rows = g.records()
    assert g.messages == [] and all(r["summaries"] == [] for r in rows)
    assert all("<summarize>" not in r["text"] for r in rows)
    assert all(r["sampled_tokens"] == 3 * 80 + 3 for r in rows)  # 3 segments, then "N}" and EOS


def test_compute_matched_mode_spends_the_budget():
    g = ScriptedEngine(make_group(mode="compute_matched", token_budget=200), default_script([1] * 4)).run()
    rows = g.records()
    assert all(r["sampled_tokens"] == 200 + 3 for r in rows)
    assert all(r["finish_reason"] == "forced" for r in rows)


def test_leap_t_continues_a_summary_the_model_opened():
    def script(i, kind, rnd, req):
        if kind == "segment" and rnd < 3:
            assert "<summarize>" in req.stop
            return "Working.\n\nI think <summarize>", "stop", "<summarize>"
        if kind == "segment":  # the last round never communicates, so never stops there
            assert "<summarize>" not in req.stop
        return default_script([5] * 4)(i, kind, rnd, req)

    g = ScriptedEngine(make_group(mode="leap_t"), script).run()
    text = g.records()[0]["text"]
    assert all(t not in text for t in PROMPTS.triggers)  # no injected trigger
    assert "I think <summarize> found that the answer is 5. </summarize>" in text


def test_failover_resends_the_whole_path():
    g = make_group()
    eng = ScriptedEngine(g, default_script([5] * 4))
    reqs = g.requests()
    for r in reqs:
        r.full = g.full_tokens(r.path_key)
        g.on_result(eng.answer(r))
    eng.state.clear()  # the replica died and lost everything
    for p in g.paths:
        g.replica_lost(p.key)
    reqs = g.requests()
    assert all(r.kind == "summary" for r in reqs)
    for r in reqs:
        r.full = g.full_tokens(r.path_key)
        res = eng.answer(r)
        assert eng.state[r.path_key][: len(g._by_key[r.path_key].tokens)] == g._by_key[r.path_key].tokens
        g.on_result(res)
    assert all(p.requests[-1]["reusable_tokens"] == 0 for p in g.paths)


def test_same_seed_same_records_different_seed_different_triggers():
    a = ScriptedEngine(make_group(seed=1), default_script([1, 2, 3, 4])).run().records()
    b = ScriptedEngine(make_group(seed=1), default_script([1, 2, 3, 4])).run().records()
    c = ScriptedEngine(make_group(seed=2), default_script([1, 2, 3, 4])).run().records()
    assert a == b
    assert [r["text"] for r in a] != [r["text"] for r in c]


def test_unknown_result_is_rejected():
    g = make_group()
    with pytest.raises(ValueError):
        g.on_result(GenResult("pt|p1/0", [], "", "length"))


def test_peer_block_from_cached_pieces_decodes_to_the_rendered_block():
    """The barrier concatenates ids encoded as summaries arrived; the text is the block's text."""
    from orchestrator.models import resolve_model
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny"))
    summaries = ['so far 3b + 4 = 5b + 2, "b = 1"?', "No answer yet.\n\nChecking é and 日本.", "x" * 300]
    for tok in (TOK, hf):
        g = Group("pt|p1", PROBLEM, tok.encode("prompt"), LeapParams(paths=3, top_k=2), PROMPTS, tok,
                  sweep_point="pt")
        waiting = g.paths
        for p, s in zip(waiting, summaries):
            p.summaries.append(s)
            g.peers.arrive(p)
        peers = [(2, 0.1), (0, 0.5)]
        ids = g.peers.block(summaries, waiting, peers)
        assert tok.decode(ids.tolist()) == PROMPTS.peer_block([summaries[2], summaries[0]])
        sim = g.peers.matrix(waiting)
        from orchestrator.core.routing import similarity_matrix
        assert sim == similarity_matrix(summaries, "indel")
