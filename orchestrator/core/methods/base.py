"""The two kinds of strategy a LeaP method is made of, and what they are shown.

A `Communication` decides what a path receives at a barrier (and whether a round has a barrier
at all); a `StoppingRule` decides how long a path's next segment may be and when a path, or the
whole problem, stops. A `Method` is a named pair of them plus the prompt and report facts that go
with the name (`leap.mode`). The round state machine (`core.group.Group`) calls only these hooks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from ..grading import current_answer
from ..paths import PathState
from ..rng import rng_for
from ..routing import EmbedFn, Matrix
from ..types import Problem

Peers = list[tuple[int, float]]  # (position of the sender in `Barrier.waiting`, similarity)
HOLD = "hold"  # `StoppingRule.check_path`: not decidable yet, ask again when another path moves


class Knobs(Protocol):
    """The `LeapParams` fields the built-in strategies read (a strategy may read any other)."""

    paths: int
    T: int
    max_rounds: int
    summary_tokens: int
    comm_rounds: tuple[int, ...] | None
    top_k: int
    router: str
    similarity: str
    token_budget: int | None
    seed: int
    consensus_share: float
    consensus_checks: int
    probe_tokens: int
    confidence_window: int
    confidence_keep: float
    confidence_warmup: int
    confidence_top_logprobs: int
    confidence_warmup_first: bool
    pool_threshold: float
    pool_tokens: int


@dataclass(frozen=True)
class Barrier:
    """A problem's barrier, as a strategy sees it: every active path has written its summary
    (or, where paths do not summarize, has answered its answer probe: `answers` are then the
    probes' answers and `summaries` empty strings)."""

    params: Knobs
    problem: Problem
    round: int
    waiting: tuple[PathState, ...]  # the paths at the barrier, in index order
    summaries: tuple[str, ...]  # each waiting path's newest summary, same order
    paths: tuple[PathState, ...]  # every path of the group, finished ones too
    embed: EmbedFn | None = None  # the run's sentence embedder (leap.similarity=embedding)
    similarity: Matrix | None = None  # waiting x waiting, when already computed
    lengths: tuple[int, ...] | None = None  # each summary's tokens (when the strategy asks)
    answers: tuple[str | None, ...] | None = None  # each waiting path's current answer, normalized
    state: dict = field(default_factory=dict)  # the stopping rule's state in this group (JSON-able)

    def current_answers(self) -> tuple[str | None, ...]:
        """Each waiting path's current answer, normalized for voting: the probes' answers, or the
        answer in each newest summary."""
        if self.answers is not None:
            return self.answers
        return tuple(current_answer(s, self.problem.kind) for s in self.summaries)

    def rng(self, purpose: str = "router") -> random.Random:
        """The seeded RNG of this problem, round and purpose (the same on every run)."""
        return rng_for(self.params.seed, self.problem.id, -1, self.round, purpose)


class Communication:
    """What a path receives at a barrier. The default schedule: a barrier after every round in
    `comm_rounds` (None: every round but the last)."""

    exchanges = True  # False: paths never receive anything (the independent baselines)
    needs_lengths = False  # True: `Barrier.lengths` is filled for `route`

    def communicates(self, params: Knobs, round_: int) -> bool:
        """Whether paths summarize and meet at a barrier after this round's segment."""
        if round_ >= params.max_rounds:
            return False
        return params.comm_rounds is None or round_ in params.comm_rounds

    def segment_stops(self, params: Knobs, round_: int) -> list[str]:
        """Stop strings a segment of this round gets besides the end-of-thinking marker."""
        return []

    def route(self, barrier: Barrier) -> list[Peers]:
        """For each waiting path (in order), the peers whose summaries it receives, Peer 1 first;
        an empty list gives the path the no-comments block."""
        raise NotImplementedError

    def received(self, params: Knobs) -> tuple[int, int | None]:
        """(the most summaries a path receives at a barrier, a cap on their tokens in all or
        None), for context budgets: leap.top_k of the other paths by default."""
        others = params.paths - 1
        return (others if params.top_k == -1 else min(params.top_k, others)), None

    def heard_tokens(self, params: Knobs) -> int:
        """The most summary tokens a path receives at a barrier: `received`'s count of
        summaries of leap.summary_tokens each, within its cap."""
        k, cap = self.received(params)
        return k * params.summary_tokens if cap is None else min(k * params.summary_tokens, cap)


class StoppingRule:
    """How long a path's segments are and when a path, or the whole problem, stops."""

    uses_token_budget = False  # True: leap.token_budget (or leap.match_point) configures it
    budget_keys = "leap.T x leap.max_rounds"  # the config keys that set a path's sampled tokens
    vote = "majority"  # the point's vote: majority | confidence (weighted by `vote_weight`)
    group_stop_reason = "stopped"  # a path's stop_reason when `stop_group` stops its problem

    def segment_tokens(self, params: Knobs, path: PathState) -> int:
        """The most tokens the path's next segment may sample."""
        raise NotImplementedError

    def last_segment(self, params: Knobs, path: PathState) -> bool:
        """Whether the segment the path just sampled (without finishing) was its last: the
        answer is forced next."""
        raise NotImplementedError

    def sampled_cap(self, params: Knobs) -> int | None:
        """The most segment tokens a path may sample in all (None: only known at run time)."""
        raise NotImplementedError

    def stop_group(self, barrier: Barrier) -> bool:
        """At a barrier (or an answer-probe check): True forces the answer of every waiting path
        instead of routing (their stop_reason is `group_stop_reason`)."""
        return False

    def probes(self, communication: Communication) -> bool:
        """Whether, with this communication, each path sends an answer probe after every segment
        but the last, and waits for its problem's other live paths before `stop_group` decides."""
        return False

    def logprobs(self, params: Knobs) -> int:
        """Top logprobs a segment request asks for (0: none; >0: results carry confidences)."""
        return 0

    def check_path(self, params: Knobs, path: PathState, paths: Sequence[PathState], state: dict) -> str | None:
        """At the end of each segment of `path` (`paths`: the whole group; `state`: this rule's
        state in the group): a stop reason ends the path at once, with no forced answer; None
        lets the segment stand; `HOLD` makes the path wait until the group asks again (after
        any other path's result)."""
        return None

    def warmup(self, params: Knobs, path: PathState) -> bool:
        """Whether the path is a warm-up path, never stopped by `check_path`."""
        return False

    def waits_to_start(self, params: Knobs, path: PathState, paths: Sequence[PathState], state: dict) -> bool:
        """Whether the path, not yet started, must wait before its first segment (e.g. until
        the warm-up paths have set a threshold); asked again after any other path's result."""
        return False

    def vote_weight(self, params: Knobs, path: PathState) -> float:
        """The path's weight in its problem's vote: 1.0, or 0.0 for a path stopped early."""
        return 0.0 if path.stop_reason is not None and path.finish == "stopped" else 1.0


@dataclass(frozen=True)
class Method:
    """A `leap.mode` value: a communication strategy and a stopping rule, by name."""

    name: str
    communication: Communication
    stopping: StoppingRule
    uses_leap_note: bool = False  # the prompt tells the model about peer notes (LeaP only)
    baseline: str | None = None  # the baseline it is in the tables: independent | compute_matched

    @property
    def exchanges(self) -> bool:
        """A LeaP point in the tables: its paths hear from their peers."""
        return self.communication.exchanges
