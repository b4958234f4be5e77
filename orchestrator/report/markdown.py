"""Untrusted text in report.md: model output, dataset fields and config strings are shown as
written, never as Markdown or HTML.

- `md_text`: inline prose (table cells, peer notes, titles). HTML's `& < >` become entities (so
  `<script>` or `<img onerror=...>` is text, not a tag), and the Markdown punctuation that could
  open a link, an image, a code span, emphasis or a table cell is backslash-escaped. Newlines
  become spaces: the text stays inside the line it was put in.
- `md_code`: a code span whose backtick fence is longer than any backtick run inside, so the text
  cannot close it early.
- `md_fence`: a fenced code block, likewise fenced longer than any backtick run inside.
"""

from __future__ import annotations

import re

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PUNCT = re.compile(r"([\\`*_\[\]|~])")
_TICKS = re.compile(r"`+")


def _one_line(text) -> str:
    return " ".join(str(text).splitlines())


def _longest_tick_run(text: str) -> int:
    return max((len(run) for run in _TICKS.findall(text)), default=0)


def md_text(text) -> str:
    """`text` as literal inline Markdown, on one line."""
    out = _PUNCT.sub(r"\\\1", _one_line(text))
    return "".join(_HTML.get(ch, ch) for ch in out)


def md_code(text) -> str:
    """`text` as an inline code span, on one line, that no backtick inside can close."""
    body = _one_line(text)
    ticks = "`" * (_longest_tick_run(body) + 1)
    # a span strips one space from each end when both ends have one: pad so the text survives,
    # and so that a backtick at either end does not join the fence
    if body.strip(" ") and (body[0] in "` " or body[-1] in "` "):
        body = f" {body} "
    elif not body:
        body = " "
    return f"{ticks}{body}{ticks}"


def md_fence(text, info: str = "text") -> str:
    """`text` as a fenced code block that no line inside can close."""
    text = str(text)
    ticks = "`" * max(4, _longest_tick_run(text) + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


__all__ = ["md_code", "md_fence", "md_text"]
