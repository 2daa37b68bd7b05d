"""Retrieval evaluation from a pair file: does the right passage come first for a query?

The input is a training-style file (``query``/``anchor``/``sent0``, ``positive``/``pos``/``sent1``, optional
``negative``/``neg``/``hard_neg``; csv/tsv/jsonl, optionally .gz), validated row by row like ``data check``.
Rows with the same query text form one query whose relevant passages are all its positives. The corpus is
every distinct positive and negative of the file, then every new passage of an optional corpus file (.txt, one
passage per line, or .jsonl with a ``text`` field). Each query is searched against the whole corpus by cosine
similarity (:mod:`embedtune.search`: exact, in blocks; the corpus is encoded and searched a chunk at a time, so
memory is the query vectors plus one chunk, whatever the corpus size).

Metrics, as sentence-transformers' ``InformationRetrievalEvaluator`` and MTEB's retrieval evaluator define them
(binary relevance, averaged over queries; a query's hits are ranked by score, ties by corpus order):

- recall@k: relevant passages in the top k / relevant passages of the query;
- MRR@k: 1 / rank of the first relevant passage in the top k (0 when none is);
- nDCG@k: sum over the top k of rel_i / log2(i + 1), divided by the same sum for an ideal ranking
  (min(#relevant, k) ones first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.formats import DataError, _Lines
from ..data.triplets import iter_examples
from ..io import write_text_atomic
from ..search import TopK, l2_normalize

RETRIEVAL_JSON = "retrieval.json"
RETRIEVAL_MD = "retrieval.md"
RETRIEVAL_SCHEMA_VERSION = 1
METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")
TOP_K = 10
"""Hits kept per query: the largest k of :data:`METRICS`."""
CORPUS_SUFFIXES = (".txt", ".jsonl")


@dataclass
class RetrievalData:
    """Queries, their relevant passage ids, the pair file's passages, and where the rest of the corpus is.

    Passage ids are positions in the corpus: the pair file's passages first (``passages``), then the new
    passages of ``corpus_file`` in file order.
    """

    file: str
    queries: list[str]
    relevant: list[frozenset[int]]
    passages: list[str]
    corpus_file: str | None = None
    corpus_size: int = 0
    corpus_file_duplicates: int = 0

    def corpus(self) -> Iterator[str]:
        """Every corpus passage in id order (the corpus file is streamed, not held)."""
        yield from self.passages
        if self.corpus_file is not None:
            for _, text in _new_passages(self.corpus_file, set(self.passages)):
                yield text


def _corpus_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line, passage) of a .txt (one per line) or .jsonl (``text`` field) file, .gz allowed; strict.

    Raises:
        DataError: bad UTF-8 or NUL bytes, an empty line, a JSON line without a string ``text``, no passages.
    """
    p = Path(path)
    lower = p.name.lower().removesuffix(".gz")
    if not p.is_file():
        raise DataError(path, f"file not found (looked at {p.resolve()})", expected="a corpus file")
    if not lower.endswith(CORPUS_SUFFIXES):
        raise DataError(path, "unsupported corpus file type", expected="a .txt (one passage per line) or .jsonl "
                        "('text' field) file, optionally .gz")
    jsonl = lower.endswith(".jsonl")
    lines = _Lines(p)
    count = 0
    try:
        for n, raw in enumerate(lines, 1):
            if n in lines.problems:
                raise DataError(path, lines.problems[n], line=n, expected="UTF-8 text without NUL bytes")
            text = raw.rstrip("\r\n")
            if jsonl:
                text = _json_text(path, n, text)
            elif not text.strip():
                raise DataError(path, "empty line", line=n, expected="one passage per line")
            count += 1
            yield n, text
    finally:
        lines.close()
    if count == 0:
        raise DataError(path, "no passages", expected="at least one passage")


def _json_text(path: str, n: int, text: str) -> str:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at column {exc.colno})", line=n,
                        expected="one JSON object per line") from None
    value = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if not isinstance(obj, dict) or "text" not in obj else "not a non-empty string"
        raise DataError(path, problem, line=n, field="text", expected="a non-empty string")
    return value


def _new_passages(path: str, known: set[str], counts: dict[str, int] | None = None) -> Iterator[tuple[int, str]]:
    """Corpus-file passages not seen before (in ``known`` or earlier in the file), in file order.
    ``counts["lines"]`` is set to the number of passages read (new or not)."""
    seen = {hash(t) for t in known}  # one int per passage, not the text
    for n, text in _corpus_lines(path):
        if counts is not None:
            counts["lines"] = n
        key = hash(text)
        if key not in seen:
            seen.add(key)
            yield n, text


def load_retrieval_data(path: str | Path, corpus_file: str | Path | None = None,
                        columns: dict[str, str] | None = None, on_bad_row: str = "error") -> RetrievalData:
    """Read and validate a pair file (and the corpus file, in one streaming pass) into queries and qrels.

    Raises:
        DataError: a bad row or file (``FILE:LINE: field 'X': ...``), as ``data check`` reports it.
    """
    query_ids: dict[str, int] = {}
    passage_ids: dict[str, int] = {}
    relevant: list[set[int]] = []
    for ex in iter_examples(str(path), columns, on_bad_row):
        q = query_ids.setdefault(ex.anchor, len(query_ids))
        if q == len(relevant):
            relevant.append(set())
        relevant[q].add(passage_ids.setdefault(ex.positive, len(passage_ids)))
        if ex.negative is not None:
            passage_ids.setdefault(ex.negative, len(passage_ids))
    data = RetrievalData(str(path), list(query_ids), [frozenset(r) for r in relevant], list(passage_ids))
    data.corpus_size = len(passage_ids)
    if corpus_file is not None:
        data.corpus_file = str(corpus_file)
        counts = {"lines": 0}
        new = sum(1 for _ in _new_passages(data.corpus_file, set(passage_ids), counts))
        data.corpus_size += new
        data.corpus_file_duplicates = counts["lines"] - new
    return data


