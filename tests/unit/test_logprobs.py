"""The replica's reduction of vLLM's sample logprobs to one confidence a token (engines/logprobs.py)."""

from types import SimpleNamespace

import pytest

from orchestrator.engines.logprobs import positions, token_confidences, top_k_logprobs


def lp(logprob, rank):
    return SimpleNamespace(logprob=logprob, rank=rank)


def minus_mean(values):
    return -sum(values) / len(values) if values else 0.0


def test_the_sampled_tokens_extra_entry_is_left_out():
    # k = 3; the sampled token (id 9) ranks 5th, so vLLM lists 4 entries
    entries = [(5, -4.0), (1, -0.1), (2, -1.0), (3, -2.0)]
    assert top_k_logprobs(entries, 3) == [-0.1, -1.0, -2.0]


def test_a_sampled_token_among_the_top_k_counts_once():
    # flat form: the sampled token first (rank 2), then ranks 1..3, itself again among them
    entries = [(2, -1.0), (1, -0.1), (2, -1.0), (3, -2.0)]
    assert top_k_logprobs(entries, 3) == [-0.1, -1.0, -2.0]


def test_only_k_entries_even_if_more_are_listed():
    entries = [(r, -float(r)) for r in range(1, 7)]
    assert top_k_logprobs(entries, 4) == [-1.0, -2.0, -3.0, -4.0]


def test_dict_and_flat_forms_give_the_same_confidences():
    as_dicts = [{9: lp(-4.0, 5), 1: lp(-0.1, 1), 2: lp(-1.0, 2), 3: lp(-2.0, 3)},
                {2: lp(-0.5, 1), 7: lp(-0.9, 2), 8: lp(-3.0, 3)}]  # sampled token 2 is rank 1
    flat = SimpleNamespace(start_indices=[0, 4], end_indices=[4, 8],
                           ranks=[5, 1, 2, 3, 1, 1, 2, 3],
                           logprobs=[-4.0, -0.1, -1.0, -2.0, -0.5, -0.5, -0.9, -3.0])
    want = [pytest.approx(3.1 / 3), pytest.approx(4.4 / 3)]
    assert token_confidences(as_dicts, 3, 2, minus_mean) == want
    assert token_confidences(flat, 3, 2, minus_mean) == want
    assert len(positions(flat)) == 2


def test_one_confidence_per_token_even_when_positions_are_missing():
    got = token_confidences([{1: lp(-1.0, 1)}], 1, 3, minus_mean)
    assert got == [1.0, 0.0, 0.0]
    assert token_confidences(None, 20, 0, minus_mean) == []


def test_the_default_reduction_is_the_cores():
    from orchestrator.core.confidence import token_confidence

    entries = [{1: lp(-0.25, 1), 2: lp(-0.75, 2)}]
    assert token_confidences(entries, 2, 1) == [token_confidence([-0.25, -0.75])] == [0.5]
