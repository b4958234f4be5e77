"""Prompt wording: loaded from a YAML file (conf/prompts/default.yaml) and rendered into text.

The core never hard-codes wording; it only relies on the tags. A file that lacks a key, breaks
a tag rule or holds a template that `str.format` cannot fill is rejected when it is loaded, with
an error naming the file and the key (`PromptError`).

Three keys are `str.format` templates: `instruction` ({question}), `comment_block` ({peers}) and
`peer_line` ({index}, {summary}); a literal brace there is written `{{` or `}}`. Every other key
is used as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from random import Random

import yaml

from .errors import UserError
from .files import read_utf8
from .types import Problem

SUMMARY_OPEN = "<summarize>"
SUMMARY_CLOSE = "</summarize>"
COMMENT_OPEN = "<comment>"
COMMENT_CLOSE = "</comment>"
THINK_END = "</think>"

_KINDS = ("math", "gpqa")


@dataclass(frozen=True)
class PromptSet:
    instruction: dict[str, str]
    leap_note: str
    triggers: tuple[str, ...]
    openers: tuple[str, ...]
    comment_block: str
    peer_line: str
    no_comments: str
    reflection: str
    answer_forcing: dict[str, str]
    leap_prefill: dict[str, str] | None = None
    source: str = "<inline>"

    # -- rendering -----------------------------------------------------------------------------
    def user_turn(self, problem: Problem, with_leap_note: bool) -> str:
        text = self.instruction[problem.kind].format(question=problem.question)
        if with_leap_note and self.leap_note:
            text = f"{text}\n\n{self.leap_note}"
        return text

    def prefill(self, problem: Problem, with_leap_note: bool) -> str:
        """Text the assistant turn starts with (after the chat template), in LeaP mode only."""
        if not with_leap_note or not self.leap_prefill:
            return ""
        return self.leap_prefill.get(problem.kind, "")

    def summary_prompt(self, rng: Random) -> str:
        """Trigger sentence and summary opener, drawn with the path's RNG for this round."""
        return f"{rng.choice(self.triggers)} {rng.choice(self.openers)}"

    def peer_block(self, summaries: list[str]) -> str:
        if not summaries:
            return self.no_comments
        lines = "\n".join(
            self.peer_line.format(index=i + 1, summary=s) for i, s in enumerate(summaries)
        )
        return self.comment_block.format(peers=lines) + self.reflection

    def peer_block_parts(self) -> tuple[str, str, str, str] | None:
        """The peer block split around its summaries: (head, line prefix with `{index}`, line
        suffix, tail), so that `head + "\n".join(prefix.format(index=i) + s + suffix ...) +
        tail` is `peer_block(...)`. None when the templates cannot be split that way."""
        block, line = self.comment_block, self.peer_line
        if block.count("{peers}") != 1 or line.count("{summary}") != 1:
            return None
        head, tail = block.split("{peers}")
        prefix, suffix = line.split("{summary}")
        try:
            if "{" in head.format() + tail.format() + suffix.format() or prefix.format(index=1) == prefix:
                return None
        except (KeyError, IndexError, ValueError):
            return None
        return head.format(), prefix, suffix.format(), tail.format() + self.reflection

    def forcing(self, kind: str) -> str:
        return self.answer_forcing[kind]


class PromptError(UserError, ValueError):
    """A prompt file that cannot be used; the message names the file and the key. Exits with
    status 2."""


# The templates filled with str.format, and a value of the type each of their fields gets.
TEMPLATE_FIELDS: dict[str, dict[str, object]] = {
    "instruction": {"question": "What is 6 * 7?"},
    "comment_block": {"peers": 'Peer 1: "a"'},
    "peer_line": {"index": 1, "summary": "a"},
}
_BRACE_HINT = "write a literal brace as {{ or }} (e.g. \\boxed{{}})"


