"""benchmarks/search_backends.py: the timed search finds the true top k, and both backends agree up to near-ties."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import search_backends  # noqa: E402


def test_the_timed_search_returns_the_exact_top_k_across_blocks():
    queries, corpus = search_backends.unit_vectors(40, 8, 0), search_backends.unit_vectors(300, 8, 1)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-6)
    _, ids = search_backends.time_search(queries, corpus, 7, "numpy", block_size=64)
    expected = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :7]
    assert np.array_equal(ids, expected)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is in the dev extra")
def test_the_script_compares_both_backends_and_exits_zero_when_they_agree(capsys):
    rc = search_backends.main(["--queries", "50", "--corpus", "500", "--dim", "16", "--k", "5",
                               "--block-size", "128"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "the same ranking from every backend, near-ties aside: yes" in out and "faiss" in out and "numpy" in out


def test_rank_gaps_tells_a_near_tie_from_a_wrong_ranking():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    corpus = np.array([[0.5, 0.0], [0.5, 1e-9], [0.1, 0.0]], dtype=np.float32)  # rows 0 and 1 tie on the query
    base = np.array([[0, 1, 2]])
    assert search_backends.rank_gaps(queries, corpus, base, base) == (0, 0.0)
    n, gap = search_backends.rank_gaps(queries, corpus, base, np.array([[1, 0, 2]]))
    assert n == 2 and gap <= search_backends.TIE_TOLERANCE
    n, gap = search_backends.rank_gaps(queries, corpus, base, np.array([[2, 1, 0]]))
    assert n == 2 and gap == pytest.approx(0.4)
