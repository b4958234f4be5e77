"""DeepConf's confidence measures (arXiv 2508.15260, "Deep Think with Confidence"), as pure
functions of plain numbers.

- Token confidence (the paper's C_i): minus the mean of the token's top-k log-probabilities. A
  peaked next-token distribution gives low-probability alternatives very negative logprobs,
  hence a high confidence.
- Group confidence (C_G): the mean token confidence over a sliding window of `window` tokens;
  consecutive windows overlap and step by one token.
- Lowest group confidence: the smallest window mean of a trace, what DeepConf online compares
  with its stopping threshold.
- Threshold: the (100 - keep)th percentile of the warm-up traces' lowest group confidences, so
  that about `keep` percent of traces like them stay above it (DeepConf-low keeps 10%,
  DeepConf-high 90%).
- Confidence-weighted vote: each answer collects the confidences of the traces that gave it.

The replica applies `token_confidence` to each sampled token (so only one float a token crosses
Ray); the group keeps a path's token confidences and applies the rest.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """Minus the mean of one token's top-k logprobs (0.0 for an empty list)."""
    if len(top_logprobs) == 0:
        return 0.0
    return -float(np.mean(np.asarray(top_logprobs, dtype=np.float64)))


def window_confidences(confs: Sequence[float], window: int) -> list[float]:
    """The mean of every run of `window` consecutive token confidences, in order
    (len(confs) - window + 1 of them); a single mean over all of them when there are fewer
    than `window` (but some); [] when there are none."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    values = np.asarray(confs, dtype=np.float64)
    n = len(values)
    if n == 0:
        return []
    if n < window:
        return [float(values.mean())]
    sums = np.concatenate(([0.0], np.cumsum(values)))
    return ((sums[window:] - sums[:-window]) / window).tolist()


def lowest_window_confidence(confs: Sequence[float], window: int) -> float | None:
    """The smallest of `window_confidences` (None when there are no tokens)."""
    means = window_confidences(confs, window)
    return min(means) if means else None


def confidence_threshold(warmup_lowest: Sequence[float], keep_percent: float) -> float:
    """The stopping threshold: the (100 - keep_percent)th percentile (linear interpolation, as
    numpy computes it) of the warm-up paths' lowest window confidences."""
    if len(warmup_lowest) == 0:
        raise ValueError("a threshold needs at least one warm-up confidence")
    if not 0 < keep_percent < 100:
        raise ValueError(f"keep_percent must be in (0, 100), got {keep_percent}")
    return float(np.percentile(np.asarray(warmup_lowest, dtype=np.float64), 100.0 - keep_percent))


def weighted_vote(answers: Sequence[Hashable | None], weights: Sequence[float]) -> Hashable | None:
    """The answer with the largest sum of weights; None answers are ignored (None when no
    answer is left). Ties go to the answer whose running sum, adding the inputs in order,
    reaches the top weight first. Answers are compared as given (normalize them first)."""
    if len(answers) != len(weights):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    if not totals:
        return None
    top = max(totals.values())
    running: dict = {}
    for answer, weight in zip(answers, weights):
        if answer is None:
            continue
        running[answer] = running.get(answer, 0.0) + float(weight)
        if running[answer] == top and totals[answer] == top:
            return answer
    return max(totals, key=totals.get)  # not reached: the top answer's running sum ends at top
