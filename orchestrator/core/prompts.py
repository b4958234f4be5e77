"""Prompt wording: loaded from a YAML file (conf/prompts/default.yaml) and rendered into text.

The core never hard-codes wording; it only relies on the tags. A file that lacks a key or breaks
a tag rule is rejected with an error naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from random import Random

import yaml

from .types import Problem

SUMMARY_OPEN = "<summarize>"
SUMMARY_CLOSE = "</summarize>"
COMMENT_OPEN = "<comment>"
COMMENT_CLOSE = "</comment>"
THINK_END = "</think>"

_KINDS = ("math", "gpqa")


@dataclass(frozen=True)
class PromptSet:
    instruction: dict[str, str]
    leap_note: str
    triggers: tuple[str, ...]
    openers: tuple[str, ...]
    comment_block: str
    peer_line: str
    no_comments: str
    reflection: str
    answer_forcing: dict[str, str]
    leap_prefill: dict[str, str] | None = None
    source: str = "<inline>"

    # -- rendering -----------------------------------------------------------------------------
    def user_turn(self, problem: Problem, with_leap_note: bool) -> str:
        text = self.instruction[problem.kind].format(question=problem.question)
        if with_leap_note and self.leap_note:
            text = f"{text}\n\n{self.leap_note}"
        return text

    def prefill(self, problem: Problem, with_leap_note: bool) -> str:
        """Text the assistant turn starts with (after the chat template), in LeaP mode only."""
        if not with_leap_note or not self.leap_prefill:
            return ""
        return self.leap_prefill.get(problem.kind, "")

    def summary_prompt(self, rng: Random) -> str:
        """Trigger sentence and summary opener, drawn with the path's RNG for this round."""
        return f"{rng.choice(self.triggers)} {rng.choice(self.openers)}"

    def peer_block(self, summaries: list[str]) -> str:
        if not summaries:
            return self.no_comments
        lines = "\n".join(
            self.peer_line.format(index=i + 1, summary=s) for i, s in enumerate(summaries)
        )
        return self.comment_block.format(peers=lines) + self.reflection

    def peer_block_parts(self) -> tuple[str, str, str, str] | None:
        """The peer block split around its summaries: (head, line prefix with `{index}`, line
        suffix, tail), so that `head + "\n".join(prefix.format(index=i) + s + suffix ...) +
        tail` is `peer_block(...)`. None when the templates cannot be split that way."""
        block, line = self.comment_block, self.peer_line
        if block.count("{peers}") != 1 or line.count("{summary}") != 1:
            return None
        head, tail = block.split("{peers}")
        prefix, suffix = line.split("{summary}")
        try:
            if "{" in head.format() + tail.format() + suffix.format() or prefix.format(index=1) == prefix:
                return None
        except (KeyError, IndexError, ValueError):
            return None
        return head.format(), prefix, suffix.format(), tail.format() + self.reflection

    def forcing(self, kind: str) -> str:
        return self.answer_forcing[kind]


def load_prompts(path: str | Path) -> PromptSet:
    """Read and check a prompt file. Errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist (config key leap.prompts)")
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return prompts_from_dict(raw, source=str(path))


def prompts_from_dict(raw: dict, source: str = "<inline>") -> PromptSet:
    def need(key: str):
        if key not in raw or raw[key] in (None, "", [], {}):
            raise ValueError(f"{source}: missing or empty key '{key}'")
        return raw[key]

    def per_kind(key: str) -> dict[str, str]:
        value = need(key)
        if not isinstance(value, dict) or any(k not in value for k in _KINDS):
            raise ValueError(f"{source}: '{key}' must map each of {list(_KINDS)} to a string")
        return {k: str(value[k]) for k in _KINDS}

    instruction = per_kind("instruction")
    for kind, text in instruction.items():
        if "{question}" not in text:
            raise ValueError(f"{source}: instruction.{kind} must contain the {{question}} placeholder")
    openers = tuple(str(o) for o in need("openers"))
    for opener in openers:
        if SUMMARY_OPEN not in opener:
            raise ValueError(f"{source}: every entry of 'openers' must contain {SUMMARY_OPEN}: {opener!r}")
    block = str(need("comment_block"))
    if "{peers}" not in block or COMMENT_OPEN not in block or COMMENT_CLOSE not in block:
        raise ValueError(f"{source}: 'comment_block' must contain {{peers}}, {COMMENT_OPEN} and {COMMENT_CLOSE}")
    peer_line = str(need("peer_line"))
    if "{index}" not in peer_line or "{summary}" not in peer_line:
        raise ValueError(f"{source}: 'peer_line' must contain {{index}} and {{summary}}")
    forcing = per_kind("answer_forcing")
    prefill = None
    if raw.get("leap_prefill"):
        prefill = per_kind("leap_prefill")
    return PromptSet(
        instruction=instruction,
        leap_note=str(raw.get("leap_note") or ""),
        triggers=tuple(str(t) for t in need("triggers")),
        openers=openers,
        comment_block=block,
        peer_line=peer_line,
        no_comments=str(need("no_comments")),
        reflection=str(need("reflection")),
        answer_forcing=forcing,
        leap_prefill=prefill,
        source=source,
    )
