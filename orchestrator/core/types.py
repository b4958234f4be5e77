"""Plain types that cross the engine seam and the coordinator.

A replica never sees LeaP concepts: it receives a `GenRequest` (edit a path's stored token ids,
then generate) and answers with a `GenResult`. Everything is plain data so it pickles cheaply
across Ray and serializes into result files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


class Tokenizer(Protocol):
    """The part of a tokenizer the core needs. `encode` must add no special tokens by default
    (transformers' tokenizers add them: wrap one in `engines.tokenizer.TextTokenizer`)."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling knobs shared by every request of a run (paper defaults)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None  # per-request seed; None lets the engine's own seed decide


@dataclass
class GenRequest:
    """Edit one path's token state on a replica, then generate.

    The replica keeps each path's token ids. It first truncates them to `keep` tokens (the prefix
    that stays, e.g. after the paragraph cut), appends `append` (injected tokens: summary trigger,
    peer comments, answer-forcing suffix), then samples at most `max_tokens` new tokens, stopping at
    EOS or at any of `stop` (the stop string is kept in the output).

    `full` carries the path's whole token list (before the edit) when the replica may not hold
    the path: on its first request, or after a failover to another replica.
    """

    path_key: str
    keep: int
    append: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    full: list[int] | None = None
    min_tokens: int = 0  # EOS is not allowed before this many new tokens (0: no floor)
    kind: str = "segment"  # segment | summary | answer | force | floor (for logs and latency models)
    ignore_eos: bool = False  # generate exactly max_tokens (the benchmark's floor); stop strings off
    # The coordinator generation that sent it. A replica that has seen a later one refuses the
    # request (`StaleRequest`) and never lets it change a path's stored tokens: requests of a
    # dead coordinator cannot overwrite what its successor continues from.
    epoch: int = 0
    # A probe: generate from the edited token list but leave the path's stored tokens as they
    # were (the prefix cache is reused; nothing of the probe enters the path).
    branch: bool = False
    # Top logprobs per sampled token that the replica reduces to the token's confidence
    # (`core.confidence.token_confidence`) before answering; 0: no confidences.
    logprobs: int = 0


@dataclass
class GenResult:
    """What a replica returns for one `GenRequest`: only the new tokens cross the network."""

    path_key: str
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" (a stop string) | "length" | "context" (no room left)
    stop_str: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine served from its prefix cache
    replica: int = -1
    node: str = ""
    # One confidence per token of `token_ids` when the request asked for `logprobs`, else None:
    # the top-k logprobs are reduced inside the replica, only these floats cross Ray.
    confidences: list[float] | None = None


class PathStateMissing(Exception):
    """Raised by a replica asked to edit a path it does not hold and given no `full` tokens."""


class StaleRequest(Exception):
    """Raised by a replica for a request of an earlier coordinator generation (`GenRequest.epoch`
    below the replica's fence); the request changed nothing on the replica."""


class ReplicaDead(RuntimeError):
    """The replica's engine died; the coordinator moves its paths to other replicas."""


class EngineStartError(RuntimeError):
    """A replica's engine could not start; the message carries the engine's own cause."""


@dataclass(frozen=True)
class Problem:
    """One benchmark question, already rendered into the text the model sees as the user turn.

    `kind` picks the prompt and grader: "math" (free-form answer, graded against `gold`) or
    "gpqa" (multiple choice; `question` already lists the shuffled options A-D and `gold` is the
    correct letter).
    """

    id: str
    benchmark: str
    question: str
    gold: str
    kind: str = "math"
