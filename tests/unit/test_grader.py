"""The driver's grading pool: results in submission order, and a deadline on a stuck group."""

from __future__ import annotations

import pytest

from orchestrator.errors import DeadlineError
from orchestrator.runner import Grader


def _group(problem_id: str, text: str, gold: str) -> dict:
    row = {"text": text, "gold": gold, "summaries": [], "answer_first_summary": None}
    return {"point": "pt", "problem_id": problem_id, "kind": "math", "paths": [row], "messages": []}


def test_grades_in_submission_order():
    grader = Grader(workers=1)
    try:
        grader.submit(_group("a", "so \\boxed{70}", "70"))
        grader.submit(_group("b", "so \\boxed{12}", "70"))
        out = grader.drain()
    finally:
        grader.close()
    assert [g["problem_id"] for g in out] == ["a", "b"]
    assert [g["paths"][0]["correct"] for g in out] == [True, False]
    assert grader.busy_s > 0


def test_a_group_past_its_deadline_ends_the_wait_naming_it():
    grader = Grader(workers=1, deadline_s=lambda rows: 0.0)  # no worker has even started yet
    grader.submit(_group("p7", "\\boxed{1}", "1"))
    grader.submit(_group("p8", "\\boxed{1}", "1"))
    with pytest.raises(DeadlineError, match=r"problem p7 \(sweep point pt\).*checkpoint is kept"):
        grader.drain()
    assert grader.pool is None and grader.pending == []  # workers killed, nothing left to wait on
    assert grader.drain() == []
