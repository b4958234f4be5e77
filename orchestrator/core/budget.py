"""How much context a path needs for its first round: checked against engine.max_model_len
before any engine starts.

A path is its prompt plus everything appended to it (DESIGN.md section 1). For round 1 that is
a segment of up to T sampled tokens; when round 1 communicates, then the trigger and opener, a
summary of up to S tokens (and the few tokens that repair it), and the peer block: the frame of
`comment_block` and `peer_line` around k peer summaries, each the rest of its opener plus up to
S tokens, and the reflection sentence. When round 1 is also the last, the answer-forcing suffix
and up to S tokens follow instead. A prompt that leaves no room for this gives paths that never
receive a peer's note, or that end with no tokens at all.

The counts come from the run's own tokenizer. Peer summaries are decoded and encoded again on
their way into the block, which can change their length by a token or two: the figure is what
the budgets allow, not a bound to the last token.
"""

from __future__ import annotations

from dataclasses import dataclass

from .params import LeapParams
from .paths import PathState, TokenIds
from .prompts import SUMMARY_CLOSE, SUMMARY_OPEN, PromptSet
from .types import Tokenizer


@dataclass(frozen=True)
class FirstRound:
    """Tokens a path appends to its prompt before round 2 starts (or before it ends)."""

    segment: int  # leap.T (or the compute-matched budget, when smaller)
    summary: int = 0  # trigger + opener, leap.summary_tokens, and the repair suffix
    peers: int = 0  # the peer block (or the no-comments block) with its reflection sentence
    ending: int = 0  # the answer-forcing suffix and its leap.summary_tokens, when round 1 is the last
    k: int = 0  # peer summaries a path receives

    @property
    def total(self) -> int:
        return self.segment + self.summary + self.peers + self.ending


def first_round(params: LeapParams, prompts: PromptSet, tok: Tokenizer, kind: str = "math") -> FirstRound:
    """What the first round of a path at `params` can append to its prompt, in `tok`'s tokens."""
    rule = params.method.stopping
    path = PathState(index=0, key="", tokens=TokenIds(), prompt_len=0)  # a path starting round 1
    segment = rule.segment_tokens(params, path)
    path.sampled_segments = segment  # ... that sampled the whole segment
    last = rule.last_segment(params, path)
    ending = 0
    if last and params.force_answer:
        ending = _count(tok, prompts.forcing(kind)) + params.summary_tokens
    if not params.communicates(1):
        return FirstRound(segment=segment, ending=ending)
    n = lambda text: _count(tok, text)  # noqa: E731
    repair = n("... " + SUMMARY_CLOSE)
    # each part's longest choice: the sum is at least what any one pair encodes to, give or take
    # a merge at the seam
    summary = n("\n\n") + max(n(t + " ") for t in prompts.triggers) + max(n(o) for o in prompts.openers) \
        + params.summary_tokens + repair
    k, _ = params.method.communication.received(params)
    if k == 0:
        peers = n(prompts.no_comments)
    else:
        opener_rest = max(n(o.split(SUMMARY_OPEN, 1)[1]) for o in prompts.openers)
        heard = params.method.communication.heard_tokens(params)
        peers = n(prompts.peer_block([""] * k)) + k * (opener_rest + repair) + heard
    return FirstRound(segment=segment, summary=summary, peers=peers, ending=ending, k=k)


def _count(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text)) if text else 0
