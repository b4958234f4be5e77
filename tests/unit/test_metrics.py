"""Metrics: pass@k, majority votes, and a hand-computed summary."""

from __future__ import annotations

import json
import math
import random

import pytest

from orchestrator.core.metrics import (
    comm_round_list,
    compare_points,
    k_values,
    majority_vote,
    pass_at_k,
    per_problem,
    round_transitions,
    summarize,
)

# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2)
        (10, 3, 1, 0.3),
        (5, 1, 3, 0.6),  # 1 - C(4,3)/C(5,3) = 1 - 4/10
        (5, 3, 3, 1.0),  # n - c < k
        (8, 0, 4, 0.0),
        (8, 8, 1, 1.0),
        (1000, 1, 500, 0.5),
    ],
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_large_n_is_finite():
    value = pass_at_k(10_000, 37, 64)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(6) == [1, 2, 4, 6]
    assert k_values(32) == [1, 2, 4, 8, 16, 32]


# --------------------------------------------------------------------------- voting


def test_majority_groups_normalized_answers():
    vote = majority_vote(["025", "24", "25", "24", "25"], [True, False, True, False, True], [1] * 5)
    assert vote["answer"] == "25"
    assert vote["votes"] == 3
    assert vote["correct"] is True


def test_majority_tie_goes_to_first_occurrence():
    vote = majority_vote(["3", "4", "4", "3"], [False, True, True, False], [9, 1, 1, 9])
    assert vote["answer"] == "3" and vote["correct"] is False


def test_shortest_majority_tie_goes_to_shorter_mean_length():
    vote = majority_vote(["3", "4", "4", "3"], [False, True, True, False], [9, 1, 1, 9])
    assert vote["shortest_answer"] == "4" and vote["shortest_correct"] is True


def test_shortest_majority_does_not_override_a_clear_majority():
    vote = majority_vote(["3", "3", "4"], [False, False, True], [100, 100, 1])
    assert vote["shortest_answer"] == "3" and vote["shortest_correct"] is False


def test_shortest_majority_equal_means_fall_back_to_first():
    vote = majority_vote(["3", "4"], [False, True], [5, 5])
    assert vote["shortest_answer"] == "3"


def test_none_never_wins():
    vote = majority_vote([None, None, None, "5"], [False, False, False, True], [1, 1, 1, 1])
    assert vote["answer"] == "5" and vote["correct"] is True and vote["votes"] == 1


def test_all_none_is_incorrect():
    vote = majority_vote([None, None], [True, True], [1, 1])
    assert vote == {
        "answer": None,
        "correct": False,
        "shortest_answer": None,
        "shortest_correct": False,
        "votes": 0,
    }


def test_majority_length_mismatch():
    with pytest.raises(ValueError):
        majority_vote(["1"], [True, False], [1])


# --------------------------------------------------------------------------- summarize


def _row(
    sweep, bench, pid, answer, correct, compat, sampled, injected, rounds, changed, cached, uncached
):
    return {
        "sweep_point": sweep,
        "benchmark": bench,
        "problem_id": pid,
        "answer": answer,
        "correct": correct,
        "correct_compat": compat,
        "sampled_tokens": sampled,
        "injected_tokens": injected,
        "rounds": rounds,
        "answer_changed": changed,
        "cached_tokens": cached,
        "uncached_tokens": uncached,
    }


T, F = True, False
ROWS = [
    # T=4096 / aime, p1: "25" (two spellings) wins 2-1 over "24"; one path has no answer.
    _row("T=4096", "aime", "p1", "25", T, T, 100, 10, 2, T, 50, 50),
    _row("T=4096", "aime", "p1", "025", T, T, 200, 10, 2, F, 50, 50),
    _row("T=4096", "aime", "p1", "24", F, F, 300, 10, 3, None, 0, 100),
    _row("T=4096", "aime", "p1", None, F, F, 400, 10, 4, F, 0, 100),
    # p2: "7" and "8" tie 2-2; majority takes "7" (first, wrong), shortest takes "8" (right).
    _row("T=4096", "aime", "p2", "7", F, T, 500, 0, 1, None, 30, 10),
    _row("T=4096", "aime", "p2", "8", T, T, 100, 0, 1, None, 30, 10),
    _row("T=4096", "aime", "p2", "8", T, T, 100, 20, 1, None, 30, 10),
    _row("T=4096", "aime", "p2", "7", F, F, 500, 20, 1, T, 30, 10),
    # T=4096 / gpqa: one problem, tie A/B; B paths are shorter and right.
    _row("T=4096", "gpqa", "g1", "A", F, F, 10, 0, 1, None, 0, 0),
    _row("T=4096", "gpqa", "g1", "B", T, T, 5, 0, 1, None, 0, 0),
    # T=1024 / aime: three paths, no answers at all.
    _row("T=1024", "aime", 3, None, F, F, 30, 3, 1, None, 0, 0),
    _row("T=1024", "aime", 3, None, F, F, 30, 3, 1, None, 0, 0),
    _row("T=1024", "aime", 3, None, F, F, 30, 3, 1, None, 0, 0),
]


