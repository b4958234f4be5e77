"""One path's text cut into what it is made of, for the report's transcript view.

Blocks, in text order: the path's reasoning segments (sampled), the summary prompts (injected:
trigger sentence and opener), its own summaries (sampled), each received peer block (injected;
every `Peer i` note attributed to the path that sent it, from messages.parquet), the reflection
sentence, the answer-forcing suffix and the final answer.

Two ways to cut the text:
- `blocks_from_spans`: exact, when the path's spans carry character offsets (`char_start`,
  `char_end`);
- `blocks_from_tags`: otherwise (spans count tokens, which cannot be mapped to characters without
  the tokenizer): the text is split on the `<summarize>` / `<comment>` tags, and the prompt file's
  triggers, openers, reflection and answer-forcing texts mark what was injected.
Peer notes are matched to messages by (recipient, round, rank) and checked against the sender's
summary text (`Note.verified`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..core.prompts import COMMENT_CLOSE, COMMENT_OPEN, SUMMARY_CLOSE, SUMMARY_OPEN, THINK_END

# kind -> (label, provenance)
KINDS = {
    "segment": ("reasoning", "sampled"),
    "summary_prompt": ("summary prompt", "injected"),
    "summary": ("own summary", "sampled"),
    "summary_fix": ("summary repair", "injected"),
    "comment": ("peer messages", "injected"),
    "no_peers": ("no peers left", "injected"),
    "reflection": ("reflection prompt", "injected"),
    "force": ("answer forcing", "injected"),
    "answer": ("final answer", "sampled"),
}
DEFAULT_PEER_LINE = 'Peer {index}: "{summary}"'


@dataclass
class Note:
    rank: int
    text: str
    sender: int | None = None
    similarity: float | None = None
    verified: bool = False  # the note's text is the sender's summary as messages.parquet has it


@dataclass
class Block:
    kind: str
    text: str
    round: int | None = None  # the communication round this block belongs to
    notes: list[Note] = field(default_factory=list)
    answer: tuple | None = None  # own summaries: (answer, correct) graded for that round

    @property
    def label(self) -> str:
        return KINDS.get(self.kind, (self.kind, ""))[0]

    @property
    def provenance(self) -> str:
        return KINDS.get(self.kind, ("", "sampled"))[1]


# --------------------------------------------------------------------------- cutting


def blocks_from_spans(text: str, spans: Sequence[dict], peer_line: str = DEFAULT_PEER_LINE) -> list[Block] | None:
    """Blocks from spans with character offsets; None when the spans have none."""
    if not spans or any(s.get("char_start") is None or s.get("char_end") is None for s in spans):
        return None
    blocks = []
    for s in spans:
        piece = text[s["char_start"]: s["char_end"]]
        if s["kind"] == "comment":  # the peer block and the reflection sentence after it
            end = _after_close(piece, 0)
            blocks += [Block(_peer_kind(piece[:end], peer_line), piece[:end]),
                       Block("reflection", piece[end:])]
        else:
            blocks.append(Block(s["kind"], piece))
    blocks.append(Block("segment", text[spans[-1]["char_end"]:]))
    return [b for b in blocks if b.text]


def _after_close(text: str, pos: int) -> int:
    """Just past the `</comment>` at or after pos and at most two newlines after it."""
    close = text.find(COMMENT_CLOSE, pos)
    if close < 0:
        return len(text)
    end = close + len(COMMENT_CLOSE)
    while end < len(text) and end < close + len(COMMENT_CLOSE) + 2 and text[end] == "\n":
        end += 1
    return end


def _peer_kind(piece: str, peer_line: str) -> str:
    return "comment" if _note_pattern(peer_line).search(piece) else "no_peers"


def blocks_from_tags(text: str, prompts=None, kind: str = "math") -> list[Block]:
    """Blocks from the tags in the text, with the prompt file's wording when given."""
    blocks: list[Block] = []
    pos = 0
    while True:
        s = text.find(SUMMARY_OPEN, pos)
        if s < 0:
            break
        start = _prompt_start(text, pos, s, prompts)
        blocks.append(Block("segment", text[pos:start]))
        opener_end = _opener_end(text, s, prompts)
        blocks.append(Block("summary_prompt", text[start:opener_end]))
        close = text.find(SUMMARY_CLOSE, opener_end)
        end = len(text) if close < 0 else close + len(SUMMARY_CLOSE)
        blocks.append(Block("summary", text[opener_end:end]))
        pos = _peer_block(text, end, prompts, blocks)
    blocks += _tail(text, pos, prompts, kind)
    return [b for b in blocks if b.text]


