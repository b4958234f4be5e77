"""Routing: hand-computed peer choices for every policy, ties, overlap, errors."""

from __future__ import annotations

import random

import pytest

from orchestrator.core import routing
from orchestrator.core.routing import (
    POLICIES,
    ROUTERS,
    SIMILARITIES,
    route,
    select_peers,
    similarity_matrix,
)

# Normalized Indel similarity = 1 - (|a| + |b| - 2 * LCS) / (|a| + |b|), by hand:
#        0     1     2     3
# 0   aaaa  0.75  0.00  0.50
# 1   aaab  0.75  0.25  0.75
# 2   bbbb  0.00  0.25  0.50
# 3   aabb  0.50  0.75  0.50
SUMMARIES = ["aaaa", "aaab", "bbbb", "aabb"]
EXPECTED_SIM = [
    [1.0, 0.75, 0.0, 0.5],
    [0.75, 1.0, 0.25, 0.75],
    [0.0, 0.25, 1.0, 0.5],
    [0.5, 0.75, 0.5, 1.0],
]


def test_indel_matrix_matches_hand_values():
    sim = similarity_matrix(SUMMARIES)
    for row, expected in zip(sim, EXPECTED_SIM):
        assert row == pytest.approx(expected)


def test_indel_and_levenshtein_known_pair():
    # kitten/sitting: LCS "ittn" = 4 -> Indel 1 - 5/13; Levenshtein distance 3 -> 1 - 3/7.
    indel = similarity_matrix(["kitten", "sitting"], "indel")[0][1]
    lev = similarity_matrix(["kitten", "sitting"], "levenshtein")[0][1]
    assert indel == pytest.approx(8 / 13)
    assert lev == pytest.approx(4 / 7)


def test_empty_strings_are_identical():
    assert similarity_matrix(["", ""], "levenshtein")[0][1] == 1.0
    assert similarity_matrix(["", ""], "indel")[0][1] == 1.0


def test_dispersed_least_similar_with_ties_in_index_order():
    # path 1: peers 0 and 3 tie at 0.75 -> 0 first; path 3: peers 0 and 2 tie at 0.5.
    assert select_peers(SUMMARIES, "dispersed", 2) == [[2, 3], [2, 0], [0, 1], [0, 2]]


def test_clustered_most_similar_with_ties_in_index_order():
    assert select_peers(SUMMARIES, "clustered", 2) == [[1, 3], [0, 3], [3, 1], [1, 0]]


def test_clustered_tie_keeps_index_order_not_reversed():
    # Path 0 sees three identical peers: most-similar order must stay 1, 2, 3.
    assert select_peers(["x", "ab", "ab", "ab"], "clustered", 3)[0] == [1, 2, 3]


def test_hybrid_least_then_most_with_overlap_kept():
    # k=3: floor(3/2)=1 least similar, then 2 most similar; path 3 gets peer 0 twice.
    assert select_peers(SUMMARIES, "hybrid", 3) == [[2, 1, 3], [2, 0, 3], [0, 3, 1], [0, 1, 0]]


def test_hybrid_two_paths_duplicates_the_only_peer():
    assert select_peers(["abc", "xyz"], "hybrid", 2) == [[1, 1], [0, 0]]


def test_hybrid_k1_is_most_similar_only():
    assert select_peers(SUMMARIES, "hybrid", 1) == select_peers(SUMMARIES, "clustered", 1)


def test_k_larger_than_peers_takes_all():
    assert select_peers(SUMMARIES, "dispersed", 10) == [[2, 3, 1], [2, 0, 3], [0, 1, 3], [0, 2, 1]]
    assert select_peers(SUMMARIES, "clustered", 10)[2] == [3, 1, 0]
    assert select_peers(SUMMARIES, "random", 10, rng=random.Random(0))[0] != []
    assert sorted(select_peers(SUMMARIES, "random", 10, rng=random.Random(0))[0]) == [1, 2, 3]


