"""Seeded randomness: every random choice comes from an RNG keyed by (seed, problem, path, round).

Python's `hash()` is salted per process, so keys are hashed with sha256 instead; the same key
gives the same stream on every machine and every run.
"""

from __future__ import annotations

import hashlib
import random


def stable_int(*parts: object) -> int:
    """A 64-bit integer derived from the parts' text; identical across processes and machines."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def rng_for(seed: int, problem: str, path: int, round_: int, purpose: str = "") -> random.Random:
    """The RNG for one decision. `path` is -1 for group-wide choices (e.g. the random router)."""
    return random.Random(stable_int(seed, problem, path, round_, purpose))
