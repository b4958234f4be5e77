"""Tokenizer loading and prompt rendering, at the engine seam.

The coordinator needs the same tokenizer as the replicas: `fake` is the fake replica's byte-level
tokenizer, anything else a checkpoint directory (or hub id) that transformers loads.
"""

from __future__ import annotations

import re
from array import array
from typing import Sequence

import numpy as np

from ..core.prompts import PromptSet
from ..core.types import Problem


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
        # fast paths: the simulation decodes paths of 16K+ tokens on every request
        if isinstance(ids, array):
            arr = np.frombuffer(ids, dtype=np.dtype(ids.typecode)) if len(ids) else np.zeros(0, np.int64)
        else:
            try:
                return bytes(ids).decode("utf-8", errors="replace")  # no special token in it
            except (ValueError, TypeError):
                arr = np.asarray(ids, dtype=np.int64)
        specials = np.flatnonzero(arr >= 256)
        out, start = [], 0
        for i in specials.tolist():
            out.append(arr[start:i].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
            if not skip_special_tokens:
                out.append(self._specials.get(int(arr[i]), ""))
            start = i + 1
        out.append(arr[start:].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **_):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n<think>\n"
        return self.encode(text) if tokenize else text


class TextTokenizer:
    """A transformers tokenizer as the coordinator uses it.

    `encode` adds no special tokens unless asked: the coordinator encodes pieces that go in the
    middle of a path (summary prompts, peer blocks, answer forcing), and tokenizers such as the
    DeepSeek-R1 distills' add a BOS by default, which would put one into every piece. Both
    directions call the Rust backend straight away where that gives the same ids and text as
    transformers' own call: transformers' wrappers cost more than the work itself on a 300-token
    summary (a type check over every id before each decode), and the coordinator does this for
    every summary at every barrier. Everything else is the wrapped tokenizer's.
    """

    def __init__(self, hf):
        self.hf = hf
        self.eos_token_id = hf.eos_token_id
        backend = getattr(hf, "backend_tokenizer", None) if getattr(hf, "is_fast", False) else None
        same_encode = (backend is not None and backend.truncation is None and backend.padding is None
                       and backend.encode_special_tokens == bool(getattr(hf, "split_special_tokens", False)))
        self._encoder = backend if same_encode else None
        # transformers cleans spaces after decoding only when the tokenizer asks for it
        self._decoder = backend if backend is not None and not getattr(hf, "clean_up_tokenization_spaces", False) else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._encoder is not None and not add_special_tokens:
            return self._encoder.encode(text, add_special_tokens=False).ids
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = ids if isinstance(ids, list) else list(ids)
        if self._decoder is not None:
            return self._decoder.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:  # the vocabulary with added tokens, as transformers counts it
        return len(self.hf)

    def __getattr__(self, name):
        if name == "hf":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.hf, name)


def load_tokenizer(spec: str):
    """`fake` gives the fake replica's tokenizer; anything else is a checkpoint directory."""
    if spec == "fake":
        return FakeTokenizer()
    from transformers import AutoTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(spec))


def render_prompt(tok, prompts: PromptSet, problem: Problem, params) -> list[int]:
    """The chat-templated prompt (plus the LeaP-mode assistant prefill) as token ids; rendered
    once per group, then only appended to. `params` is the group's `LeapParams`."""
    messages = [{"role": "user", "content": prompts.user_turn(problem, params.uses_leap_note)}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    prefill = prompts.prefill(problem, params.uses_leap_note)
    return list(ids) + (tok.encode(prefill, add_special_tokens=False) if prefill else [])
