"""Group snapshots and checkpoint files: a group restored from its last barrier ends exactly as an
uninterrupted one; damaged or foreign checkpoints are refused; files are replaced atomically."""

import asyncio
import pickle
import random
from dataclasses import replace

import pytest

from orchestrator.driver.checkpoint import CheckpointStore
from orchestrator.config import prompt_file
from orchestrator.core.group import Group
from orchestrator.core.params import LeapParams
from orchestrator.core.paths import TokenIds
from orchestrator.core.snapshot import CheckpointError, snapshot_info
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.tokenizer import FakeTokenizer, render_prompt

TOK = FakeTokenizer()
PROMPTS = load_prompts(prompt_file("default"))
PROBLEM = Problem(id="q7", benchmark="unit", question="What is 3 + 4?", gold="7")
PARAMS = LeapParams(paths=6, T=160, max_rounds=4, top_k=2, summary_tokens=48, answer_tokens=40, seed=3)
# some paths end their thinking early: at a barrier their answers are still under way
ENGINE = {"run_seed": 3, "think_end_prob": 0.2}
# columns that depend on which replica served a path, what it had cached, or the restart itself
CACHE_COLUMNS = ("cached_tokens", "uncached_tokens", "requests", "resumed_from_round", "replica", "node")


def new_group(params=PARAMS, problem=PROBLEM, point="default"):
    prompt = render_prompt(TOK, PROMPTS, problem, params)
    return Group(f"{point}|{problem.id}", problem, prompt, params, PROMPTS, TOK, sweep_point=point)


def restore(blob, params=PARAMS, problem=PROBLEM, point="default"):
    prompt = render_prompt(TOK, PROMPTS, problem, params)
    return Group.restore(blob, problem, prompt, params, PROMPTS, TOK, sweep_point=point)


def drive(group, replica, stop_at_barrier=None, order_seed=0):
    """Run the group on the fake replica, results in a shuffled order. With `stop_at_barrier`,
    return the snapshot taken when that many barriers are released (the rest of that batch of
    results is lost, as when a process dies with requests under way)."""
    rng = random.Random(order_seed)

    async def go():
        while not group.done:
            reqs = group.requests()
            assert reqs, "group stuck"
            for r in reqs:  # the replica may hold nothing: always send the synced prefix
                r.full = group.full_tokens(r.path_key)
            results = [await replica.generate(r) for r in reqs]
            rng.shuffle(results)
            for res in results:
                before = group.barriers_released
                group.on_result(res)
                if stop_at_barrier is not None and before < stop_at_barrier <= group.barriers_released:
                    return group.snapshot()
        return None

    return asyncio.run(go())


def rows(group):
    return [{k: v for k, v in r.items() if k not in CACHE_COLUMNS} for r in group.records()]


def test_token_ids_behave_like_a_list_and_cost_four_bytes_each():
    ids = TokenIds([5, 6, 7, 8])
    assert ids == [5, 6, 7, 8] and [5, 6, 7, 8] == ids and ids != [5, 6, 7]
    assert ids[1:3] == [6, 7] and isinstance(ids[1:3], TokenIds) and ids[-1] == 8
    ids.extend([9, 10])
    del ids[2:]
    assert ids.tolist() == [5, 6] and len(ids) == 2
    assert pickle.loads(pickle.dumps(ids)) == [5, 6]
    assert TokenIds(range(1000)).itemsize * 1000 == 4000


def test_requests_carry_plain_lists():
    g = new_group()
    (req, *_) = g.requests()
    assert type(req.append) is list and type(g.full_tokens(req.path_key)) is list


def test_restore_then_continue_gives_the_uninterrupted_rows():
    whole = new_group()
    drive(whole, FakeReplica(0, engine=ENGINE))
    assert whole.barriers_released == 3
    for k in (1, 2, 3):
        first = new_group()
        blob = drive(first, FakeReplica(0, engine=ENGINE), stop_at_barrier=k, order_seed=k)
        assert blob is not None
        resumed = restore(blob)
        # a fresh replica that holds nothing, results in another order
        assert drive(resumed, FakeReplica(1, engine=ENGINE), order_seed=10 + k) is None
        assert rows(resumed) == rows(whole)
        assert resumed.messages == whole.messages
        assert resumed.barriers_released == whole.barriers_released
        assert {r["resumed_from_round"] for r in resumed.records()} == {k + 1}
    assert {r["resumed_from_round"] for r in whole.records()} == {None}
    assert any(r["finish_reason"] == "think_end" for r in whole.records())