def load_prompts(path: str | Path) -> PromptSet:
    """Read and check a prompt file. Errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist (config key leap.prompts)")
    text = read_utf8(path, PromptError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromptError(f"{path}: not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise PromptError(f"{path}: expected a mapping of prompt keys (instruction, triggers, ...), "
                          f"got {type(raw).__name__}")
    return prompts_from_dict(raw or {}, source=str(path))


def prompts_from_dict(raw: dict, source: str = "<inline>") -> PromptSet:
    def need(key: str):
        if key not in raw or raw[key] in (None, "", [], {}):
            raise PromptError(f"{source}: missing or empty key '{key}'")
        return raw[key]

    def per_kind(key: str) -> dict[str, str]:
        value = need(key)
        if not isinstance(value, dict) or any(k not in value for k in _KINDS):
            raise PromptError(f"{source}: '{key}' must map each of {list(_KINDS)} to a string")
        return {k: str(value[k]) for k in _KINDS}

    instruction = per_kind("instruction")
    for kind, text in instruction.items():
        check_template(text, TEMPLATE_FIELDS["instruction"], f"{source}: instruction.{kind}")
        if "question" not in template_fields(text):
            raise PromptError(f"{source}: instruction.{kind} must contain the {{question}} placeholder")
    openers = tuple(str(o) for o in need("openers"))
    for opener in openers:
        if SUMMARY_OPEN not in opener:
            raise PromptError(f"{source}: every entry of 'openers' must contain {SUMMARY_OPEN}: {opener!r}")
    block = str(need("comment_block"))
    check_template(block, TEMPLATE_FIELDS["comment_block"], f"{source}: comment_block")
    if "peers" not in template_fields(block) or COMMENT_OPEN not in block or COMMENT_CLOSE not in block:
        raise PromptError(f"{source}: 'comment_block' must contain {{peers}}, {COMMENT_OPEN} and {COMMENT_CLOSE}")
    peer_line = str(need("peer_line"))
    check_template(peer_line, TEMPLATE_FIELDS["peer_line"], f"{source}: peer_line")
    if not {"index", "summary"} <= set(template_fields(peer_line)):
        raise PromptError(f"{source}: 'peer_line' must contain {{index}} and {{summary}}")
    forcing = per_kind("answer_forcing")
    prefill = None
    if raw.get("leap_prefill"):
        prefill = per_kind("leap_prefill")
    return PromptSet(
        instruction=instruction,
        leap_note=str(raw.get("leap_note") or ""),
        triggers=tuple(str(t) for t in need("triggers")),
        openers=openers,
        comment_block=block,
        peer_line=peer_line,
        no_comments=str(need("no_comments")),
        reflection=str(need("reflection")),
        answer_forcing=forcing,
        leap_prefill=prefill,
        source=source,
    )


# -- templates ----------------------------------------------------------------------------------
def check_template(text: str, fields: dict[str, object], where: str) -> str:
    """Render `text` with a sample value for each field it may use; returns the rendering.

    Raises `PromptError` starting with `where` (the file and the key) for an unbalanced brace, a
    field the template cannot be given (an unknown name, a positional `{}` or `{0}`, an
    attribute or index such as `{question.x}`) or a format spec its value does not take."""
    allowed = ", ".join("{" + f + "}" for f in fields)
    spans, stray = _scan(text)
    if stray is not None:
        raise PromptError(f"{where}: unbalanced '{text[stray]}' {_at(text, stray)}; {_BRACE_HINT}")
    for start, end in spans:
        name = _field_name(text[start + 1:end - 1])
        root = name.split(".", 1)[0].split("[", 1)[0]
        if root == "" or root.isdigit():
            raise PromptError(f"{where}: '{text[start:end]}' {_at(text, start)} is a positional placeholder, "
                              f"which this template cannot be given (it may use {allowed}); {_BRACE_HINT}")
        if root not in fields:
            raise PromptError(f"{where}: unknown placeholder '{text[start:end]}' {_at(text, start)} (this "
                              f"template may use {allowed}); {_BRACE_HINT}")
        if name != root:
            raise PromptError(f"{where}: '{text[start:end]}' {_at(text, start)}: write the placeholder as "
                              f"{{{root}}}, without attributes or indexes")
    try:
        return text.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise PromptError(f"{where}: cannot be rendered with {allowed}: {type(exc).__name__}: {exc}; "
                          f"{_BRACE_HINT}") from None


def template_fields(text: str) -> list[str]:
    """The field names of a template (assumed valid: see `check_template`), in order."""
    return [_field_name(text[s + 1:e - 1]) for s, e in _scan(text)[0]]


def _field_name(inside: str) -> str:
    """The name part of a replacement field's inside: up to its `!conversion` or `:spec`."""
    for i, ch in enumerate(inside):
        if ch in "!:":
            return inside[:i]
    return inside


def _scan(text: str) -> tuple[list[tuple[int, int]], int | None]:
    """(start, end) of each top-level `{...}` replacement field (doubled braces are literal),
    and where the first brace is that neither opens a closed field nor is doubled (or None)."""
    fields, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch in "{}" and text[i + 1:i + 2] == ch:
            i += 2
        elif ch == "{":
            end = _field_end(text, i)
            if end is None:
                return fields, i
            fields.append((i, end))
            i = end
        elif ch == "}":
            return fields, i
        else:
            i += 1
    return fields, None


def _field_end(text: str, start: int) -> int | None:
    """The index just past the `}` closing the field opened at `start` (a format spec may nest
    one more field, as in `{index:>{width}}`); None when it is never closed."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def _at(text: str, pos: int) -> str:
    """`at line L, column C of the template: '...context...'` for a position in a template."""
    line = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    lo, hi = max(line_start, pos - 24), min(line_end, pos + 24)
    context = ("..." if lo > line_start else "") + text[lo:hi] + ("..." if hi < line_end else "")
    return f"at line {line}, column {pos - line_start + 1} of the template: \"{context}\""
