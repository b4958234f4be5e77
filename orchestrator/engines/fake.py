"""A deterministic fake replica and its byte-level tokenizer, for fast tests and scale simulation.

It honours the same `Replica` protocol as the vLLM replica: it stores token ids per path, applies
keep/append edits, tracks a per-path prefix cache in whole blocks, and writes text shaped like a reasoning model's: paragraphs, summaries that close their
tag, `\\boxed{}` answers, sometimes an end-of-thinking marker. What it writes depends only on the
request and the run seed, never on timing, so two runs with the same seed give identical results.

The optional latency model sleeps, per request, for
    uncached_prompt_tokens * prefill_s_per_token + new_tokens * (decode_base_s + decode_per_seq_s * batch)
where batch is the number of requests in flight on this replica, all scaled by `time_scale`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from ..core.rng import stable_int
from ..core.types import GenRequest, GenResult, PathStateMissing
from . import node_id

BLOCK = 16


class FakeTokenizer:
    """UTF-8 bytes as token ids 0-255, plus three special tokens. Deterministic and lossless."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    _specials = {256: "<|im_start|>", 257: "<|im_end|>", 258: "<|pad|>"}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for part in re.split(r"(<\|im_start\|>|<\|im_end\|>)", text):
            if part == "<|im_start|>":
                ids.append(self.bos_token_id)
            elif part == "<|im_end|>":
                ids.append(self.eos_token_id)
            else:
                ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out, buf = [], bytearray()
        for t in ids:
            if t < 256:
                buf.append(t)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(self._specials.get(t, ""))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **_):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n<think>\n"
        return self.encode(text) if tokenize else text


@dataclass(frozen=True)
class LatencyModel:
    prefill_s_per_token: float = 0.0
    decode_base_s: float = 0.0
    decode_per_seq_s: float = 0.0
    time_scale: float = 1.0

    def seconds(self, uncached: int, new_tokens: int, batch: int) -> float:
        step = self.decode_base_s + self.decode_per_seq_s * max(batch, 1)
        return self.time_scale * (uncached * self.prefill_s_per_token + new_tokens * step)


_NUM = re.compile(r"\\boxed\{(-?\d+)\}|answer is (-?\d+)")


