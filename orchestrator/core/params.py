"""`LeapParams`: every knob of one sweep point, as the pure core takes them from the config.

`mode` names a registered method (`core.methods`); what the mode does comes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def method(self) -> Method:
        """The registered method `mode` names (`UnknownName` when none is)."""
        return method(self.mode)

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
