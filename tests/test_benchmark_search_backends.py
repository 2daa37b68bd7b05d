"""benchmarks/search_backends.py: the timed search finds the true top k, and both backends agree."""

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
    assert "the same ids from every backend: yes" in out and "faiss" in out and "numpy" in out