def _prompt_start(text: str, pos: int, s: int, prompts) -> int:
    """Where the injected summary prompt (trigger sentence) before `<summarize>` at s starts."""
    if prompts is not None:
        best = None
        for trigger in prompts.triggers:
            for opener in prompts.openers:
                lead = f"{trigger} {opener[: opener.find(SUMMARY_OPEN)]}"
                start = s - len(lead)
                if start >= pos and text.startswith(lead, start) and (best is None or start < best):
                    best = start
        return s if best is None else best  # none: the model opened the tag itself (LeaP-T)
    cut = text.rfind("\n\n", pos, s)  # the trigger follows the paragraph cut
    return cut + 2 if cut >= 0 else s


def _opener_end(text: str, s: int, prompts) -> int:
    """End of the opener's words after `<summarize>` (injected), where the model's summary starts."""
    end = s + len(SUMMARY_OPEN)
    for opener in prompts.openers if prompts is not None else ():
        rest = opener[opener.find(SUMMARY_OPEN):]
        if text.startswith(rest, s):
            end = max(end, s + len(rest))
    return end


def _peer_block(text: str, pos: int, prompts, blocks: list[Block]) -> int:
    """Append the peer block (and reflection) that follows a summary; returns the new position."""
    if prompts is not None and text.startswith(prompts.no_comments, pos):
        blocks.append(Block("no_peers", prompts.no_comments))
        return pos + len(prompts.no_comments)
    if not re.match(r"\s*" + re.escape(COMMENT_OPEN), text[pos: pos + 64]):
        return pos
    end = _after_close(text, pos)
    piece = text[pos:end]
    blocks.append(Block(_peer_kind(piece, _peer_line(prompts)), piece))
    if prompts is not None and text.startswith(prompts.reflection, end):
        blocks.append(Block("reflection", prompts.reflection))
        end += len(prompts.reflection)
    return end


def _tail(text: str, pos: int, prompts, kind: str) -> list[Block]:
    """The text after the last exchange: reasoning, then forcing suffix or end of thinking, answer."""
    force = prompts.forcing(kind) if prompts is not None else None
    at = text.rfind(force, pos) if force else -1
    if at >= 0:
        return [Block("segment", text[pos:at]), Block("force", force),
                Block("answer", text[at + len(force):])]
    think = text.find(THINK_END, pos)
    if think >= 0:
        cut = think + len(THINK_END)
        return [Block("segment", text[pos:cut]), Block("answer", text[cut:])]
    return [Block("segment", text[pos:])]


# --------------------------------------------------------------------------- peer notes


def _peer_line(prompts) -> str:
    return prompts.peer_line if prompts is not None else DEFAULT_PEER_LINE


def _note_pattern(peer_line: str) -> re.Pattern:
    """Matches the start of one note (`Peer 3: "`), capturing the index."""
    head = peer_line[: peer_line.index("{summary}")]
    before, _, after = head.partition("{index}")
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after))