def test_all_policy_and_top_k_minus_one():
    everyone = [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert select_peers(SUMMARIES, "all", 2) == everyone
    for policy in ("dispersed", "clustered", "hybrid"):
        assert select_peers(SUMMARIES, policy, -1) == everyone
    assert select_peers(SUMMARIES, "random", -1) == everyone  # no rng needed for "all"


def test_random_matches_rng_sample_in_index_order():
    expected_rng = random.Random(7)
    expected = [expected_rng.sample([j for j in range(4) if j != i], 2) for i in range(4)]
    assert select_peers(SUMMARIES, "random", 2, rng=random.Random(7)) == expected


def test_random_reproducible_and_seed_dependent():
    texts = [f"summary {i}" for i in range(8)]
    a = select_peers(texts, "random", 3, rng=random.Random(11))
    b = select_peers(texts, "random", 3, rng=random.Random(11))
    c = select_peers(texts, "random", 3, rng=random.Random(12))
    assert a == b
    assert a != c


def test_random_needs_rng():
    with pytest.raises(ValueError, match="rng"):
        select_peers(SUMMARIES, "random", 2)


@pytest.mark.parametrize("policy", ["dispersed", "clustered", "hybrid", "random", "all"])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, -1])
def test_never_self_and_sizes(policy, k):
    texts = ["alpha", "beta", "gamma", "alphabet", "delta", "beta"]
    for seed in range(5):
        peers = select_peers(texts, policy, k, rng=random.Random(seed))
        assert len(peers) == len(texts)
        for i, chosen in enumerate(peers):
            assert i not in chosen
            assert all(0 <= j < len(texts) for j in chosen)
            expected = len(texts) - 1 if (k == -1 or policy == "all") else min(k, len(texts) - 1)
            assert len(chosen) == expected


def test_single_path_and_empty_group():
    assert select_peers(["only"], "dispersed", 4) == [[]]
    assert select_peers(["only"], "random", 4, rng=random.Random(0)) == [[]]
    assert select_peers([], "clustered", 4) == []


def test_route_returns_scores():
    routed = route(SUMMARIES, "dispersed", 2)
    assert routed[0] == [(2, pytest.approx(0.0)), (3, pytest.approx(0.5))]
    assert [[j for j, _ in row] for row in routed] == select_peers(SUMMARIES, "dispersed", 2)
    assert route(SUMMARIES, "clustered", 1, similarity="levenshtein")[0] == [(1, 0.75)]


def test_embedding_similarity_with_injected_embed():
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return [vectors[t] for t in texts]

    sim = similarity_matrix(["a", "b", "c"], "embedding", embed)
    assert sim[0][1] == pytest.approx(0.0)
    assert sim[0][2] == pytest.approx(2**-0.5)
    # Path 2 ties between 0 and 1 -> index order.
    assert select_peers(["a", "b", "c"], "clustered", 1, similarity="embedding", embed=embed) == [
        [2],
        [2],
        [0],
    ]
    assert calls[-1] == ["a", "b", "c"]  # one batched call


def test_embedding_without_embed_names_option():
    with pytest.raises(ValueError, match="embedding"):
        select_peers(SUMMARIES, "dispersed", 2, similarity="embedding")


def test_unknown_names_list_allowed_values():
    with pytest.raises(ValueError, match="dispersed"):
        select_peers(SUMMARIES, "nearest", 2)
    with pytest.raises(ValueError, match="indel"):
        select_peers(SUMMARIES, "dispersed", 2, similarity="jaccard")
    with pytest.raises(ValueError):
        select_peers(SUMMARIES, "dispersed", -2)


def test_registries_exported():
    assert set(POLICIES) == {"dispersed", "clustered", "hybrid", "random", "all"}
    assert set(ROUTERS) == set(POLICIES)
    assert set(SIMILARITIES) == {"indel", "levenshtein", "embedding"}


def test_core_routing_has_no_heavy_imports():
    source = open(routing.__file__).read()
    for name in ("import ray", "import vllm", "import torch"):
        assert name not in source


def test_matrix_equals_the_pairwise_scores_for_both_metrics():
    import random as _random

    from orchestrator.core.routing import indel_similarity, levenshtein_similarity, similarity_matrix

    rng = _random.Random(3)
    texts = ["".join(rng.choice("ab c\n1") for _ in range(rng.randrange(0, 60))) for _ in range(12)]
    texts += ["", ""]
    for name, fn in (("indel", indel_similarity), ("levenshtein", levenshtein_similarity)):
        sim = similarity_matrix(texts, name)
        for i, a in enumerate(texts):
            for j, b in enumerate(texts):
                assert sim[i][j] == (1.0 if i == j else fn(a, b)), (name, a, b)
