"""Path lengths remembered per sweep point's settings (`engines.past_lengths`), for the next plan."""

import logging

from orchestrator.engines import past_lengths
from orchestrator.engines.counted import lengths_from_rows

RUN = {"model.path": "builtin:smollm2", "engine.kind": "cpu", "sampling.temperature": 0.6, "prompts": "abc"}
LEAP = {"mode": "leap", "T": 128, "max_rounds": 3, "top_k": 2, "seed": 0}


def rows(point: str, think: int, answer: int, n: int = 2) -> list[dict]:
    return [{"sweep_point": point, "finish_reason": "eos",
             "requests": [{"kind": "segment", "new_tokens": think}, {"kind": "answer", "new_tokens": answer}]}] * n


def test_a_key_follows_the_settings_but_not_the_seed():
    base = past_lengths.point_keys(RUN, {"a": LEAP})["a"]
    assert past_lengths.point_keys(RUN, {"b": {**LEAP, "seed": 7}})["b"] == base  # a new seed: the same lengths
    assert past_lengths.point_keys(RUN, {"a": {**LEAP, "T": 256}})["a"] != base
    assert past_lengths.point_keys(RUN, {"a": {**LEAP, "mode": "independent"}})["a"] != base
    assert past_lengths.point_keys({**RUN, "sampling.temperature": 1.0}, {"a": LEAP})["a"] != base


def test_the_newest_record_of_each_point_comes_back_under_this_runs_names(tmp_path):
    path = tmp_path / "lengths.jsonl"
    keys = past_lengths.point_keys(RUN, {"leap": LEAP, "indep": {**LEAP, "mode": "independent"}})
    assert past_lengths.recall(keys, path) is None  # nothing recorded yet
    first = lengths_from_rows(rows("leap", 300, 40) + rows("indep", 200, 20))
    assert past_lengths.remember(keys, first, "out/1", path) == 2
    assert past_lengths.remember({"leap": keys["leap"]}, lengths_from_rows(rows("leap", 350, 30)), "out/2", path) == 1
    got = past_lengths.recall(keys, path)
    assert got["points"]["leap"]["think"] == [[350, "eos"], [350, "eos"]]  # the newer run's
    assert got["points"]["leap"]["answer"] == [30, 30]
    assert got["points"]["indep"]["think"] == [[200, "eos"], [200, "eos"]]
    assert got["think"] == [] and got["answer"] == []  # nothing pooled: an unrecorded point keeps its budget
    assert "out/1" in got["source"] and "out/2" in got["source"]
    # another run whose point has the same settings under another name draws from it
    renamed = past_lengths.recall({"baseline": keys["indep"], "new": "0" * 16}, path)
    assert set(renamed["points"]) == {"baseline"} and renamed["paths"] == 2


def test_large_pools_are_thinned_and_bad_lines_skipped(tmp_path):
    path = tmp_path / "lengths.jsonl"
    keys = past_lengths.point_keys(RUN, {"p": LEAP})
    many = [{"sweep_point": "p", "finish_reason": None, "requests": [{"kind": "segment", "new_tokens": i}]}
            for i in range(past_lengths.MAX_POOL * 3)]
    past_lengths.remember(keys, lengths_from_rows(many), "out", path)
    path.write_text("not json " + keys["p"] + "\n" + path.read_text())
    got = past_lengths.recall(keys, path)["points"]["p"]
    assert len(got["think"]) == past_lengths.MAX_POOL and got["paths"] == past_lengths.MAX_POOL * 3
    assert got["think"][0] == [0, None] and got["think"][-1][0] > past_lengths.MAX_POOL * 2  # spread over all


def test_an_unwritable_cache_is_a_warning(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")
    keys = past_lengths.point_keys(RUN, {"p": LEAP})
    with caplog.at_level(logging.WARNING):
        assert past_lengths.remember(keys, lengths_from_rows(rows("p", 10, 2)), "out", blocked / "lengths.jsonl") == 0
    assert "could not record" in caplog.text