class FakeReplica:
    """Deterministic stand-in for a vLLM replica (same protocol, no model)."""

    def __init__(self, index: int, model: str = "fake", engine: dict | None = None, seed: int = 0):
        engine = dict(engine or {})
        self.index = index
        # Content depends on the run's seed, never on which replica serves a path, so placement,
        # failover and timing cannot change what a run writes.
        self.seed = int(engine.get("run_seed", seed))
        self.max_model_len = int(engine.get("max_model_len", 32768))
        self.think_prob = float(engine.get("think_end_prob", 0.1))
        self.eos_prob = float(engine.get("eos_prob", 0.0))
        self.latency = LatencyModel(**(engine.get("latency") or {}))
        self.tok = FakeTokenizer()
        self.paths: dict[str, list[int]] = {}
        self.computed: dict[str, list[int]] = {}  # per path: tokens whose KV is "cached"
        self.in_flight = 0
        self.served = 0
        self.node = node_id()

    async def info(self) -> dict:
        return {"index": self.index, "node": self.node, "model": "fake", "max_model_len": self.max_model_len}

    async def drop(self, path_keys: list[str]) -> None:
        for key in path_keys:
            self.paths.pop(key, None)
            self.computed.pop(key, None)

    async def ping(self) -> int:
        return self.served

    # -- prefix cache bookkeeping -------------------------------------------------------------
    def _cached(self, key: str, ids: list[int]) -> int:
        """Whole blocks of `ids` that this path computed before. Unlike vLLM, paths share no
        blocks (not even the prompt): that keeps the reported numbers independent of timing."""
        seen = self.computed.get(key, [])
        limit = min(len(seen), len(ids) - 1)  # vLLM always recomputes the last prompt token
        n = 0
        while n < limit and seen[n] == ids[n]:
            n += 1
        return n - n % BLOCK

    # -- generation ----------------------------------------------------------------------------
    async def generate(self, req: GenRequest) -> GenResult:
        if req.full is not None:
            self.paths[req.path_key] = list(req.full)
        elif req.path_key not in self.paths:
            raise PathStateMissing(req.path_key)
        tokens = self.paths[req.path_key][: req.keep] + list(req.append)
        self.paths[req.path_key] = tokens
        room = self.max_model_len - len(tokens)
        if room <= 0:
            return GenResult(req.path_key, [], "", "context", prompt_tokens=len(tokens),
                             replica=self.index, node=self.node)
        cached = self._cached(req.path_key, tokens)
        text, reason, stop_str = self._write(tokens, req, min(req.max_tokens, room))
        new = self.tok.encode(text)[: min(req.max_tokens, room)]
        if reason == "eos":
            new.append(self.tok.eos_token_id)
        elif len(new) >= room and reason == "length" and room < req.max_tokens:
            reason = "length"
        self.in_flight += 1
        try:
            delay = self.latency.seconds(len(tokens) - cached, len(new), self.in_flight)
            await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        self.computed[req.path_key] = tokens + new[:-1]
        self.paths[req.path_key] = tokens + new
        self.served += 1
        return GenResult(req.path_key, new, self.tok.decode(new, skip_special_tokens=True), reason,
                         stop_str=stop_str, prompt_tokens=len(tokens), cached_tokens=cached,
                         replica=self.index, node=self.node)

    def _write(self, tokens: list[int], req: GenRequest, limit: int) -> tuple[str, str, str | None]:
        """The text this request produces, why it ended, and the stop string that ended it."""
        context = self.tok.decode(tokens, skip_special_tokens=True)
        rng = random.Random(stable_int(self.seed, req.path_key, len(tokens), context[-200:]))
        belief = self._belief(req.path_key, context, rng)
        if context.endswith("\\boxed{") or context.rstrip().endswith("ANSWER:"):
            return self._clip(f"{belief}}}", limit, "eos")
        if context.rfind("<summarize>") > context.rfind("</summarize>"):
            body = f" worked through the setup and my current answer is {belief}. </summarize>"
            return self._stop_at(body, req.stop, limit)
        if req.kind == "answer":
            return self._clip(f"\n\nThe final answer is \\boxed{{{belief}}}.", limit, "eos")
        parts = []
        while sum(len(p) for p in parts) < limit:
            roll = rng.random()
            if roll < self.think_prob / 4:
                parts.append(f"So the answer is {belief}.\n</think>\n")
                break
            if roll < (self.think_prob + self.eos_prob) / 4 and self.eos_prob > 0:
                parts.append(f"Therefore the answer is \\boxed{{{belief}}}.")
                return self._clip("".join(parts), limit, "eos")
            n = rng.randint(2, 99)
            parts.append(f"Step: combining {n} with the rest gives {n * belief % 97 + belief}.")
            parts.append("\n\n" if rng.random() < 0.5 else " ")
        return self._stop_at("".join(parts), req.stop, limit)

    def _belief(self, key: str, context: str, rng: random.Random) -> int:
        """The path's current answer: its own, or the peers' majority after reading comments."""
        own = stable_int(self.seed, key.rsplit("/", 1)[0], key) % 7 + 1
        comments = context[context.rfind("<comment>"):] if "<comment>" in context else ""
        seen = [int(a or b) for a, b in _NUM.findall(comments)]
        if seen and stable_int(self.seed, key, "adopt") % 2 == 0:
            return Counter(seen).most_common(1)[0][0]
        return own

    def _stop_at(self, text: str, stops: list[str], limit: int) -> tuple[str, str, str | None]:
        best = None
        for s in stops:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None and best[0] + len(best[1]) <= limit:
            return text[: best[0] + len(best[1])], "stop", best[1]
        return self._clip(text, limit, "length" if len(text.encode()) >= limit else "eos")

    @staticmethod
    def _clip(text: str, limit: int, reason: str) -> tuple[str, str, None]:
        raw = text.encode("utf-8")
        if len(raw) > limit:
            return raw[:limit].decode("utf-8", errors="ignore"), "length", None
        return text, reason, None
