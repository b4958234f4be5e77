"""Peer routing: which peers' summaries each path of a group receives (DESIGN.md section 1, step 4).

Contract
--------
`select_peers(summaries, policy, top_k, rng=None, similarity="indel", embed=None)` returns, for
every path i of one group, the ordered list of peer indices it receives (Peer 1 first). A path
never receives itself. `route(...)` is the same selection with each peer's similarity to the
recipient attached; `similarity_matrix(...)` is the pairwise similarity table both use.

Policies (`ROUTERS`, names in `POLICIES`), with k = top_k:

- ``dispersed``: the k least similar peers, ascending similarity;
- ``clustered``: the k most similar peers, descending similarity;
- ``hybrid``: floor(k/2) least similar followed by k - floor(k/2) most similar. The two halves
  are chosen independently, so with few peers a peer may appear twice (kept, as the reference
  code does);
- ``random``: k peers drawn with the caller's seeded ``random.Random`` (``rng.sample`` over the
  other indices in index order); ``rng`` is required;
- ``all``: every other peer in index order. ``top_k == -1`` means ``all`` under any policy.

A k larger than the number of peers takes every peer there is. Sorting is stable: peers with
equal similarity keep path-index order (also when sorting by descending similarity).

Similarities (`SIMILARITIES`): ``indel`` is the normalized Indel similarity (what
python-Levenshtein's ``Levenshtein.ratio`` computes), ``levenshtein`` is the paper's
``1 - lev(a, b) / max(|a|, |b|)`` (1.0 for two empty strings), ``embedding`` is the cosine
similarity of vectors from an injected ``embed(texts) -> list[list[float]]`` callable.
Summaries are compared exactly as given; the caller strips them.

Everything here is pure: the only randomness comes from the ``rng`` argument.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Callable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel, Levenshtein

logger = logging.getLogger(__name__)

Matrix = list[list[float]]
EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]
Router = Callable[[Sequence[Sequence[float]], int, "random.Random | None"], list[list[int]]]


# --------------------------------------------------------------------------- similarities


def indel_similarity(a: str, b: str) -> float:
    """Normalized Indel similarity in [0, 1]; 1.0 for two empty strings."""
    return float(Indel.normalized_similarity(a, b))


def levenshtein_similarity(a: str, b: str) -> float:
    """The paper's ``1 - lev(a, b) / max(|a|, |b|)``; 1.0 for two empty strings."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - Levenshtein.distance(a, b) / longest


