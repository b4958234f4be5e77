"""One reasoning path's state inside a `Group`: its token ids and where it stands in the rounds.

`TokenIds` stores token ids compactly; `PathState` is the record the round state machine, the
peer blocks, the result rows and the snapshots all read. Nothing here knows a LeaP method.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

# span kinds that were put into a path by the method, not sampled by the model
INJECTED = ("summary_prompt", "summary_fix", "comment", "force")


class TokenIds(array):
    """A path's token ids as 32-bit ints: 4 bytes a token where a list of ints costs about 36.

    It slices, `del`s, extends and compares like a list (a slice is a `TokenIds` again, and it
    equals a list holding the same ids); call `.tolist()` where a plain list must go out (a
    `GenRequest`, a tokenizer)."""

    def __new__(cls, ids=()):
        return super().__new__(cls, "i", ids)

    def __getitem__(self, index):
        got = super().__getitem__(index)
        return TokenIds(got) if isinstance(index, slice) else got

    def __eq__(self, other):
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return super().__eq__(other)

    def __ne__(self, other):
        return not self == other

    __hash__ = None  # mutable, like a list

    def __reduce__(self):
        return (_token_ids_from_bytes, (self.tobytes(),))

    def __repr__(self) -> str:
        return f"TokenIds({self.tolist()!r})"


def _token_ids_from_bytes(raw: bytes) -> TokenIds:
    ids = TokenIds()
    ids.frombytes(raw)
    return ids


@dataclass
class PathState:
    index: int
    key: str
    tokens: TokenIds
    prompt_len: int
    synced: int = 0  # tokens[:synced] are on the replica exactly as here
    computed: int = 0  # leading tokens whose KV the replica has computed (for reuse stats)
    phase: str = "segment"
    round: int = 1
    in_flight: str | None = None  # kind of the request under way
    finish: str | None = None
    segment_start: int = 0
    summary_start: int = 0
    sampled_segments: int = 0
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    replica: int = -1
    node: str = ""
    # how the path was stopped early (null: it ended on its own) and in which round
    stop_reason: str | None = None
    stopped_at_round: int | None = None
    confidences: array = field(default_factory=lambda: array("d"))  # each kept segment token's
    probe_answers: list[str | None] = field(default_factory=list)  # each answer probe's answer

    def cut(self, n: int) -> None:
        """Keep the first n tokens; spans and sync state follow."""
        del self.tokens[n:]
        self.synced = min(self.synced, n)
        self.computed = min(self.computed, n)
        self.spans = [(k, s, min(e, n)) for k, s, e in self.spans if s < n]

    def append(self, ids: list[int], kind: str) -> None:
        if ids:
            self.spans.append((kind, len(self.tokens), len(self.tokens) + len(ids)))
            if isinstance(ids, list):
                self.tokens.fromlist(ids)  # several times faster than extend() from a list
            else:
                self.tokens.extend(ids)

    def count(self, injected: bool) -> int:
        return sum(e - s for k, s, e in self.spans if (k in INJECTED) == injected)
