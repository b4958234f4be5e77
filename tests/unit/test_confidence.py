"""DeepConf's measures (core.confidence) on hand-made numbers."""

import math

import numpy as np
import pytest

from orchestrator.core.confidence import (
    confidence_threshold,
    lowest_window_confidence,
    token_confidence,
    weighted_vote,
    window_confidences,
)


def test_token_confidence_is_minus_the_mean_top_logprob():
    assert token_confidence([-0.5, -1.5, -4.0]) == pytest.approx(2.0)
    # a peaked distribution (one likely token, unlikely alternatives) is confident
    assert token_confidence([math.log(0.97), math.log(0.01), math.log(0.01)]) > token_confidence(
        [math.log(0.4), math.log(0.3), math.log(0.3)])
    assert token_confidence([0.0]) == 0.0 and token_confidence([]) == 0.0


def test_window_confidences_slide_one_token_at_a_time():
    assert window_confidences([1, 2, 3, 4, 5], 2) == pytest.approx([1.5, 2.5, 3.5, 4.5])
    assert window_confidences([1, 2, 3, 4, 5], 5) == pytest.approx([3.0])
    assert window_confidences([4.0, 2.0], 1) == [4.0, 2.0]
    assert window_confidences([1, 2, 3], 8) == pytest.approx([2.0])  # fewer tokens: one mean
    assert window_confidences([], 8) == []
    with pytest.raises(ValueError):
        window_confidences([1.0], 0)


def test_window_means_match_a_plain_loop_on_long_input():
    rng = np.random.default_rng(0)
    confs = rng.uniform(0, 10, 500).tolist()
    plain = [sum(confs[i:i + 37]) / 37 for i in range(len(confs) - 36)]
    assert window_confidences(confs, 37) == pytest.approx(plain, rel=1e-12)


def test_lowest_window_confidence():
    assert lowest_window_confidence([5, 5, 1, 1, 5, 5], 2) == pytest.approx(1.0)
    assert lowest_window_confidence([5, 5, 1, 1, 5, 5], 3) == pytest.approx(7 / 3)
    assert lowest_window_confidence([2, 4], 10) == pytest.approx(3.0)
    assert lowest_window_confidence([], 10) is None


def test_threshold_is_the_percentile_that_keeps_the_top_share():
    lows = [1.0, 2.0, 3.0, 4.0, 5.0]
    # keep the top 10%: the 90th percentile; keep 90%: the 10th (numpy's linear interpolation)
    assert confidence_threshold(lows, 10) == pytest.approx(4.6)
    assert confidence_threshold(lows, 90) == pytest.approx(1.4)
    assert confidence_threshold([7.0], 10) == 7.0
    assert confidence_threshold(lows, 50) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        confidence_threshold([], 10)
    with pytest.raises(ValueError):
        confidence_threshold(lows, 100)


def test_weighted_vote_sums_weights_and_ignores_none():
    assert weighted_vote(["a", "b", "b"], [5.0, 2.0, 2.0]) == "a"
    assert weighted_vote(["a", "b", "b"], [3.0, 2.0, 2.0]) == "b"
    assert weighted_vote([None, "b", None], [9.0, 1.0, 9.0]) == "b"
    assert weighted_vote([None, None], [1.0, 1.0]) is None and weighted_vote([], []) is None
    with pytest.raises(ValueError):
        weighted_vote(["a"], [1.0, 2.0])


def test_weighted_vote_ties_go_to_the_answer_reaching_the_top_first():
    # a and b both reach 2.0; b gets there at the third input, a only at the fourth
    assert weighted_vote(["a", "b", "b", "a"], [1.0, 1.0, 1.0, 1.0]) == "b"
    assert weighted_vote(["a", "b", "a", "b"], [1.0, 1.0, 1.0, 1.0]) == "a"
    assert weighted_vote(["a", "b"], [2.0, 2.0]) == "a"
