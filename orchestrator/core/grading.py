"""Answer extraction and grading for math and GPQA outputs (DESIGN.md section 1, "Grading").

Contract
--------
- `math_verdict(text, gold, timeout_s=5.0, verify=None) -> bool | None`: math-verify's
  judgement, gold parsed first; None when it could not decide (the check timed out or raised):
  such a path is *ungraded*, never counted as wrong. math-verify's own timeouts use SIGALRM and
  fail outside the main thread, so both `parse` and `verify` get their timeouts as None and the
  whole check runs in a worker of a module-level thread pool bounded by
  `future.result(timeout_s)` (math-verify is imported before the clock starts). Safe from any
  thread and inside Ray actors. A check that never finishes keeps its thread busy (Python cannot
  kill a thread), so after a timeout later checks get a fresh thread pool. `verify(text, gold)`
  replaces math-verify itself (tests).
- `math_equal(text, gold, timeout_s=5.0) -> bool`: `math_verdict(...) is True` (an undecided
  check is False here; grading uses `math_verdict`).
- `extract_answer(text) -> str | None`: the path's answer, independent of the gold: the content
  of the last complete `\\boxed{...}` (or `\\fbox{...}`, braces balanced; empty boxes ignored),
  else the last number in the text, else None. Stored per path and used for voting.
- `normalize_answer(ans) -> str`: MATH-dataset style normalization, for the voting key.
- `leap_compat_correct(text, gold) -> bool`: the reference LeaP code's lenient scorer, rule for
  rule (see `compat.py`), so that `correct_compat` matches the paper's numbers.
- `extract_choice(text) -> str | None` and `gpqa_correct(text, gold_letter) -> bool`: the choice
  letter A-D from the last `ANSWER: X` (markdown bold, parentheses and a trailing period are
  tolerated), else from the last `\\boxed{X}`.
- `grade(text, gold, kind="math", check=None) -> dict`: {"answer", "correct",
  "correct_compat"}; math `correct` is `check(text, gold)` (default `math_verdict`): True, False,
  or None (ungraded).
- `grade_record(row, kind, check=None)`, `grade_rows(rows, kind, check=None)`: a path row graded
  (see `grade_record`); `ungraded_record(row)`: the row with every verdict None, for a path whose
  grading could not finish (its grading worker died or overran its deadline).
- `canonical_answer(ans) -> str | None`: the key majority voting groups answers by.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction

from .compat import reference_correct
from .text import strip_comments

logger = logging.getLogger(__name__)

_POOL_WORKERS = 8
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The shared grading pool, created on first use and again in a forked child process
    (a fork copies the pool object but not its threads)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=_POOL_WORKERS, thread_name_prefix="math-verify")
            _pool_pid = os.getpid()
        return _pool


# --------------------------------------------------------------------------- math-verify


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns that its timeouts are off; here time is bounded by `math_equal`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _gold_candidates(gold: str) -> list[str]:
    """Ways to present a bare gold answer so math-verify's latex extractor finds it."""
    gold = gold.strip()
    if "\\boxed" in gold or "$" in gold:
        return [gold]
    return [f"${gold}$", f"\\boxed{{{gold}}}", gold]