def test_snapshot_round_trip_keeps_every_field():
    g = new_group()
    blob = drive(g, FakeReplica(0, engine=ENGINE), stop_at_barrier=2)
    back = restore(blob)
    for a, b in zip(g.paths, back.paths):
        for name in ("index", "key", "tokens", "prompt_len", "phase", "round", "finish", "segment_start",
                     "summary_start", "sampled_segments", "spans", "summaries", "requests", "replica", "node"):
            assert getattr(a, name) == getattr(b, name), name
        assert (b.synced, b.computed, b.in_flight) == (0, 0, None)
    assert back.messages == g.messages and back.barriers_released == 2
    info = snapshot_info(blob)
    assert (info["key"], info["barriers_released"], info["round"]) == ("default|q7", 2, 3)
    # compact: 4 bytes a token plus a small header
    tokens = sum(len(p.tokens) for p in g.paths)
    assert 4 * tokens < len(blob) < 4 * tokens + 8192


def test_damaged_or_foreign_checkpoints_are_refused():
    g = new_group()
    blob = drive(g, FakeReplica(0, engine=ENGINE), stop_at_barrier=1)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    with pytest.raises(CheckpointError, match="damaged"):
        restore(bytes(flipped))
    with pytest.raises(CheckpointError):
        restore(blob[:-10])
    with pytest.raises(CheckpointError, match="T"):
        restore(blob, params=replace(PARAMS, T=128))
    other = Problem(id="q8", benchmark="unit", question="What is 3 + 4?", gold="7")
    with pytest.raises(CheckpointError, match="q8"):
        restore(blob, problem=other)
    changed = Problem(id="q7", benchmark="unit", question="What is 3 + 5?", gold="8")
    with pytest.raises(CheckpointError, match="prompt"):
        restore(blob, problem=changed)


