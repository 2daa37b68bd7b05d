"""STS evaluation: correlation of embedding similarity with gold scores, computed as MTEB computes it.

Per benchmark each unique sentence is embedded once; then Spearman and Pearson (x100) of the gold
scores against cosine similarity, negative Manhattan distance and negative Euclidean distance.
The main score is cosine Spearman (MTEB's and the paper's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ..data.sts import StsData, load_sts_file_or_task, resolve_task_specs

EncodeFn = Callable[[list[str]], np.ndarray]


@dataclass
class StsScores:
    """Correlations (x100) for one benchmark."""

    task: str
    pairs: int
    unique_sentences: int
    cosine_spearman: float
    cosine_pearson: float
    manhattan_spearman: float
    manhattan_pearson: float
    euclidean_spearman: float
    euclidean_pearson: float
    seconds: float

    @property
    def main_score(self) -> float:
        return self.cosine_spearman

    def to_dict(self) -> dict:
        return asdict(self)


def similarity_scores(emb1: np.ndarray, emb2: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine similarity and negated Manhattan/Euclidean distances of paired rows. (N, D) x2 -> (N,) each."""
    e1 = emb1.astype(np.float64)
    e2 = emb2.astype(np.float64)
    n1 = np.linalg.norm(e1, axis=1)
    n2 = np.linalg.norm(e2, axis=1)
    cosine = (e1 * e2).sum(axis=1) / np.maximum(n1 * n2, 1e-12)
    return {
        "cosine": cosine,
        "manhattan": -np.abs(e1 - e2).sum(axis=1),
        "euclidean": -np.sqrt(((e1 - e2) ** 2).sum(axis=1)),
    }


def correlations(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson (x100) of each similarity against the gold scores."""
    gold = np.asarray(gold, dtype=np.float64)
    out = {}
    for name, sim in similarity_scores(emb1, emb2).items():
        out[f"{name}_spearman"] = float(spearmanr(gold, sim).statistic) * 100
        out[f"{name}_pearson"] = float(pearsonr(gold, sim).statistic) * 100
    return out


def unique_sentences(data: StsData) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unique sentences of a benchmark and the index of each pair's two sentences into that list."""
    index: dict[str, int] = {}
    for s in (*data.sentences1, *data.sentences2):
        index.setdefault(s, len(index))
    i1 = np.fromiter((index[s] for s in data.sentences1), dtype=np.int64, count=len(data))
    i2 = np.fromiter((index[s] for s in data.sentences2), dtype=np.int64, count=len(data))
    return list(index), i1, i2


def score_sts(data: StsData, encode: EncodeFn) -> StsScores:
    """Evaluate one benchmark with ``encode(list_of_texts) -> (N, D)``; each unique sentence is encoded once."""
    start = time.perf_counter()
    texts, i1, i2 = unique_sentences(data)
    emb = np.asarray(encode(texts))
    corr = correlations(emb[i1], emb[i2], data.scores)
    return StsScores(data.name, len(data), len(texts), seconds=time.perf_counter() - start, **corr)


def evaluate_sts(
    embedder,
    tasks: str | list[str] | None = "all",
    data_dir: str | Path | None = None,
    variant: str = "mteb_like",
    batch_size: int = 64,
    show_progress: bool = False,
    max_pairs: int | None = None,
    on_result: Callable[[StsScores], None] | None = None,
) -> list[StsScores]:
    """Evaluate an :class:`~embedtune.Embedder` (anything with ``encode``) on STS benchmarks.

    Args:
        embedder: object with ``encode(texts, batch_size=..., show_progress=...)``.
        tasks: ``all`` (the paper's nine) or names; an entry may also be an STS-format file
            (``sentence1<TAB>sentence2<TAB>score``), reported under its stem.
        data_dir: data folder (see :func:`embedtune.data.sts.find_data_dir`).
        variant: STS12-16 text, ``mteb_like`` or ``raw``.
        max_pairs: evaluate on the first N pairs only (quick dev checks during training).
        on_result: called with each benchmark's scores as soon as it is done (logging, partial results
            of a long run).
    """
    from tqdm.auto import tqdm

    results = []
    names = resolve_task_specs(tasks, validate=False)  # each file is read (and checked) once, below
    for name in tqdm(names, desc="STS", unit="task", disable=not show_progress or len(names) == 1):
        data = load_sts_file_or_task(name, data_dir, variant)
        data = data.head(max_pairs)

        def encode(texts: list[str]) -> np.ndarray:
            return embedder.encode(texts, batch_size=batch_size, show_progress=show_progress)

        results.append(score_sts(data, encode))
        if on_result is not None:
            on_result(results[-1])
    return results
