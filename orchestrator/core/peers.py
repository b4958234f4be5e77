"""The peer block's token ids and the summaries' similarities, built while summaries arrive at
a barrier, so that releasing it only sorts and concatenates token ids.

A group keeps one `PeerBlocks`; `arrive` takes each path's new summary, `matrix` gives the
waiting paths' similarities for routing, `block` the ids appended to a recipient, and `clear`
starts the next barrier.
"""

from __future__ import annotations

from . import routing
from .paths import PathState, TokenIds
from .prompts import PromptSet
from .types import Tokenizer


class PeerBlocks:
    def __init__(self, prompts: PromptSet, tokenizer: Tokenizer, similarity: str):
        self.prompts = prompts
        self.tok = tokenizer
        self.similarity = similarity
        self._parts = prompts.peer_block_parts()
        self._pieces: dict[str, TokenIds] = {}
        self._summary_ids: dict[int, TokenIds] = {}  # a summary's ids and the line suffix's
        self._lengths: dict[int, int] = {}  # a summary's tokens (without the suffix)
        self._texts: dict[int, str] = {}
        self._sim_row: dict[int, dict[int, float]] = {}

    def arrive(self, p: PathState) -> None:
        """Encode the path's newest summary and compare it with the summaries already waiting."""
        text = p.summaries[-1]
        if self._parts is not None:
            entry = TokenIds(self.tok.encode(text))
            self._lengths[p.index] = len(entry)
            entry.extend(self._piece(self._parts[2]))
            self._summary_ids[p.index] = entry
        if self.similarity in routing.STRING_SIMILARITIES:
            row = self._sim_row.setdefault(p.index, {})
            others = [q for q in self._sim_row if q != p.index]
            values = routing.similarities_to(text, [self._texts[q] for q in others], self.similarity)
            for q, v in zip(others, values):
                row[q] = v
                self._sim_row[q][p.index] = v
            self._texts[p.index] = text

    def matrix(self, waiting: list[PathState]) -> routing.Matrix | None:
        """The waiting paths' similarity matrix from the rows built on arrival (None: compute)."""
        if self.similarity not in routing.STRING_SIMILARITIES:
            return None
        rows = self._sim_row
        if any(q.index not in rows for q in waiting):  # e.g. restored from a checkpoint
            return None
        return [[1.0 if a is b else rows[a.index][b.index] for b in waiting] for a in waiting]

    def lengths(self, waiting: list[PathState]) -> tuple[int, ...] | None:
        """The waiting paths' summary lengths in tokens, as encoded on arrival (None: compute)."""
        if any(q.index not in self._lengths for q in waiting):
            return None
        return tuple(self._lengths[q.index] for q in waiting)

    def block(self, summaries: list[str], waiting: list[PathState], peers) -> list[int] | TokenIds:
        """The peer block's token ids: cached pieces around each summary's ids (array copies
        only), or an encode of the whole block when the prompt file's templates cannot be split."""
        texts = [summaries[j] for j, _ in peers]
        if self._parts is None or not peers or any(waiting[j].index not in self._summary_ids for j, _ in peers):
            return self.tok.encode(self.prompts.peer_block(texts))
        head, prefix, _, tail = self._parts
        ids = TokenIds(self._piece(head))
        for rank, (j, _) in enumerate(peers, start=1):
            if rank > 1:
                ids.extend(self._piece("\n"))
            ids.extend(self._piece(prefix.format(index=rank)))
            ids.extend(self._summary_ids[waiting[j].index])
        ids.extend(self._piece(tail))
        return ids

    def clear(self) -> None:
        self._summary_ids.clear()
        self._lengths.clear()
        self._texts.clear()
        self._sim_row.clear()

    def _piece(self, text: str) -> TokenIds:
        ids = self._pieces.get(text)
        if ids is None:
            ids = self._pieces[text] = TokenIds(self.tok.encode(text) if text else ())
        return ids
