"""The replica's reduction of vLLM's sample logprobs to one confidence a token (engines/logprobs.py)."""

import random
from types import SimpleNamespace

import pytest

from orchestrator.core.confidence import token_confidence
from orchestrator.engines.logprobs import flat_top_k, positions, token_confidences, top_k_logprobs


def lp(logprob, rank):
    return SimpleNamespace(logprob=logprob, rank=rank)


def flat(rows):
    """FlatLogprobs-like: each row a list of (rank, logprob) entries of one position."""
    out = SimpleNamespace(start_indices=[], end_indices=[], ranks=[], logprobs=[])
    for row in rows:
        out.start_indices.append(len(out.logprobs))
        for rank, value in row:
            out.ranks.append(rank)
            out.logprobs.append(value)
        out.end_indices.append(len(out.logprobs))
    return out


def test_the_sampled_tokens_extra_entry_is_left_out():
    # k = 3; the sampled token ranks 5th, so vLLM lists 4 entries
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
    as_flat = flat([[(5, -4.0), (1, -0.1), (2, -1.0), (3, -2.0)], [(1, -0.5), (1, -0.5), (2, -0.9), (3, -3.0)]])
    want = [pytest.approx(3.1 / 3), pytest.approx(4.4 / 3)]
    assert flat_top_k(as_flat, 3, 2) is not None  # vLLM's layout: all positions at once
    assert token_confidences(as_dicts, 3, 2) == want
    assert token_confidences(as_flat, 3, 2) == want
    assert len(positions(as_flat)) == 2


def test_all_at_once_equals_the_cores_token_confidence_row_by_row():
    rng = random.Random(7)
    k, rows = 20, []
    for _ in range(50):
        top = sorted((-rng.expovariate(0.3) for _ in range(k)), reverse=True)
        sampled = rng.choice([(rng.randint(1, k), None), (rng.randint(k + 1, 900), -rng.uniform(8, 20))])
        value = top[sampled[0] - 1] if sampled[1] is None else sampled[1]
        rows.append([(sampled[0], value)] + [(r + 1, v) for r, v in enumerate(top)])
    got = token_confidences(flat(rows), k, len(rows))
    assert flat_top_k(flat(rows), k, len(rows)) is not None
    assert got == [pytest.approx(token_confidence([v for _, v in row[1:]]), rel=1e-12) for row in rows]


def test_another_layout_goes_position_by_position():
    # a position without the sampled entry first: not vLLM's layout, still exactly the top k
    odd = flat([[(1, -0.5), (2, -1.5)], [(3, -9.0), (1, -0.2), (2, -0.4)]])
    assert flat_top_k(odd, 2, 2) is None
    assert token_confidences(odd, 2, 2) == [pytest.approx(1.0), pytest.approx(0.3)]


def test_one_confidence_per_token_even_when_positions_are_missing():
    assert token_confidences([{1: lp(-1.0, 1)}], 1, 3) == [1.0, 0.0, 0.0]
    assert token_confidences(flat([[(1, -1.0), (1, -1.0)]]), 1, 2) == [1.0, 0.0]
    assert token_confidences(None, 20, 0) == []