def test_summarize_hand_computed():
    out = summarize(ROWS)
    assert list(out) == ["T=1024", "T=4096"]
    assert list(out["T=4096"]) == ["aime", "gpqa"]
    aime = dict(out["T=4096"]["aime"])
    assert aime.pop("per_problem") == {
        "p1": {"paths": 4, "pass@1": 0.5, "cons@N": 1.0, "majority_answer": "25", "votes": 2},
        "p2": {"paths": 4, "pass@1": 0.5, "cons@N": 0.0, "majority_answer": "7", "votes": 2},
    }
    assert aime.pop("round_transitions") == {}  # no path wrote a summary
    assert aime == {
        "problems": 2,
        "paths_per_problem": 4,
        "pass@1": 0.5,  # (2/4 + 2/4) / 2
        "pass@1_compat": 0.625,  # (2/4 + 3/4) / 2
        "cons@N": 0.5,  # p1 right, p2 wrong
        "cons@N_shortest": 1.0,
        "pass@k": {1: 0.5, 2: 0.833333, 4: 1.0},  # 1 - C(2,2)/C(4,2) = 5/6
        "tokens_per_path": {"sampled": 275.0, "injected": 10.0, "total": 285.0},
        "rounds_mean": 1.875,  # 15 / 8
        "answer_changed_frac": 0.5,  # T, F, F, T over the 4 known
        "prefix_cache_hit_rate": 0.392857,  # 220 / 560
    }
    gpqa = out["T=4096"]["gpqa"]
    assert gpqa["cons@N"] == 0.0 and gpqa["cons@N_shortest"] == 1.0
    assert gpqa["pass@k"] == {1: 0.5, 2: 1.0}
    assert gpqa["answer_changed_frac"] is None
    assert gpqa["prefix_cache_hit_rate"] is None
    empty = out["T=1024"]["aime"]
    assert empty["pass@1"] == 0.0 and empty["cons@N"] == 0.0
    assert empty["pass@k"] == {1: 0.0, 2: 0.0, 3: 0.0}
    assert empty["tokens_per_path"] == {"sampled": 30.0, "injected": 3.0, "total": 33.0}


def _with_path_index(rows):
    out, seen = [], {}
    for row in rows:
        key = (row["sweep_point"], row["benchmark"], row["problem_id"])
        seen[key] = seen.get(key, -1) + 1
        out.append({**row, "path": seen[key]})
    return out