def retrieval_metrics(ids: np.ndarray, relevant: Sequence[frozenset[int] | set[int]],
                      recall_at: Sequence[int] = (1, 10), mrr_at: Sequence[int] = (10,),
                      ndcg_at: Sequence[int] = (10,)) -> dict[str, float]:
    """recall@k, MRR@k and nDCG@k (binary relevance) averaged over queries.

    Args:
        ids: (Q, K) ranked corpus ids per query, best first (-1 pads a short list).
        relevant: the relevant corpus ids of each query (at least one each).
    """
    if len(ids) != len(relevant):
        raise ValueError(f"{len(ids)} ranked lists for {len(relevant)} queries")
    if any(len(r) == 0 for r in relevant):
        raise ValueError("every query needs at least one relevant passage")
    hits = np.array([[i in rel for i in row] for row, rel in zip(ids.tolist(), relevant)], dtype=bool)  # (Q, K)
    n_rel = np.array([len(r) for r in relevant], dtype=np.float64)  # (Q,)
    discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)  # (K,)
    out: dict[str, float] = {}
    for k in recall_at:
        out[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(axis=1) / n_rel))
    for k in mrr_at:
        top = hits[:, :k]
        first = top.argmax(axis=1)
        out[f"mrr@{k}"] = float(np.mean(np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)))
    for k in ndcg_at:
        dcg = (hits[:, :k] * discount[: min(k, hits.shape[1])]).sum(axis=1)
        full = 1.0 / np.log2(np.arange(k) + 2.0)
        ideal = np.array([full[: int(min(r, k))].sum() for r in n_rel])
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
    return out


@dataclass
class RetrievalScores:
    """What one retrieval evaluation measured."""

    file: str
    corpus_file: str | None
    queries: int
    corpus: int
    relevant: int
    metrics: dict[str, float]
    search: str
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for t in texts:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def evaluate_retrieval(encoder: Any, data: RetrievalData, *, batch_size: int = 64, chunk_size: int = 16384,
                       backend: str = "auto", show_progress: bool = False,
                       encode: Callable[[list[str]], np.ndarray] | None = None) -> RetrievalScores:
    """Search every query of ``data`` against its corpus and score the rankings.

    Args:
        encoder: an :class:`~embedtune.Embedder` or peer (anything with ``encode(texts, batch_size, show_progress)``).
        data: from :func:`load_retrieval_data`.
        chunk_size: corpus passages encoded and searched at a time (memory: chunk_size x dim floats).
        backend: ``auto``, ``numpy`` or ``faiss`` (:func:`embedtune.search.resolve_backend`).
        encode: replaces ``encoder.encode`` (tests feed fixed vectors).
    """
    from tqdm.auto import tqdm

    def embed(texts: list[str], progress: bool) -> np.ndarray:
        if encode is not None:
            return l2_normalize(encode(texts))
        return l2_normalize(encoder.encode(texts, batch_size=batch_size, show_progress=progress))

    start = time.perf_counter()
    topk = TopK(embed(data.queries, show_progress), k=TOP_K, backend=backend)
    t_queries = time.perf_counter() - start
    t_search = 0.0
    with tqdm(total=data.corpus_size, unit="passage", desc="corpus", disable=not show_progress) as bar:
        for chunk in _chunks(data.corpus(), chunk_size):
            vectors = embed(chunk, False)
            t0 = time.perf_counter()
            topk.add(vectors)
            t_search += time.perf_counter() - t0
            bar.update(len(chunk))
    ids, _ = topk.result()
    total = time.perf_counter() - start
    seconds = {"encode_queries": t_queries, "encode_corpus": total - t_queries - t_search, "search": t_search,
               "total": total}
    return RetrievalScores(data.file, data.corpus_file, len(data.queries), topk.seen,
                           sum(len(r) for r in data.relevant), retrieval_metrics(ids, data.relevant),
                           topk.backend, {k: round(v, 3) for k, v in seconds.items()})


def retrieval_payload(scores: RetrievalScores, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``retrieval.json`` payload: the scores plus what was evaluated (version, commit, machine added)."""
    from ..provenance import environment_meta

    return {"schema_version": RETRIEVAL_SCHEMA_VERSION, **scores.to_dict(), "meta": {**environment_meta(), **meta}}


def retrieval_table(payloads: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per metric, one column per run (values as fractions, 4 decimals)."""
    labels = list(payloads)
    lines = ["| Metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for m in METRICS:
        cells = [f"{p['metrics'][m]:.4f}" if m in p["metrics"] else "–" for p in payloads.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_retrieval_results(out_dir: str | Path, payload: dict[str, Any], label: str) -> Path:
    """Write ``retrieval.json`` and ``retrieval.md`` into ``out_dir`` (atomically); return the JSON path."""
    out = Path(out_dir)
    corpus = f" + {payload['corpus_file']}" if payload.get("corpus_file") else ""
    md = (f"# Retrieval: {label}\n\n{payload['file']}{corpus}: {payload['queries']} queries, {payload['corpus']} "
          f"passages, search {payload['search']}\n\n" + retrieval_table({label: payload}) + "\n")
    write_text_atomic(out / RETRIEVAL_MD, md)
    return write_text_atomic(out / RETRIEVAL_JSON, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
