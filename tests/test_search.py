"""Blocked exact search equals one full sort of the score matrix (score descending, corpus id ascending),
whatever the block sizes, with ties at the k-th place, and with faiss (in the dev extra) as with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from embedtune.search import TopK, exact_search, resolve_backend


def full_sort(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ corpus.T  # (Q, C)
    ids = np.broadcast_to(np.arange(len(corpus)), scores.shape)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """Vectors of +-1/4: every inner product is a multiple of 1/16 and exact in float32 whatever the summation
    order, so ties are real ties on any BLAS. (With random real vectors a BLAS kernel can round the same
    product differently by the row's place in a block, and two identical rows then score one ulp apart.)"""
    rng = np.random.default_rng(0)
    queries = rng.choice([-0.25, 0.25], size=(40, 12)).astype(np.float32)
    corpus = rng.choice([-0.25, 0.25], size=(300, 12)).astype(np.float32)
    corpus[[50, 120, 299]] = corpus[7]  # four identical passages: ties wherever corpus[7] ranks
    queries[0] = corpus[7]  # ... in first place for query 0, across blocks
    corpus[200:260] = 0.0  # sixty zero vectors: a 60-way tie at score 0
    return queries, corpus


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
@pytest.mark.parametrize("block_size,score_bytes", [(300, 1 << 20), (64, 1 << 20), (7, 256), (1, 64)])
def test_blocked_search_equals_a_full_sort(vectors, backend, block_size, score_bytes):
    queries, corpus = vectors
    expected_ids, expected_scores = full_sort(queries, corpus, 10)
    ids, scores = exact_search(queries, corpus, 10, block_size=block_size, backend=backend, score_bytes=score_bytes)
    np.testing.assert_array_equal(ids[0, :4], [7, 50, 120, 299])
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_boundary_ties_keep_the_lowest_ids(backend):
    """The k-th place falls inside a run of equal scores: the lowest ids win, in any block split."""
    corpus = np.zeros((50, 4), dtype=np.float32)
    corpus[10] = [1, 0, 0, 0]
    query = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    for block in (50, 9, 1):
        ids, scores = exact_search(query, corpus, 5, block_size=block, backend=backend)
        assert ids.tolist() == [[10, 0, 1, 2, 3], [0, 1, 2, 3, 4]] and scores[0, 0] == 1.0


def test_k_larger_than_the_corpus_returns_the_whole_corpus_ranked():
    topk = TopK(np.array([[1.0, 0.0]]), k=8, backend="numpy")
    topk.add(np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]))
    ids, scores = topk.result()
    assert ids.tolist() == [[1, 2, 0]] and scores.tolist() == [[1.0, 0.5, 0.0]]


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="must be one of auto, numpy, faiss"):
        resolve_backend("annoy")
    assert resolve_backend("numpy") == "numpy"