def parse_notes(block_text: str, peer_line: str = DEFAULT_PEER_LINE) -> list[Note]:
    """The `Peer i` notes of a peer block, in order."""
    start = block_text.find(COMMENT_OPEN)
    end = block_text.rfind(COMMENT_CLOSE)
    inner = block_text[start + len(COMMENT_OPEN): end if end > start else len(block_text)]
    tail = peer_line[peer_line.index("{summary}") + len("{summary}"):]
    matches = list(_note_pattern(peer_line).finditer(inner))
    notes = []
    for i, m in enumerate(matches):
        stop = matches[i + 1].start() if i + 1 < len(matches) else len(inner)
        body = inner[m.end(): stop].strip()
        if tail.strip() and body.endswith(tail.strip()):
            body = body[: len(body) - len(tail.strip())].rstrip()
        notes.append(Note(rank=int(m.group(1)), text=body))
    return notes


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def attribute(blocks: list[Block], messages: Iterable[dict], recipient: int,
              comm_rounds: Sequence[int] | None = None, peer_line: str = DEFAULT_PEER_LINE) -> None:
    """Number the blocks by communication round and give each peer note its sender.

    The i-th own summary belongs to the i-th communicating round (`comm_rounds`, else i + 1);
    the peer block after it to the same round. A note is matched to the message with this
    recipient, round and rank; when the round's messages do not fit the notes (e.g. unknown
    comm_rounds), the round whose messages' summaries match the notes' texts is used."""
    by_round: dict[int, dict[int, dict]] = {}
    for m in messages:
        if int(m["recipient"]) == recipient:
            by_round.setdefault(int(m["round"]), {})[int(m["rank"])] = m
    seen = 0  # own summaries so far
    for b in blocks:
        if b.kind == "summary":
            b.round = _round_of(seen, comm_rounds)
            seen += 1
        elif b.kind in ("summary_fix", "comment", "no_peers", "reflection"):
            b.round = _round_of(max(seen - 1, 0), comm_rounds)
        else:  # segment, summary prompt: the round whose summary comes next
            b.round = _round_of(seen, comm_rounds)
        if b.kind == "comment":
            b.notes = parse_notes(b.text, peer_line)
            r = _best_round(b.notes, by_round, b.round)
            for note in b.notes:
                msg = by_round.get(r, {}).get(note.rank) if r is not None else None
                if msg is not None:
                    note.sender = int(msg["sender"])
                    note.similarity = msg.get("similarity")
                    note.verified = _same(str(msg.get("summary") or ""), note.text)
    # what follows the last exchange (or everything, without one) belongs to no round
    exchange = ("summary", "summary_fix", "comment", "no_peers", "reflection")
    last = max((i for i, b in enumerate(blocks) if b.kind in exchange), default=-1)
    for b in blocks[last + 1:]:
        b.round = None


def _round_of(index: int, comm_rounds: Sequence[int] | None) -> int:
    if comm_rounds and index < len(comm_rounds):
        return int(comm_rounds[index])
    return index + 1


def _best_round(notes: list[Note], by_round: dict, expected: int | None) -> int | None:
    def score(r: int) -> int:
        msgs = by_round[r]
        return sum(n.rank in msgs and _same(str(msgs[n.rank].get("summary") or ""), n.text) for n in notes)

    if expected in by_round and score(expected) == len(notes):
        return expected
    if not by_round:
        return None
    best = max(sorted(by_round), key=score)
    return best if score(best) > 0 else (expected if expected in by_round else None)


def split_path(text: str, spans: Sequence[dict] | None = None, prompts=None, kind: str = "math",
               messages: Iterable[dict] = (), recipient: int = 0,
               comm_rounds: Sequence[int] | None = None) -> list[Block]:
    """A path's blocks with peer notes attributed: from character spans when the row has them,
    else from the tags."""
    blocks = (blocks_from_spans(text, spans or [], _peer_line(prompts))
              or blocks_from_tags(text, prompts, kind))
    attribute(blocks, messages, recipient, comm_rounds, _peer_line(prompts))
    return blocks


__all__ = ["Block", "KINDS", "Note", "attribute", "blocks_from_spans", "blocks_from_tags",
           "parse_notes", "split_path"]
