"""Token-space text operations: paragraph cuts, summary repair and extraction.

Paths are token sequences that only grow by appending; these helpers find cut points in token
space so that what remains is an exact prefix of the ids the engine already holds (and cached).
"""

from __future__ import annotations

import re
from typing import Sequence

from .prompts import COMMENT_CLOSE, COMMENT_OPEN, SUMMARY_CLOSE, SUMMARY_OPEN, THINK_END
from .types import Tokenizer

PARAGRAPH = "\n\n"


def prefix_tokens_within(tok: Tokenizer, ids: Sequence[int], char_pos: int) -> int:
    """The largest m such that decode(ids[:m]) is at most `char_pos` characters long.

    Decoding is monotone in m (a prefix of ids decodes to a prefix of the text, up to split
    multi-byte characters), so a binary search needs about log2(len(ids)) decodes.
    """
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.decode(ids[:mid])) <= char_pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


def tokens_covering(tok: Tokenizer, ids: Sequence[int], char_end: int) -> int:
    """The smallest m such that decode(ids[:m]) covers the first `char_end` characters."""
    m = prefix_tokens_within(tok, ids, char_end)
    if m < len(ids) and len(tok.decode(ids[:m])) < char_end:
        m += 1
    return m


def paragraph_cut(tok: Tokenizer, segment: Sequence[int]) -> int:
    """How many tokens of `segment` to keep: up to and including its last paragraph break.

    Returns len(segment) when the segment has no paragraph break (nothing is cut). The break is
    looked for in growing tail windows first (paragraphs are short), so a 4K-token segment costs
    a few decodes of a few hundred tokens instead of a dozen decodes of the whole segment; the
    answer is the same token boundary either way.
    """
    n = len(segment)
    window = 256
    while window < n:
        tail = segment[n - window:]
        text = tok.decode(tail)
        # skip the window's first character: a break straddling the window's edge, or a
        # character split at it, is found by the next (wider) window instead
        pos = text.rfind(PARAGRAPH, 1)
        if pos >= 0:
            return n - window + tokens_covering(tok, tail, pos + len(PARAGRAPH))
        window *= 4
    text = tok.decode(segment)
    pos = text.rfind(PARAGRAPH)
    if pos < 0:
        return n
    return tokens_covering(tok, segment, pos + len(PARAGRAPH))


def repair_summary(tok: Tokenizer, ids: Sequence[int]) -> tuple[int, str]:
    """Fix up a generated summary: returns (tokens of `ids` to keep, text to append).

    Drops an end-of-thinking marker (and what follows it); completes a partially written closing
    tag; otherwise, when the summary ran out of tokens unclosed, closes it with `... </summarize>`.
    """
    keep = len(ids)
    text = tok.decode(ids)
    think = text.find(THINK_END)
    if think >= 0:
        keep = prefix_tokens_within(tok, ids, think)
        text = tok.decode(ids[:keep])
    if SUMMARY_CLOSE in text:
        return keep, ""
    # a partial tag counts from two characters on ("</"), as in the reference code: a lone "<"
    # is more likely the start of something else
    for n in range(len(SUMMARY_CLOSE) - 1, 1, -1):
        if text.endswith(SUMMARY_CLOSE[:n]):
            return keep, SUMMARY_CLOSE[n:]
    return keep, "... " + SUMMARY_CLOSE


def extract_summary(text: str) -> str:
    """The text between the newest <summarize> and the </summarize> after it, stripped."""
    start = text.rfind(SUMMARY_OPEN)
    if start < 0:
        return ""
    body = text[start + len(SUMMARY_OPEN):]
    end = body.find(SUMMARY_CLOSE)
    if end >= 0:
        body = body[:end]
    return body.strip()


_COMMENT_RE = re.compile(re.escape(COMMENT_OPEN) + r".*?" + re.escape(COMMENT_CLOSE), re.DOTALL)


def strip_comments(text: str) -> str:
    """The path's text without peer blocks: what grading reads, so a peer's answer never counts."""
    return _COMMENT_RE.sub("", text)