def test_store_writes_loads_and_removes(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write("T=2|k", "p/1", b"first")
    store.write("T=2|k", "p/1", b"second")  # replaces
    store.write("base", "p2", b"other")
    assert store.load_all() == {("T=2|k", "p/1"): b"second", ("base", "p2"): b"other"}
    store.remove("base", "p2")
    store.remove("base", "never-written")
    assert store.load_all() == {("T=2|k", "p/1"): b"second"}
    assert store.stats()["writes"] == 3 and store.stats()["bytes"] > len(b"firstsecondother")


def test_a_write_killed_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import os

    store = CheckpointStore(tmp_path)
    store.write("pt", "p1", b"round-1 state")

    def dies(*_):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        store.write("pt", "p1", b"round-2 state")
    monkeypatch.undo()
    assert store.load_all() == {("pt", "p1"): b"round-1 state"}
    assert not list(store.root.glob("*/.*.tmp"))
    # a temp file left by a SIGKILL (no cleanup ran) is swept, a damaged file skipped
    leftover = store.path("pt", "p1").parent / ".p1.ckpt.abc.tmp"
    leftover.write_bytes(b"half")
    store.path("pt", "p2").write_bytes(b"garbage")
    assert store.load_all() == {("pt", "p1"): b"round-1 state"}
    assert not leftover.exists()


def test_result_parts_of_an_older_schema_still_read(tmp_path):
    """Parts written before the resume and char-offset columns existed read back with nulls."""
    import pyarrow as pa

    from orchestrator.driver.results import MESSAGES_SCHEMA, PATHS_SCHEMA, ResultStore, _ipc, atomic_write_table

    g = new_group()
    drive(g, FakeReplica(0, engine=ENGINE))
    store = ResultStore(tmp_path)
    store.write_group("default", "q7", g.records(), g.messages)
    old_span = pa.struct([("kind", pa.string()), ("start", pa.int64()), ("end", pa.int64())])
    old_fields = [pa.field("spans", pa.list_(old_span)) if f.name == "spans" else f for f in PATHS_SCHEMA
                  if f.name not in ("resumed_from_round", "round_answers", "round_correct")]
    rows = g.records()
    for r in rows:
        r["sweep_point"] = "old"
        r["spans"] = [{"kind": s["kind"], "start": s["start"], "end": s["end"]} for s in r["spans"]]
    old = pa.Table.from_pylist(rows, schema=pa.schema(old_fields))
    msgs = pa.Table.from_pylist(g.messages, schema=MESSAGES_SCHEMA)
    atomic_write_table(store.part_path("old", "q7"), pa.table({
        "kind": pa.array(["paths", "messages"]), "ipc": pa.array([_ipc(old), _ipc(msgs)], type=pa.binary())}))
    paths, _ = store.read_parts()
    by_point = {}
    for r in paths.to_pylist():
        by_point.setdefault(r["sweep_point"], []).append(r)
    assert len(by_point["old"]) == len(by_point["default"]) == PARAMS.paths
    assert all(r["resumed_from_round"] is None for r in by_point["old"])
    assert all(s["char_start"] is None for r in by_point["old"] for s in r["spans"])
    assert all(s["char_start"] is not None for r in by_point["default"] for s in r["spans"])
    assert [s["start"] for s in by_point["old"][0]["spans"]] == [s["start"] for s in by_point["default"][0]["spans"]]


def test_span_char_offsets_cut_the_text_exactly():
    g = new_group()
    drive(g, FakeReplica(0, engine=ENGINE))
    for row in g.records():
        text = row["text"]
        assert "".join(text[s["char_start"]:s["char_end"]] for s in row["spans"]) == text
        comments = [text[s["char_start"]:s["char_end"]] for s in row["spans"] if s["kind"] == "comment"]
        assert all(c.lstrip().startswith("<comment>") for c in comments)


def test_recovery_resumes_saved_groups_and_tracks_what_is_out(tmp_path):
    from orchestrator.driver.checkpoint import Recovery

    g = new_group()
    blob = drive(g, FakeReplica(0, engine=ENGINE), stop_at_barrier=2)
    CheckpointStore(tmp_path).write("default", "q7", blob)
    other = Problem(id="q8", benchmark="unit", question="What is 1 + 1?", gold="2")
    CheckpointStore(tmp_path).write("default", "q8", blob)  # made for another problem: unusable
    CheckpointStore(tmp_path).write("gone", "q9", b"x")  # its group is already written

    rec = Recovery(tmp_path, {"default": PARAMS})
    rec.forget_done(lambda point, pid: point == "gone")
    assert not CheckpointStore(tmp_path).path("gone", "q9").exists()
    items = rec.attach([("default", PROBLEM, {}), ("default", other, {})])
    assert items[0][3] == blob and items[1][3] is None
    assert rec.facts()["resumed_groups"] == [{"sweep_point": "default", "problem_id": "q7", "round": 3,
                                              "barriers": 2, "after": "rerun"}]
    assert rec.facts()["checkpoints_ignored"][0]["problem_id"] == "q8"
    # made with other leap settings (a compute-matched budget that changed): not used
    again = Recovery(tmp_path, {"default": PARAMS})
    assert again.attach([("default", PROBLEM, {"token_budget": 500})])[0][3] is None
    assert "other leap settings" in again.facts()["checkpoints_ignored"][0]["why"]

    newer = drive(new_group(), FakeReplica(0, engine=ENGINE), stop_at_barrier=3)
    rec.checkpoint("default", "q7", newer)
    assert [i[3] for i in rec.pending()] == [newer, None]  # a new coordinator gets the latest
    rec.coordinator_restarted("ActorDiedError: killed", 2)
    assert rec.facts()["coordinator_restarts"][0]["from_checkpoint"] == 1
    assert rec.facts()["resumed_groups"][-1] == {"sweep_point": "default", "problem_id": "q7", "round": 4,
                                                 "barriers": 3, "after": "coordinator restart"}
    rec.returned("default", "q7")
    rec.failed("default|q8: RuntimeError: stuck")
    assert rec.pending() == []
    rec.checkpoint("default", "q7", blob)  # late: ignored, the newer one stays on disk
    assert CheckpointStore(tmp_path).load_all()[("default", "q7")] == newer
    rec.written("default", "q7")
    assert ("default", "q7") not in CheckpointStore(tmp_path).load_all()
