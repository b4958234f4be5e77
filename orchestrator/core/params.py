"""`LeapParams`: every knob of one sweep point, as the pure core takes them from the config.

`mode` names a registered method (`core.methods`); what the mode does comes from there, and
`stopping` (when set) swaps in another registered stopping rule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .methods import Method, method


@dataclass(frozen=True)
class LeapParams:
    """Every knob of the method; defaults are the paper's (QwQ/R1-distill, 16K budget)."""

    paths: int = 32
    T: int = 4096
    max_rounds: int = 4
    comm_rounds: tuple[int, ...] | None = None  # None: every round but the last
    top_k: int = 4
    router: str = "dispersed"
    similarity: str = "indel"
    summary_tokens: int = 256
    answer_tokens: int = 1024  # after the end-of-thinking marker: the written-out answer
    mode: str = "leap"
    token_budget: int | None = None  # compute_matched: sampled tokens per path
    match_point: str | None = None  # compute_matched: the sweep point whose usage sets token_budget
    force_answer: bool = True
    segment_min_tokens: int = 0  # forbid EOS early in a segment (chat models without thinking)
    seed: int = 0
    # The knobs of the issue-18 methods. Each is left out of `params_record` while at its
    # default, so the records of runs made before they existed stay the same.
    stopping: str | None = None  # a registered stopping rule instead of the method's own
    consensus_share: float = 1.0  # consensus: share of live paths that must give the top answer
    consensus_checks: int = 2  # consensus: consecutive agreeing checks that stop the problem
    probe_tokens: int = 32  # consensus without barriers: tokens an answer probe may sample
    confidence_window: int = 2048  # confidence: tokens per sliding window (DeepConf's group)
    confidence_keep: float = 10  # confidence: percent of warm-up paths above the threshold
    confidence_warmup: int = 16  # confidence: the first paths (by index) that set the threshold
    confidence_top_logprobs: int = 20  # confidence: top-k logprobs behind a token's confidence
    confidence_warmup_first: bool = True  # confidence: other paths start once the warm-up paths have ended
    pool_threshold: float = 0.9  # pool: a summary this similar to a kept one is dropped
    pool_tokens: int = 1024  # pool: summary tokens in the pool at most

    @property
    def method(self) -> Method:
        """The registered method `mode` names, with the stopping rule `stopping` names when
        set (`UnknownName` when either is unknown)."""
        return method(self.mode, self.stopping)

    @property
    def segment_budget(self) -> int:
        """The segment tokens one path may sample in all: its stopping rule's cap (leap.T x
        leap.max_rounds, or leap.token_budget); T x max_rounds when the cap is only known at run
        time (a compute-matched point before its budget is set)."""
        try:
            cap = self.method.stopping.sampled_cap(self)
        except NotImplementedError:  # a registered rule that does not say
            cap = None
        return max(1, int(cap) if cap is not None else self.T * self.max_rounds)

    @property
    def sampled_budget(self) -> int:
        """The tokens one path may sample in all, the unit of a run's work (the progress bar):
        its segments (`segment_budget`), a summary of summary_tokens in each communicating round,
        and the final answer (summary_tokens when forced, answer_tokens after end-of-thinking:
        the larger)."""
        summaries = sum(1 for r in range(1, self.max_rounds + 1) if self.communicates(r))
        final = max(self.summary_tokens, self.answer_tokens) if self.force_answer else self.answer_tokens
        return self.segment_budget + summaries * self.summary_tokens + final

    def communicates(self, round_: int) -> bool:
        return self.method.communication.communicates(self, round_)

    @property
    def uses_leap_note(self) -> bool:
        return self.method.uses_leap_note


OPTIONAL_KEYS = ("stopping", "consensus_share", "consensus_checks", "probe_tokens", "confidence_window",
                 "confidence_keep", "confidence_warmup", "confidence_top_logprobs", "confidence_warmup_first", "pool_threshold",
                 "pool_tokens")
OPTIONAL_DEFAULTS = {f.name: f.default for f in fields(LeapParams) if f.name in OPTIONAL_KEYS}


def params_record(params) -> dict:
    """The parameters as JSON would give them back (tuples become lists), without the knobs of
    `OPTIONAL_KEYS` that are at their defaults: what fingerprints and checkpoints record."""
    record = json.loads(json.dumps(asdict(params)))
    return {k: v for k, v in record.items() if k not in OPTIONAL_KEYS or v != OPTIONAL_DEFAULTS[k]}