def test_summarize_is_byte_stable_under_row_order():
    indexed = _with_path_index(ROWS)
    shuffled = indexed[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != indexed
    assert json.dumps(summarize(shuffled)) == json.dumps(summarize(ROWS))
    assert json.dumps(per_problem(shuffled)) == json.dumps(per_problem(ROWS))


def test_vote_tie_follows_path_index_not_row_order():
    # p2's tie: path 0 answered "7"; listing path 3 ("7") last and path 1 ("8") first must not
    # hand the tie to "8".
    rows = [r for r in _with_path_index(ROWS) if r["problem_id"] == "p2"]
    reordered = [rows[1], rows[2], rows[3], rows[0]]
    assert per_problem(reordered)[0]["majority_answer"] == "7"


def test_per_problem():
    rows = per_problem(ROWS)
    keys = [(r["sweep_point"], r["benchmark"], r["problem_id"]) for r in rows]
    assert keys == [
        ("T=1024", "aime", 3),
        ("T=4096", "aime", "p1"),
        ("T=4096", "aime", "p2"),
        ("T=4096", "gpqa", "g1"),
    ]
    p2 = rows[2]
    assert p2["n"] == 4 and p2["pass@1"] == 0.5 and p2["pass@1_compat"] == 0.75
    assert p2["cons@N"] == 0.0 and p2["majority_answer"] == "7"
    assert rows[1]["cons@N"] == 1.0 and rows[1]["majority_answer"] == "25"


def test_summarize_empty():
    assert summarize([]) == {}
    assert per_problem([]) == []


# --------------------------------------------------------------------------- rounds and baselines


def _path(answers, verdicts, final, ok, pid="p", path=0, point="leap"):
    return {"sweep_point": point, "benchmark": "aime", "problem_id": pid, "path": path,
            "summaries": [f"s{i}" for i in range(len(answers))], "round_answers": answers,
            "round_correct": verdicts, "answer": final, "correct": ok, "correct_compat": ok,
            "sampled_tokens": 10, "injected_tokens": 1}


def test_round_transitions_counts_each_kind():
    paths = [
        _path(["3", "5"], [F, T], "5", T, path=0),  # r1 wrong->right, r2 unchanged
        _path(["5", "3"], [T, F], "4", F, path=1),  # r1 right->wrong, r2 wrong->other wrong
        _path(["3", "03"], [F, F], "3", F, path=2),  # "03" is "3": unchanged twice
        _path([None], [F], "7", F, path=3),  # no answer, then one: found, not changed
        _path(["1/2"], [T], "0.5", T, path=4),  # same value spelled two ways: unchanged
        _path([], [], "5", T, path=5),  # finished before the first summary: not counted
    ]
    table = round_transitions(paths, comm_rounds=[2, 4])
    assert table == {
        2: {"paths": 5, "answered": 4, "changed": 2, "wrong_to_right": 1, "right_to_wrong": 1,
            "wrong_to_wrong": 0, "right_to_right": 0, "no_answer_to_right": 0, "no_answer_to_wrong": 1},
        4: {"paths": 3, "answered": 3, "changed": 1, "wrong_to_right": 0, "right_to_wrong": 0,
            "wrong_to_wrong": 1, "right_to_right": 0, "no_answer_to_right": 0, "no_answer_to_wrong": 0},
    }
    # an answer that disappears is a change to a wrong verdict
    lost = round_transitions([_path(["5"], [T], None, F)])
    assert lost[1]["right_to_wrong"] == 1 and lost[1]["changed"] == 1
    assert list(round_transitions(paths)) == [1, 2]  # by summary index without comm_rounds


def test_round_transitions_unknown_when_not_graded_per_round():
    row = _path(["3"], [F], "3", F)
    row["round_answers"] = row["round_correct"] = None
    assert round_transitions([row]) is None
    with pytest.raises(ValueError, match="differ in length"):
        round_transitions([_path(["3", "4"], [F], "3", F)])


def test_comm_round_list():
    assert comm_round_list({"mode": "leap", "max_rounds": 4, "comm_rounds": None}) == [1, 2, 3]
    assert comm_round_list({"mode": "leap_t", "max_rounds": 4, "comm_rounds": [1, 3]}) == [1, 3]
    assert comm_round_list({"mode": "independent", "max_rounds": 4}) == []


def test_summarize_with_points_adds_settings_rounds_and_deltas():
    rows = []
    spec = {"ind": [F, F, T, F], "cm": [T, F, F, F], "leap": [T, T, F, T], "leap2": [F, F, F, F]}
    for point, oks in spec.items():
        for i, ok in enumerate(oks):
            row = _path(["1"], [F], "5" if ok else str(i), ok, path=i, point=point)
            if point in ("ind", "cm"):
                row["summaries"] = row["round_answers"] = row["round_correct"] = []
            rows.append(row)
    points = {
        "ind": {"mode": "independent", "max_rounds": 4},
        "cm": {"mode": "compute_matched", "max_rounds": 4, "match_point": "leap"},
        "leap": {"mode": "leap", "max_rounds": 4, "comm_rounds": (2,), "T": 64, "top_k": 2,
                 "router": "dispersed"},
        "leap2": {"mode": "leap", "max_rounds": 3, "T": 32},
    }
    out = summarize(rows, points=points)
    leap = out["leap"]["aime"]
    assert leap["settings"]["comm_rounds"] == [2] and leap["settings"]["T"] == 64
    assert list(leap["round_transitions"]) == [2]
    assert leap["vs_independent"] == {"point": "ind", "pass@1": 0.5, "cons@N": 1.0}
    # cm's four answers tie 1-1-1-1: the first (path 0, right) wins its vote, as leap's does
    assert leap["vs_compute_matched"] == {"point": "cm", "pass@1": 0.5, "cons@N": 0.0}
    # leap2 has no matched point of its own, and the one there is linked to leap
    assert "vs_compute_matched" not in out["leap2"]["aime"]
    assert out["leap2"]["aime"]["vs_independent"]["pass@1"] == -0.25
    assert "vs_independent" not in out["ind"]["aime"]
    assert out["cm"]["aime"]["vs_independent"] == {"point": "ind", "pass@1": 0.0, "cons@N": 1.0}
    assert compare_points(out, {}) == {}


# --------------------------------------------------------------------------- ungraded paths


def test_vote_takes_the_verdict_of_the_first_graded_path_with_the_winning_answer():
    vote = majority_vote(["5", "5", "3"], [None, True, False], [1, 1, 1])
    assert vote["answer"] == "5" and vote["correct"] is True
    undecided = majority_vote(["5", "5", "3"], [None, None, False], [1, 1, 1])
    assert undecided["answer"] == "5" and undecided["correct"] is None


def _graded_rows(verdicts_by_problem: dict, point="pt") -> list[dict]:
    rows = []
    for pid, verdicts in verdicts_by_problem.items():
        for i, ok in enumerate(verdicts):
            answer = None if ok is None else ("7" if ok else f"{i + 10}")
            rows.append(_row(point, "aime", pid, answer, ok, ok, 10, 0, 1, None, 0, 0) | {"path": i})
    return rows


def test_ungraded_paths_are_left_out_of_accuracy_and_counted_apart():
    rows = _graded_rows({"p1": [T, None, F, None], "p2": [None, None, None, None], "p3": [T, T, F, F]})
    m = summarize(rows)["pt"]["aime"]
    # p1: 1 of 2 graded right; p2: nothing graded (left out); p3: 2 of 4
    assert m["pass@1"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["ungraded"] == 6 and m["ungraded_votes"] == 1  # p2's vote has no graded path
    assert m["cons@N"] == pytest.approx((1.0 + 1.0) / 2)  # p1: 7 wins (one vote each: first); p3: 7
    assert m["per_problem"]["p1"]["ungraded"] == 2 and m["per_problem"]["p1"]["pass@1"] == 0.5
    assert m["per_problem"]["p2"]["pass@1"] is None and m["per_problem"]["p2"]["cons@N"] is None
    assert "ungraded" not in m["per_problem"]["p3"]
    # pass@4 only from problems with 4 graded paths (p3); pass@2 from p1 and p3
    assert m["pass@k"][4] == pytest.approx(pass_at_k(4, 2, 4))
    assert m["pass@k"][2] == pytest.approx((pass_at_k(2, 1, 2) + pass_at_k(4, 2, 2)) / 2)


def test_ungraded_counted_wrong_would_give_other_numbers():
    rows = _graded_rows({"p1": [T, None]})
    assert summarize(rows)["pt"]["aime"]["pass@1"] == 1.0  # not 0.5


def test_nothing_ungraded_writes_no_ungraded_keys():
    rows = _graded_rows({"p1": [T, F], "p2": [F, F]})
    m = summarize(rows)["pt"]["aime"]
    assert "ungraded" not in m and "ungraded_votes" not in m
    assert all("ungraded" not in p for p in m["per_problem"].values())
    assert json.dumps(summarize(rows), sort_keys=True).count("ungraded") == 0


def test_round_transitions_set_undecided_verdicts_apart():
    paths = [
        _path(["3"], [None], "5", T, path=0),  # the summary's check timed out
        _path(["3"], [F], "5", None, path=1),  # the final check timed out
        _path([None], [None], None, None, path=2),  # grading never finished
        _path(["3"], [F], "5", T, path=3),  # wrong -> right
    ]
    table = round_transitions(paths)
    assert table[1]["paths"] == 4 and table[1]["ungraded"] == 3
    assert table[1]["wrong_to_right"] == 1 and table[1]["changed"] == 1
    assert "ungraded" not in round_transitions(paths[3:])[1]
