"""Exact nearest-neighbour search by inner product, in blocks, so memory stays bounded for any corpus size.

The corpus arrives block by block (an encoder can produce it that way, so a 1M-passage corpus is never held
as one matrix); :class:`TopK` keeps the running top-k of every query. Order is the total order
(score descending, corpus id ascending): sentence-transformers' ``InformationRetrievalEvaluator`` breaks ties
the same way (by ascending corpus id), so ranks do not depend on the block size. One limit: scores are
float32 inner products from BLAS, whose kernels may round the same product differently by a row's place in
a block, so two rows that score within one unit in the last place can swap between block sizes (identical
rows included). Give L2-normalized vectors for cosine similarity.

With ``backend="faiss"`` (``pip install 'embedtune[faiss]'``) each block is searched by a flat inner-product
index (exact too, multi-threaded BLAS), with the same tie order; ``"auto"`` takes faiss when it is installed,
numpy otherwise.
"""

from __future__ import annotations

import importlib.util

import numpy as np

BACKENDS = ("auto", "numpy", "faiss")
DEFAULT_SCORE_BYTES = 64 * 2**20
"""Memory for one block of query x corpus scores (float32); the query block is sized to fit it."""


def resolve_backend(backend: str = "auto") -> str:
    """``numpy`` or ``faiss`` (``auto``: faiss when importable).

    Raises:
        ValueError: an unknown backend.
        ImportError: ``faiss`` asked for but not installed (the message names the extra).
    """
    if backend not in BACKENDS:
        raise ValueError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    have_faiss = importlib.util.find_spec("faiss") is not None
    if backend == "faiss" and not have_faiss:
        raise ImportError("search backend 'faiss' needs faiss: pip install 'embedtune[faiss]' (or faiss-cpu)")
    if backend == "auto":
        return "faiss" if have_faiss else "numpy"
    return backend


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _block_topk_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of each row under (score desc, column asc). (Q, C) -> (Q, k) scores and columns."""
    if k >= scores.shape[1]:
        cols = np.argsort(-scores, axis=1, kind="stable")  # stable: equal scores keep column order
        return np.take_along_axis(scores, cols, axis=1), cols
    cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k), unordered, arbitrary among boundary ties
    top = np.take_along_axis(scores, cols, axis=1)
    kth = top.min(axis=1, keepdims=True)
    tied = np.flatnonzero((scores >= kth).sum(axis=1) > k)  # rows where argpartition chose among ties
    if tied.size:
        exact = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
        cols[tied] = exact
        top[tied] = np.take_along_axis(scores[tied], exact, axis=1)
    return top, cols


def _block_topk_faiss(index, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_block_topk_numpy`, by a faiss flat index; rows where equal scores straddle the k-th place
    (faiss picks among them its own way) are redone with numpy, so both backends give the same ids."""
    extra = int(k < len(block))
    top, cols = index.search(queries, k + extra)  # (Qb, k + 1): the next score shows a tie across the cut
    if extra:
        tied = np.flatnonzero(top[:, k - 1] == top[:, k])
        top, cols = top[:, :k].copy(), cols[:, :k].copy()
        if tied.size:
            top[tied], cols[tied] = _block_topk_numpy(queries[tied] @ block.T, k)
    return top, cols


class TopK:
    """Running top-k corpus ids and scores of each query, merged block by block.

    Args:
        queries: (Q, D) float32 query vectors.
        k: how many hits to keep per query.
        backend: ``auto``, ``numpy`` or ``faiss`` (see :func:`resolve_backend`).
        score_bytes: memory for one block of scores; queries are processed in blocks that fit it.
    """

    def __init__(self, queries: np.ndarray, k: int, backend: str = "auto",
                 score_bytes: int = DEFAULT_SCORE_BYTES) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
        self.k = k
        self.backend = resolve_backend(backend)
        self.score_bytes = score_bytes
        n = len(self.queries)
        self.scores = np.full((n, k), -np.inf, dtype=np.float32)  # (Q, k), best first
        self.ids = np.full((n, k), -1, dtype=np.int64)  # (Q, k); -1: no hit yet
        self.seen = 0  # corpus vectors added so far

    def add(self, block: np.ndarray, first_id: int | None = None) -> None:
        """Search one corpus block (C, D) whose rows have ids ``first_id .. first_id + C - 1``
        (default: right after the previous block)."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.queries.shape[1]:
            raise ValueError(f"corpus block of shape {block.shape} does not match queries of dimension "
                             f"{self.queries.shape[1]}")
        first_id = self.seen if first_id is None else first_id
        self.seen = max(self.seen, first_id + len(block))
        if not len(block) or not len(self.queries):
            return
        k = min(self.k, len(block))
        index = self._faiss_index(block) if self.backend == "faiss" else None
        step = max(1, self.score_bytes // (4 * len(block)))
        for start in range(0, len(self.queries), step):
            q = self.queries[start : start + step]  # (Qb, D)
            if index is not None:
                top, cols = _block_topk_faiss(index, q, block, k)
            else:
                top, cols = _block_topk_numpy(q @ block.T, k)  # scores (Qb, C)
            self._merge(slice(start, start + len(q)), top.astype(np.float32), cols.astype(np.int64) + first_id)

    @staticmethod
    def _faiss_index(block: np.ndarray):
        import faiss

        index = faiss.IndexFlatIP(block.shape[1])
        index.add(block)
        return index

    def _merge(self, rows: slice, top: np.ndarray, ids: np.ndarray) -> None:
        scores = np.concatenate([self.scores[rows], top], axis=1)  # (Qb, k + k')
        cand = np.concatenate([self.ids[rows], ids], axis=1)
        empty = cand < 0
        # Sort by score descending, then id ascending; empty slots (-inf, id -1) go last.
        order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, cand), -scores), axis=1)[:, : self.k]
        self.scores[rows] = np.take_along_axis(scores, order, axis=1)
        self.ids[rows] = np.take_along_axis(cand, order, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k') ids and scores, best first, where k' = min(k, corpus size)."""
        k = min(self.k, self.seen)
        return self.ids[:, :k], self.scores[:, :k]


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, *, block_size: int = 65536,
                 backend: str = "auto", score_bytes: int = DEFAULT_SCORE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Top-k corpus rows per query by inner product, the corpus searched ``block_size`` rows at a time.

    Returns:
        ids (Q, k') and scores (Q, k'), best first, k' = min(k, len(corpus)).
    """
    topk = TopK(queries, k, backend, score_bytes)
    for start in range(0, len(corpus), block_size):
        topk.add(corpus[start : start + block_size], start)
    return topk.result()
