"""Grading: extraction, MATH-style normalization, math-verify in threads, GPQA letters."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.core import grading
from orchestrator.core.grading import (
    canonical_answer,
    extract_answer,
    extract_choice,
    gpqa_correct,
    grade,
    leap_compat_correct,
    math_equal,
    normalize_answer,
)

# --------------------------------------------------------------------------- extraction


def test_boxed_with_nested_braces():
    text = r"so the value is \boxed{\frac{a}{\sqrt{b+1}}}, done"
    assert extract_answer(text) == r"\frac{a}{\sqrt{b+1}}"


def test_last_boxed_wins():
    text = r"first \boxed{12}, wait, actually \boxed{\frac{3}{4}} and 99 more words"
    assert extract_answer(text) == r"\frac{3}{4}"


def test_fbox_counts_as_box():
    assert extract_answer(r"\boxed{1} then \fbox{2}") == "2"


def test_unclosed_last_box_falls_back_to_earlier_box():
    assert extract_answer(r"\boxed{3} hmm \boxed{4") == "3"


def test_no_boxed_uses_last_number():
    assert extract_answer("we get 3, then 1,024 and finally -2.5 apples.") == "-2.5"
    assert extract_answer("the total is 1,024.") == "1024"
    assert extract_answer("no digits here") is None


def test_empty_box_is_ignored():
    assert extract_answer(r"it is 7 so \boxed{}") == "7"


# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\frac1{2}", r"\frac{1}{2}"),
        ("3/4", r"\frac{3}{4}"),
        (r"90^\circ", "90"),
        (r"\$18.90", "18.90"),
        (r"10\text{ cm}", "10"),
        (r"x = 5", "5"),
        ("5.", "5"),
        (".5", "0.5"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"50\%", "50"),
        (r"y = 2x + 1 = 7", "y=2x+1=7"),  # two '=': kept
        (r"\text{(B)}", "(B)"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "text, gold",
    [
        (r"\boxed{025}", "25"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{5.0}", "5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\dfrac{1}{2}}", "1/2"),
        (r"\boxed{x = 12}", "12"),
        ("so the answer is 204.", "204"),
        (r"\boxed{\left(3, 4\right)}", "(3,4)"),
        (r"\boxed{\$5}", "5"),
    ],
)
def test_leap_compat_accepts(text, gold):
    assert leap_compat_correct(text, gold)


@pytest.mark.parametrize(
    "text, gold",
    [
        (r"\boxed{26}", "25"),
        (r"\boxed{250}", "25"),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
        ("nothing numeric", "25"),
        (r"\boxed{25} but then \boxed{24}", "25"),  # last box wins
        (r"\boxed{1000001}", "1000000"),  # integers compare exactly
    ],
)
def test_leap_compat_rejects(text, gold):
    assert not leap_compat_correct(text, gold)


def test_canonical_answer_merges_spellings():
    assert canonical_answer("025") == canonical_answer("25") == "25"
    assert canonical_answer("1,000") == canonical_answer("1000")
    assert canonical_answer("0.5") == canonical_answer(r"\frac{1}{2}") == canonical_answer("1/2")
    assert canonical_answer(None) is None
    assert canonical_answer("  ") is None


# --------------------------------------------------------------------------- math-verify


@pytest.mark.parametrize(
    "text, gold",
    [
        (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"The answer is $\boxed{\frac{1}{2}}$.", "0.5"),
        (r"The answer is $\boxed{0.5}$.", r"\frac{1}{2}"),
        ("The answer is 1/2", r"\frac{1}{2}"),
        (r"Thus $\boxed{025}$", "25"),
        (r"So \boxed{204}", "204"),
    ],
)
def test_math_equal_accepts(text, gold):
    assert math_equal(text, gold)


@pytest.mark.parametrize(
    "text, gold",
    [
        (r"The answer is $\boxed{\frac{1}{3}}$.", r"\frac{1}{2}"),
        (r"So \boxed{205}", "204"),
        ("I do not know.", "204"),
    ],
)
def test_math_equal_rejects(text, gold):
    assert not math_equal(text, gold)


def test_math_equal_from_eight_threads():
    cases = [(rf"\boxed{{{i}}}", str(i), True) for i in range(8)]
    cases += [(rf"\boxed{{{i}}}", str(i + 1), False) for i in range(8)]
    cases += [(r"\boxed{\frac{2}{4}}", "0.5", True)] * 8
    start = threading.Barrier(8)

    def check(case):
        text, gold, expected = case
        if threading.current_thread() is not threading.main_thread():
            try:
                start.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        return math_equal(text, gold) == expected

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(check, cases))
    assert all(results)


def test_math_equal_times_out_false(monkeypatch):
    def slow(text, gold):
        time.sleep(1.0)
        return True

    monkeypatch.setattr(grading, "_verify", slow)
    began = time.monotonic()
    assert math_equal(r"\boxed{1}", "1", timeout_s=0.1) is False
    assert time.monotonic() - began < 0.9


def test_math_equal_error_is_false(monkeypatch):
    def broken(text, gold):
        raise RuntimeError("boom")

    monkeypatch.setattr(grading, "_verify", broken)
    assert math_equal(r"\boxed{1}", "1") is False


def test_math_verdict_is_none_when_it_cannot_decide(monkeypatch):
    assert grading.math_verdict(r"\boxed{1}", "1") is True
    assert grading.math_verdict(r"\boxed{2}", "1") is False

    def slow(text, gold):
        time.sleep(1.0)
        return True

    monkeypatch.setattr(grading, "_verify", slow)
    assert grading.math_verdict(r"\boxed{1}", "1", timeout_s=0.1) is None

    def broken(text, gold):
        raise RuntimeError("boom")

    monkeypatch.setattr(grading, "_verify", broken)
    assert grading.math_verdict(r"\boxed{1}", "1") is None


def test_a_timed_out_check_gets_fresh_threads_after_it():
    gate = threading.Event()

    def stuck(text, gold):
        gate.wait(30)
        return True

    try:
        for _ in range(grading._POOL_WORKERS + 1):  # more stuck checks than the pool has threads
            assert grading.math_verdict("x", "1", timeout_s=0.05, verify=stuck) is None
        assert grading.math_verdict(r"\boxed{1}", "1") is True  # not queued behind them
    finally:
        gate.set()


def _undecided(text, gold):
    return None


def test_an_undecided_check_leaves_the_path_ungraded_not_wrong():
    row = {"text": r"so \boxed{7}", "gold": "7", "summaries": [r"maybe \boxed{7}", "no answer yet"],
           "answer_first_summary": "7"}
    graded = grading.grade_record(row, check=_undecided)
    assert graded["correct"] is None and graded["answer"] == "7"
    assert graded["correct_compat"] is True  # the lenient scorer has no timeout: still decided
    assert graded["round_answers"] == ["7", None] and graded["round_correct"] == [None, False]
    decided = grading.grade_record(row)
    assert decided["correct"] is True and decided["round_correct"] == [True, False]


def test_ungraded_record_has_no_verdicts():
    row = {"text": r"\boxed{7}", "gold": "7", "summaries": ["a", "b"], "answer": "stale", "path": 3}
    out = grading.ungraded_record(row)
    assert out["path"] == 3 and out["text"] == row["text"]
    assert out["answer"] is None and out["correct"] is None and out["correct_compat"] is None
    assert out["round_answers"] == [None, None] and out["round_correct"] == [None, None]


# --------------------------------------------------------------------------- GPQA


@pytest.mark.parametrize(
    "text, letter",
    [
        ("reasoning...\nANSWER: C", "C"),
        ("**ANSWER:** (B)", "B"),
        ("Answer: B.", "B"),
        ("answer: d", None),  # letters must be capitals
        ("ANSWER: A\nwait, no.\nANSWER: D", "D"),
        ("ANSWER: Because it is blue", None),
        (r"so \boxed{B}", "B"),
        (r"so \boxed{\text{(C)}}", "C"),
        (r"ANSWER: A and \boxed{B}", "A"),  # ANSWER line beats the box
        ("no letter at all", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_gpqa_correct():
    assert gpqa_correct("ANSWER: B", "B")
    assert gpqa_correct("ANSWER: B", " b ")
    assert not gpqa_correct("ANSWER: C", "B")
    assert not gpqa_correct("I cannot decide", "B")


# --------------------------------------------------------------------------- grade


def test_grade_math():
    result = grade(r"... \boxed{025}", "25")
    assert result == {"answer": "025", "correct": True, "correct_compat": True}
    wrong = grade(r"... \boxed{24}", "25")
    assert wrong == {"answer": "24", "correct": False, "correct_compat": False}


def test_grade_gpqa():
    assert grade("**ANSWER:** (D)", "D", kind="gpqa") == {
        "answer": "D",
        "correct": True,
        "correct_compat": True,
    }
    lenient = grade("so the answer is (C)", "C", kind="gpqa")
    assert lenient == {"answer": None, "correct": False, "correct_compat": True}


def test_grade_unknown_kind():
    with pytest.raises(ValueError, match="math"):
        grade("x", "y", kind="code")


# --------------------------------------------------------------------------- reference compat
# Each verdict below follows from the reference scorer's rules (lower-casing, last complete
# \boxed{}, numeric-gold last-number fallback, strip_string, the containment quirk).
from orchestrator.core.compat import reference_correct  # noqa: E402

REFERENCE_CASES = [
    ("so \\boxed{025}", "25", True),
    ("we get \\boxed{} and the result is 12 apples", "12", True),
    ("therefore the answer is x+1.\nok", "x+1", True),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{3}", True),  # containment quirk of the reference
    ("\\boxed{-5}", "5", False),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{x = 3}", "3", True),
    ("\\boxed{10\\text{ cm}}", "10", True),
    ("\\boxed{A}", "a", True),
    ("no digits here at all", "7", False),
    ("the answer is 7", "7", True),
    ("\\boxed{5} then later \\boxed{12", "5", True),  # an unclosed box does not count
    ("\\boxed{3}", "$3$", True),
    ("the value is 1/2", "1/2", True),
    ("\\boxed{4}", "5", False),
    ("\\boxed{3.0}", "3", True),
    ("nothing to say", "x+1", False),  # non-numeric gold, no phrase with 'is'
]


@pytest.mark.parametrize("text, gold, expected", REFERENCE_CASES)
def test_reference_compatible_verdicts(text, gold, expected):
    assert reference_correct(text, gold) is expected
    assert leap_compat_correct(text, gold) is expected