def _cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine similarity; 0.0 when either vector is all zeros."""
    dot = sum(x * y for x, y in zip(u, v))
    norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    return dot / norm if norm > 0 else 0.0


def _cdist(summaries: Sequence[str], scorer) -> Matrix:
    """All pairs in rapidfuzz's C++ loop (32 summaries of 1K characters: about a millisecond,
    where one Python call per pair costs tens); the same scorer, so the same values."""
    if not summaries:
        return []
    sim = process.cdist(summaries, summaries, scorer=scorer, dtype=np.float64).tolist()
    for i in range(len(sim)):
        sim[i][i] = 1.0
    return sim


def similarities_to(text: str, others: Sequence[str], similarity: str = "indel") -> list[float]:
    """One summary against several (string similarities only): a row of the matrix, computed
    when a summary arrives so that the barrier itself only sorts."""
    scorer = {"indel": Indel.normalized_similarity, "levenshtein": Levenshtein.normalized_similarity}
    if not others:
        return []
    return process.cdist([text], list(others), scorer=scorer[similarity], dtype=np.float64)[0].tolist()


STRING_SIMILARITIES = ("indel", "levenshtein")


def _indel_matrix(summaries: Sequence[str], embed: EmbedFn | None = None) -> Matrix:
    return _cdist(summaries, Indel.normalized_similarity)


def _levenshtein_matrix(summaries: Sequence[str], embed: EmbedFn | None = None) -> Matrix:
    # rapidfuzz normalizes the unit-weight distance by max(|a|, |b|): the paper's formula
    return _cdist(summaries, Levenshtein.normalized_similarity)


def _embedding_matrix(summaries: Sequence[str], embed: EmbedFn | None = None) -> Matrix:
    if embed is None:
        raise ValueError(
            "similarity='embedding' needs an embed(texts) callable "
            "(see orchestrator.coordinator.embedding.load_embedder)"
        )
    if not summaries:
        return []
    vectors = [list(map(float, v)) for v in embed(list(summaries))]
    if len(vectors) != len(summaries):
        raise ValueError(f"embed returned {len(vectors)} vectors for {len(summaries)} texts")
    n = len(vectors)
    sim = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            value = _cosine(vectors[i], vectors[j])
            sim[i][j] = value
            sim[j][i] = value
    return sim


SIMILARITIES: dict[str, Callable[[Sequence[str], EmbedFn | None], Matrix]] = {
    "indel": _indel_matrix,
    "levenshtein": _levenshtein_matrix,
    "embedding": _embedding_matrix,
}


def similarity_matrix(
    summaries: Sequence[str], similarity: str = "indel", embed: EmbedFn | None = None
) -> Matrix:
    """Pairwise similarity of the summaries (``sim[i][j]``, symmetric, diagonal 1.0)."""
    return SIMILARITIES[_check_similarity(similarity)](list(summaries), embed)


# --------------------------------------------------------------------------- routers


def _others(n: int, i: int) -> list[int]:
    """Every index but i, in index order."""
    return [j for j in range(n) if j != i]


def _least_similar(sim: Sequence[Sequence[float]], i: int, k: int) -> list[int]:
    """The k peers least similar to i; stable, so ties keep index order."""
    return sorted(_others(len(sim), i), key=lambda j: sim[i][j])[:k]


def _most_similar(sim: Sequence[Sequence[float]], i: int, k: int) -> list[int]:
    """The k peers most similar to i; stable on the negated key, so ties keep index order."""
    return sorted(_others(len(sim), i), key=lambda j: -sim[i][j])[:k]


def route_dispersed(sim: Sequence[Sequence[float]], k: int, rng: random.Random | None = None):
    """Each path gets its k least similar peers."""
    return [_least_similar(sim, i, k) for i in range(len(sim))]


def route_clustered(sim: Sequence[Sequence[float]], k: int, rng: random.Random | None = None):
    """Each path gets its k most similar peers."""
    return [_most_similar(sim, i, k) for i in range(len(sim))]


def route_hybrid(sim: Sequence[Sequence[float]], k: int, rng: random.Random | None = None):
    """floor(k/2) least similar, then k - floor(k/2) most similar (duplicates kept)."""
    low = k // 2
    high = k - low
    return [_least_similar(sim, i, low) + _most_similar(sim, i, high) for i in range(len(sim))]


def route_random(sim: Sequence[Sequence[float]], k: int, rng: random.Random | None = None):
    """k peers per path drawn with ``rng.sample``, paths in index order."""
    if rng is None:
        raise ValueError("policy 'random' needs an rng (a seeded random.Random)")
    out = []
    for i in range(len(sim)):
        others = _others(len(sim), i)
        out.append(rng.sample(others, min(k, len(others))))
    return out


def route_all(sim: Sequence[Sequence[float]], k: int, rng: random.Random | None = None):
    """Every other peer, in index order; k is ignored."""
    return [_others(len(sim), i) for i in range(len(sim))]


ROUTERS: dict[str, Router] = {
    "dispersed": route_dispersed,
    "clustered": route_clustered,
    "hybrid": route_hybrid,
    "random": route_random,
    "all": route_all,
}
POLICIES: tuple[str, ...] = tuple(ROUTERS)

# Policies whose choice does not look at similarities (select_peers skips computing them).
_SIMILARITY_FREE = frozenset({"random", "all"})


# --------------------------------------------------------------------------- public API


def _check_policy(policy: str) -> str:
    if policy not in ROUTERS:
        raise ValueError(f"unknown routing policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


def _check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        allowed = ", ".join(SIMILARITIES)
        raise ValueError(f"unknown similarity {similarity!r}; allowed: {allowed}")
    return similarity


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be an int (-1 for all peers), got {top_k!r}")
    if top_k < -1:
        raise ValueError(f"top_k must be >= 0 or -1 for all peers, got {top_k}")
    return top_k


def _effective_policy(policy: str, top_k: int) -> str:
    return "all" if top_k == -1 else policy


def _choose(sim: Sequence[Sequence[float]], policy: str, top_k: int, rng) -> list[list[int]]:
    peers = ROUTERS[_effective_policy(policy, top_k)](sim, top_k, rng)
    logger.debug("routed %d paths with policy=%s top_k=%d: %s", len(sim), policy, top_k, peers)
    return peers


def route(
    summaries: Sequence[str],
    policy: str,
    top_k: int,
    rng: random.Random | None = None,
    similarity: str = "indel",
    embed: EmbedFn | None = None,
    sim: Matrix | None = None,
) -> list[list[tuple[int, float]]]:
    """For each path, its peers (Peer 1 first) with their similarity to that path. `sim`, when
    given, is the similarity matrix already computed (e.g. as the summaries arrived)."""
    _check_policy(policy)
    _check_similarity(similarity)
    _check_top_k(top_k)
    if sim is None:
        sim = similarity_matrix(summaries, similarity, embed)
    chosen = _choose(sim, policy, top_k, rng)
    return [[(j, sim[i][j]) for j in peers] for i, peers in enumerate(chosen)]


def select_peers(
    summaries: Sequence[str],
    policy: str,
    top_k: int,
    rng: random.Random | None = None,
    similarity: str = "indel",
    embed: EmbedFn | None = None,
) -> list[list[int]]:
    """For each path i, the ordered peer indices it receives (Peer 1 first), never i itself."""
    _check_policy(policy)
    _check_similarity(similarity)
    _check_top_k(top_k)
    if _effective_policy(policy, top_k) in _SIMILARITY_FREE:
        n = len(summaries)
        sim: Matrix = [[0.0] * n for _ in range(n)]
    else:
        sim = similarity_matrix(summaries, similarity, embed)
    return _choose(sim, policy, top_k, rng)


__all__ = [
    "POLICIES",
    "ROUTERS",
    "SIMILARITIES",
    "indel_similarity",
    "levenshtein_similarity",
    "route",
    "select_peers",
    "similarities_to",
    "similarity_matrix",
]
