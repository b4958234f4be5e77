"""Per-token confidences from a vLLM completion's sample logprobs, computed inside the replica.

vLLM returns, for each sampled token, the `k` most likely tokens' logprobs (ranks 1..k) and also
the sampled token's own (first, with its true rank, so one more entry when it is not among the
top k). Either as a list of {token id: Logprob} dicts, or as `FlatLogprobs` (parallel lists with
start/end indices per position, `SamplingParams(flat_logprobs=True)`: far fewer objects). A
token's confidence uses exactly the `k` top-ranked entries, one per rank, whatever the sampled
token was, reduced to minus their mean (`core.confidence.token_confidence`), so only one float
per token leaves the replica.

Flat logprobs laid out as vLLM writes them (each position: the sampled entry, then ranks 1..k)
are reduced for all positions at once with numpy, the same mean as `token_confidence` takes
row by row: per token that costs well under a microsecond instead of tens, which matters at a
GPU's tens of thousands of tokens a second. Anything else goes position by position.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.confidence import token_confidence


def top_k_logprobs(entries: Sequence[tuple[int | None, float]], k: int) -> list[float]:
    """The logprobs of ranks 1..k among (rank, logprob) entries of one position; the sampled
    token's extra entry (a rank above k) is left out, and a rank seen twice (the sampled token
    is also one of the top k) counts once."""
    by_rank: dict[int, float] = {}
    for rank, logprob in entries:
        if rank is not None and 1 <= rank <= k:
            by_rank.setdefault(rank, float(logprob))
    return [by_rank[r] for r in sorted(by_rank)]


def positions(sample_logprobs: Any) -> list[list[tuple[int | None, float]]]:
    """(rank, logprob) entries of every position, from either form vLLM returns."""
    if sample_logprobs is None:
        return []
    if hasattr(sample_logprobs, "start_indices"):  # FlatLogprobs
        ranks, values = sample_logprobs.ranks, sample_logprobs.logprobs
        return [list(zip(ranks[s:e], values[s:e]))
                for s, e in zip(sample_logprobs.start_indices, sample_logprobs.end_indices)]
    return [[(lp.rank, lp.logprob) for lp in (pos or {}).values()] for pos in sample_logprobs]


def flat_top_k(sample_logprobs: Any, k: int, count: int) -> np.ndarray | None:
    """count x k top logprobs of flat logprobs in vLLM's layout (every position: its sampled
    entry, then ranks 1..k in order); None for anything else."""
    if not hasattr(sample_logprobs, "start_indices") or count <= 0 or k <= 0:
        return None
    starts = np.asarray(sample_logprobs.start_indices[:count], dtype=np.int64)
    ends = np.asarray(sample_logprobs.end_indices[:count], dtype=np.int64)
    if len(starts) < count or not np.all(ends - starts == k + 1):
        return None
    at = starts[:, None] + 1 + np.arange(k)
    ranks = np.asarray(sample_logprobs.ranks)[at]  # ints; objects if vLLM left a rank out (None)
    if not np.all(ranks == np.arange(1, k + 1)):
        return None
    return np.asarray(sample_logprobs.logprobs, dtype=np.float64)[at]


def token_confidences(sample_logprobs: Any, k: int, count: int) -> list[float]:
    """One confidence for each of the completion's `count` tokens. A position vLLM returned no
    logprobs for (none should be missing) gets `token_confidence([])`."""
    top = flat_top_k(sample_logprobs, k, count)
    if top is not None:
        return (-top.mean(axis=1)).tolist()
    per = positions(sample_logprobs)
    if len(per) < count:
        per += [[] for _ in range(count - len(per))]
    return [token_confidence(top_k_logprobs(entries, k)) for entries in per[:count]]
