"""The two kinds of strategy a LeaP method is made of, and what they are shown.

A `Communication` decides what a path receives at a barrier (and whether a round has a barrier
at all); a `StoppingRule` decides how long a path's next segment may be and when a path, or the
whole problem, stops. A `Method` is a named pair of them plus the prompt and report facts that go
with the name (`leap.mode`). The round state machine (`core.group.Group`) calls only these hooks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from ..paths import PathState
from ..rng import rng_for
from ..routing import EmbedFn, Matrix
from ..types import Problem

Peers = list[tuple[int, float]]  # (position of the sender in `Barrier.waiting`, similarity)


class Knobs(Protocol):
    """The `LeapParams` fields the built-in strategies read (a strategy may read any other)."""

    T: int
    max_rounds: int
    comm_rounds: tuple[int, ...] | None
    top_k: int
    router: str
    similarity: str
    token_budget: int | None
    seed: int


@dataclass(frozen=True)
class Barrier:
    """A problem's barrier, as a strategy sees it: every active path has written its summary."""

    params: Knobs
    problem: Problem
    round: int
    waiting: tuple[PathState, ...]  # the paths at the barrier, in index order
    summaries: tuple[str, ...]  # each waiting path's newest summary, same order
    paths: tuple[PathState, ...]  # every path of the group, finished ones too
    embed: EmbedFn | None = None  # the run's sentence embedder (leap.similarity=embedding)
    similarity: Matrix | None = None  # waiting x waiting, when already computed

    def rng(self, purpose: str = "router") -> random.Random:
        """The seeded RNG of this problem, round and purpose (the same on every run)."""
        return rng_for(self.params.seed, self.problem.id, -1, self.round, purpose)


class Communication:
    """What a path receives at a barrier. The default schedule: a barrier after every round in
    `comm_rounds` (None: every round but the last)."""

    exchanges = True  # False: paths never receive anything (the independent baselines)

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


class StoppingRule:
    """How long a path's segments are and when a path, or the whole problem, stops."""

    uses_token_budget = False  # True: leap.token_budget (or leap.match_point) configures it
    budget_keys = "leap.T x leap.max_rounds"  # the config keys that set a path's sampled tokens

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
        """At a barrier: True forces the answer of every waiting path instead of routing."""
        return False


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