def _verify(text: str, gold: str) -> bool:
    """math-verify with its signal-based timeouts switched off (we bound time outside)."""
    from math_verify import parse, verify  # sympy behind it takes seconds: only where a grade is asked

    gold_parsed = []
    for candidate in _gold_candidates(gold):
        gold_parsed = parse(candidate, parsing_timeout=None)
        if gold_parsed:
            break
    if not gold_parsed:
        logger.warning("math-verify could not parse gold answer %r", gold)
        return False
    pred_parsed = parse(text, parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _abandon_executor() -> None:
    """Leave a pool whose thread is stuck in a timed-out check; later checks get fresh threads
    (the stuck thread runs on, and its idle peers exit when the pool is collected)."""
    global _pool
    with _pool_lock:
        _pool = None


def math_verdict(text: str, gold: str, timeout_s: float = 5.0, verify=None) -> bool | None:
    """True or False when math-verify judges the answer in `text` against `gold` within
    `timeout_s`; None when it could not decide (timed out or raised): the check is ungraded."""
    if verify is None:
        import math_verify  # noqa: F401  # imported before the clock: the first import takes seconds
    future = _executor().submit(verify or _verify, text, gold)
    try:
        return bool(future.result(timeout=timeout_s))
    except FutureTimeout:
        future.cancel()
        _abandon_executor()
        logger.warning("math-verify timed out after %.1fs (gold=%r); ungraded", timeout_s, gold)
        return None
    except Exception:  # math-verify should not raise; a bug there must not kill a run
        logger.exception("math-verify failed (gold=%r); ungraded", gold)
        return None


def math_equal(text: str, gold: str, timeout_s: float = 5.0) -> bool:
    """True when math-verify judges the answer in `text` equal to `gold` within `timeout_s`."""
    return math_verdict(text, gold, timeout_s) is True


# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE_RE = re.compile(r"\\boxed ([^\s${}]+)")
_NUMBER_RE = re.compile(r"-?\d*\.?\d+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _balanced_content(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before `start`, or None."""
    depth = 1
    for pos in range(start, len(text)):
        ch = text[pos]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:pos]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed{...}`/`\\fbox{...}` (or `\\boxed x`)."""
    candidates: list[tuple[int, str]] = []
    for match in _BOX_RE.finditer(text):
        content = _balanced_content(text, match.end())
        if content is not None and content.strip():
            candidates.append((match.start(), content.strip()))
    for match in _BOX_SPACE_RE.finditer(text):
        candidates.append((match.start(), match.group(1)))
    if not candidates:
        return None
    return max(candidates)[1]


def last_number(text: str) -> str | None:
    """The last number in the text (thousands separators dropped), or None."""
    numbers = _NUMBER_RE.findall(_THOUSANDS_RE.sub("", text))
    return numbers[-1] if numbers else None


def extract_answer(text: str) -> str | None:
    """The reference code's answer: last `\\boxed{}` content, else the last number, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return last_number(text)


# --------------------------------------------------------------------------- normalization

_UNIT_AFTER_NUMBER_RE = re.compile(r"^([-+]?[\d.,]+)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_SQRT_RE = re.compile(r"\\sqrt([^{\\\s])")
_FRAC_TWO_CHARS_RE = re.compile(r"\\frac([0-9a-zA-Z])([0-9a-zA-Z])")
_FRAC_FIRST_CHAR_RE = re.compile(r"\\frac([0-9a-zA-Z])\{")
_FRAC_SECOND_CHAR_RE = re.compile(r"\\frac\{([^{}]*)\}([0-9a-zA-Z])")
_A_SLASH_B_RE = re.compile(r"^(-?)(\d+)/(\d+)$")


def _drop_markup(s: str) -> str:
    """Remove layout commands that never change the value."""
    for old in ("\n", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "\\left", "\\right"):
        s = s.replace(old, "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    for deg in ("^{\\circ}", "^\\circ", "^{\\circ }"):
        s = s.replace(deg, "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    return s


def _drop_units(s: str) -> str:
    """Drop units (MATH's `\\text{ ` rule, or text after a bare number), unwrap `\\text{}`."""
    if "\\text{ " in s:
        s = s.split("\\text{ ")[0]
    s = s.strip()
    s = _UNIT_AFTER_NUMBER_RE.sub(r"\1", s)
    return _TEXT_WRAP_RE.sub(r"\1", s)


def _fix_leading_point(s: str) -> str:
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    return "0" + s if s.startswith(".") else s


def _drop_short_lhs(s: str) -> str:
    """`x = 5` -> `5` when there is one `=` and its left side is at most two characters."""
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:
        return parts[1]
    return s


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` and `\\frac{1}2` likewise."""
    s = _FRAC_TWO_CHARS_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_FIRST_CHAR_RE.sub(r"\\frac{\1}{", s)
    return _FRAC_SECOND_CHAR_RE.sub(r"\\frac{\1}{\2}", s)


def _fix_a_slash_b(s: str) -> str:
    """`3/4` -> `\\frac{3}{4}` for plain integers (sign kept outside)."""
    match = _A_SLASH_B_RE.match(s)
    if not match:
        return s
    sign, num, den = match.groups()
    return f"{sign}\\frac{{{num}}}{{{den}}}"


def normalize_answer(ans: str) -> str:
    """MATH-style normalization of an answer string (the `strip_string` rules)."""
    s = _drop_markup(ans)
    s = _drop_units(s)
    s = _fix_leading_point(s.strip())
    s = _drop_short_lhs(s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    s = s.rstrip(".")
    return _fix_a_slash_b(s)


# --------------------------------------------------------------------------- voting key

_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")
_FRAC_NUMBER_RE = re.compile(r"^([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}$")


def _as_number(s: str) -> Fraction | None:
    """The value of a normalized answer that is a plain number or an integer fraction."""
    s = _THOUSANDS_RE.sub("", s)
    if _PLAIN_NUMBER_RE.match(s):
        return Fraction(s)
    match = _FRAC_NUMBER_RE.match(s)
    if match and int(match.group(3)) != 0:
        sign = -1 if match.group(1) == "-" else 1
        return sign * Fraction(int(match.group(2)), int(match.group(3)))
    return None


def canonical_answer(ans: str | None) -> str | None:
    """A voting key: normalized answer, numbers reduced to one spelling ("025" -> "25")."""
    if ans is None:
        return None
    norm = normalize_answer(ans)
    if not norm:
        return None
    value = _as_number(norm)
    if value is not None:
        return str(value.numerator) if value.denominator == 1 else f"{value}"
    return norm


def leap_compat_correct(text: str, gold: str) -> bool:
    """The reference LeaP code's lenient verdict, quirks included (see `compat`)."""
    return reference_correct(text, str(gold))


# --------------------------------------------------------------------------- GPQA

_CHOICE_RE = re.compile(
    r"(?i:answer)[\s*_]*:[\s*_]*(?:\\text\{)?\s*\(?\s*\**\s*([A-D])\b(?!['-])"
)
_BOXED_CHOICE_RE = re.compile(r"^\(?\s*([A-D])\s*\)?\.?$")
_ANSWER_IS_RE = re.compile(r"(?i:answer\s+is)[\s*:]*\(?\s*([A-D])\b(?!['-])")


def _choice_in_box(content: str) -> str | None:
    content = _TEXT_WRAP_RE.sub(r"\1", content).strip()
    match = _BOXED_CHOICE_RE.match(content)
    return match.group(1) if match else None


def extract_choice(text: str) -> str | None:
    """The choice letter from the last `ANSWER: X`, else from the last `\\boxed{X}`."""
    matches = _CHOICE_RE.findall(text)
    if matches:
        return matches[-1]
    boxed = last_boxed(text)
    return _choice_in_box(boxed) if boxed is not None else None


def _lenient_choice(text: str) -> str | None:
    """extract_choice, else the last `answer is (X)`."""
    choice = extract_choice(text)
    if choice is not None:
        return choice
    matches = _ANSWER_IS_RE.findall(text)
    return matches[-1] if matches else None


def gpqa_correct(text: str, gold_letter: str) -> bool:
    """True when the extracted choice letter is the gold letter."""
    return extract_choice(text) == gold_letter.strip().upper()


# --------------------------------------------------------------------------- entry point

GRADE_KINDS = ("math", "gpqa")


def grade(text: str, gold: str, kind: str = "math", check=None) -> dict:
    """Grade one output: {"answer", "correct" (math-verify or letter), "correct_compat"}. Math's
    `correct` is `check(text, gold)` (default `math_verdict`): None when it could not decide."""
    if kind == "math":
        return {
            "answer": extract_answer(text),
            "correct": (check or math_verdict)(text, str(gold)),
            "correct_compat": leap_compat_correct(text, str(gold)),
        }
    if kind == "gpqa":
        gold_letter = str(gold).strip().upper()
        return {
            "answer": extract_choice(text),
            "correct": gpqa_correct(text, gold_letter),
            "correct_compat": _lenient_choice(text) == gold_letter,
        }
    raise ValueError(f"unknown grading kind {kind!r}; allowed: {', '.join(GRADE_KINDS)}")


def _verdict(value) -> bool | None:
    return None if value is None else bool(value)


def grade_record(row: dict, kind: str = "math", check=None) -> dict:
    """Fill a path row's `answer`, `correct`, `correct_compat` and `answer_changed` from its
    `text` (peer blocks stripped) and `gold`. Pure and picklable: the driver runs it in a process
    pool, off the coordinator and off the generation's critical path. `correct` (and each of
    `round_correct`) is None where the check could not decide: the path is ungraded there."""
    graded = grade(strip_comments(row["text"]), row["gold"], kind=kind, check=check)
    answer = None if graded["answer"] is None else str(graded["answer"])
    first = row.get("answer_first_summary")
    changed = None
    if first is not None and answer is not None:
        changed = canonical_answer(first) != canonical_answer(answer)
    round_answers, round_correct = grade_rounds(row.get("summaries") or [], row["gold"], kind, check=check)
    return {**row, "answer": answer, "correct": _verdict(graded["correct"]),
            "correct_compat": bool(graded["correct_compat"]), "answer_changed": changed,
            "round_answers": round_answers, "round_correct": round_correct}


def ungraded_record(row: dict) -> dict:
    """A path row whose grading could not finish (its worker died or overran): every verdict
    and extracted answer None, one None per summary, so that no metric counts it as wrong."""
    n = len(row.get("summaries") or [])
    return {**row, "answer": None, "correct": None, "correct_compat": None, "answer_changed": None,
            "round_answers": [None] * n, "round_correct": [None] * n}


def grade_rounds(summaries: list[str], gold: str, kind: str = "math",
                 cache: dict | None = None, check=None) -> tuple[list[str | None], list[bool | None]]:
    """The answer in each of a path's summaries (written at its communication rounds, before it
    read its peers) and its verdict: math, `extract_answer` of the summary graded as
    `\\boxed{answer}` by `check` (default `math_verdict`; None: undecided); GPQA, the choice
    letter against the gold letter. No answer is wrong. `cache` (shared across calls) grades
    each (answer, gold) once."""
    cache = {} if cache is None else cache
    answers: list[str | None] = []
    verdicts: list[bool | None] = []
    for summary in summaries:
        if kind == "gpqa":
            answer = _lenient_choice(summary or "")
            ok = answer is not None and answer == str(gold).strip().upper()
        else:
            answer = extract_answer(summary or "")
            key = (canonical_answer(answer), str(gold))
            if answer is None:
                ok = False
            elif key in cache:
                ok = cache[key]
            else:
                ok = cache[key] = (check or math_verdict)(f"\\boxed{{{answer}}}", str(gold))
        answers.append(answer)
        verdicts.append(_verdict(ok))
    return answers, verdicts


def current_answer(text: str, kind: str = "math") -> str | None:
    """The answer a path gives in `text` (a summary, or an answer probe's forcing suffix and
    output), normalized for voting: math, `canonical_answer` of `extract_answer`; GPQA, the
    choice letter as `grade_rounds` reads it. None: no answer."""
    if kind == "gpqa":
        return _lenient_choice(text or "")
    return canonical_answer(extract_answer(text or ""))


def grade_rows(rows: list[dict], kind: str = "math", check=None) -> tuple[list[dict], float]:
    """Grade a group's path rows; returns them and the seconds it took (for run_info.json)."""
    t0 = time.perf_counter()
    return [grade_record(r, kind, check) for r in rows], time.perf_counter() - t0


__all__ = [
    "GRADE_KINDS",
    "grade_record",
    "grade_rounds",
    "grade_rows",
    "canonical_answer",
    "current_answer",
    "extract_answer",
    "extract_choice",
    "gpqa_correct",
    "grade",
    "last_boxed",
    "last_number",
    "leap_compat_correct",
    "math_equal",
    "math_verdict",
    "normalize_answer",
    "ungraded_record",
]
