"""The reference LeaP code's lenient math scorer, re-implemented rule for rule.

Numbers in the paper come from this scorer, so `correct_compat` must agree with it, quirks
included (this module is our own code; only the rules are taken from the reference):

1. Text and gold are lower-cased.
2. The prediction is the content of the last complete `\\boxed{...}`. If there is none (or it is
   empty), then: for a numeric gold, the last number-like token (`[-+]?\\d*[.,/]?\\d+`); otherwise
   the text after the last "answer is" / "solution is" / "answer should be", or else after the
   last "is", up to the first ".\\n" and without trailing dots. No such phrase: incorrect.
3. Both sides go through MATH's `strip_string` normalization (`_strip` below, same steps in the
   same order). Then: two numbers compare as floats; a gold like `$x$` matches when contained in
   the prediction; a non-numeric side of at least 3 characters, neither side negative, matches
   when it is a substring of the other; otherwise the strings must be equal.
4. A normalization step that fails (as the reference's asserts and indexing can) makes the
   comparison fall back to the raw lower-cased strings.
"""

from __future__ import annotations

import re

_BOXED_START = re.compile(r"\\boxed\{")
_NUMBER_TOKEN = re.compile(r"[\-+]?\d*[\.,/]?\d+")
_PAREN_FRACTION = re.compile(r"\(\((\d+)\)/\((\d+)\)\)")
_SINGLE_INLINE_MATH = re.compile(r"^\$[^$]+\$$")
_PHRASES = ("answer is", "solution is", "answer should be")


class _StripError(ValueError):
    """A normalization step that the reference would have crashed on."""


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete `\\boxed{...}`, in order (braces balanced)."""
    found = []
    for match in _BOXED_START.finditer(text):
        depth = 0
        for pos in range(match.end() - 1, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[match.end():pos])
                    break
    return found


def _is_number(s: str) -> bool:
    try:
        float(s.strip("$"))
    except ValueError:
        return False
    return True


def _units(s: str) -> str:
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise _StripError("more than one unit")
    return parts[0]


def _sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    head, *rest = s.split("\\sqrt")
    out = [head]
    for part in rest:
        if not part:
            raise _StripError("\\sqrt at the end")
        out.append("\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:]))
    return "".join(out)


def _fracs(s: str) -> str:
    head, *rest = s.split("\\frac")
    out = [head]
    for part in rest:
        out.append("\\frac")
        if not part:
            raise _StripError("\\frac at the end")
        if part[0] == "{":
            out.append(part)
            continue
        if len(part) < 2:
            return s  # the reference gives up on the whole string here
        a, b, tail = part[0], part[1], part[2:]
        out.append("{" + a + "}{" + b + "}" + tail if b != "{" else "{" + a + "}" + b + tail)
    return "".join(out)


def _a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _strip(s: str) -> str:
    """MATH's `strip_string`, step for step."""
    s = _PAREN_FRACTION.sub(lambda m: "\\frac{" + m.group(1) + "}{" + m.group(2) + "}", s)
    s = s.replace(",", "").replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _units(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _sqrt(s)
    s = s.replace("\\quad", " ").replace(" ", "")
    s = _fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _a_slash_b(s)


def equivalent(pred: str | None, gold: str | None) -> bool:
    """The reference's `is_equiv` verdict on two (lower-cased) answer strings."""
    if pred is None or gold is None:
        return pred is None and gold is None
    try:
        p, g = _strip(pred), _strip(gold)
    except _StripError:
        return pred == gold
    p_num, g_num = _is_number(p), _is_number(g)
    if p_num and g_num:
        return float(p.strip("$")) == float(g.strip("$"))
    if _SINGLE_INLINE_MATH.match(g):
        return g.strip("$") in p.strip("$")
    signed = p.startswith("-") or g.startswith("-")
    if len(p) >= 3 and not p_num and not signed and p in g:
        return True
    if len(g) >= 3 and not g_num and not signed and g in p:
        return True
    return p == g


def _tail_answer(tail: str) -> str:
    tail = tail.strip().lstrip(":").strip()
    tail = tail.split(".\n")[0].strip().strip(".")
    return tail.strip()


def extract(text: str, gold: str) -> str | None:
    """The prediction the reference would grade (inputs already lower-cased)."""
    boxed = boxed_contents(text)
    pred = boxed[-1].strip() if boxed else None
    if pred not in (None, "", "{}"):
        return pred
    if _is_number(_strip(gold)):
        numbers = _NUMBER_TOKEN.findall(text)
        return numbers[-1] if numbers else None
    for phrase in _PHRASES:
        if phrase in text:
            return _tail_answer(text.split(phrase)[-1])
    if "is" in text:
        return _tail_answer(text[text.rfind("is") + 2:])
    return None


def reference_correct(text: str, gold: str) -> bool:
    """True when the reference LeaP scorer would mark `text` correct for `gold`."""
    text, gold = text.lower(), str(gold).lower()
    try:
        pred = extract(text, gold)
    except _StripError:  # the reference crashes on such a gold; count it as wrong
        return False
    if pred is None:
        return False
    return equivalent(pred, gold)
