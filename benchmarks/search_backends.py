"""Exact top-k search time of the numpy and faiss backends of ``embedtune.search.TopK``, at a mining run's size.

The search step of ``data mine-negatives`` (and of ``eval --retrieval``) scores every query against every
corpus vector in blocks and keeps a running top-k. Its cost depends on the sizes, not on the vectors' content,
so this times it on seeded random unit vectors: ``--queries`` x ``--corpus`` vectors of width ``--dim``,
corpus blocks of ``--block-size`` (mining's default), ``--k`` hits per query (mining's ``--range 10:50``
needs 50 plus the exclusions). Both backends run in one process, on the same vectors, and must return the
same ids except at near-ties (rows whose exact scores differ by at most TIE_TOLERANCE, which the two float32
kernels may round into either order); it exits 1 otherwise. The default sizes are those of the 100k-pair
run of the "Hard-negative mining" section of docs/benchmarks.md (SmolLM2-135M's hidden size, 576).

Usage: ``python benchmarks/search_backends.py [--queries 95734] [--corpus 95836] [--dim 576] [--k 52]
[--write]``; ``--write`` replaces the ``## Exact search backends`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from doc_sections import splice

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Exact search backends"
ABOUT = ("The search step of mining and of retrieval evaluation, alone: every query scored against every corpus "
         "vector in blocks, a running top-k kept (`embedtune.search.TopK`), on seeded random unit vectors (the "
         "cost depends on the sizes, not the content). The default sizes are those of the 100k-pair mining run "
         "above, whose search ran on faiss; this gives the time of the same step for a user without "
         "`embedtune[faiss]`.")


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_search(queries: np.ndarray, corpus: np.ndarray, k: int, backend: str,
                block_size: int) -> tuple[float, np.ndarray]:
    """Seconds of one full search, and the (Q, k) ids it found."""
    from embedtune.search import TopK

    start = time.perf_counter()
    topk = TopK(queries, k, backend)
    for first in range(0, len(corpus), block_size):
        topk.add(corpus[first : first + block_size], first)
    ids, _ = topk.result()
    return time.perf_counter() - start, ids


TIE_TOLERANCE = 1e-5
"""Largest float64 score gap between two rows that one backend may rank in either order (a few float32 ulps)."""


def rank_gaps(queries: np.ndarray, corpus: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Where two (Q, k) id arrays differ: how many places, and the largest gap between the float64 scores of
    the rows they put there (0 where they agree)."""
    qi, pos = np.nonzero(a != b)
    if not len(qi):
        return 0, 0.0
    q = queries[qi].astype(np.float64)
    sa = np.einsum("ij,ij->i", q, corpus[a[qi, pos]].astype(np.float64))
    sb = np.einsum("ij,ij->i", q, corpus[b[qi, pos]].astype(np.float64))
    return len(qi), float(np.abs(sa - sb).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=95_734)
    ap.add_argument("--corpus", type=int, default=95_836)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--k", type=int, default=52)
    ap.add_argument("--block-size", type=int, default=16_384)
    ap.add_argument("--backends", default="numpy,faiss", help="comma-separated; faiss needs embedtune[faiss]")
    ap.add_argument("--write", action="store_true", help="write the result into docs/benchmarks.md")
    args = ap.parse_args(argv)

    queries, corpus = unit_vectors(args.queries, args.dim, 0), unit_vectors(args.corpus, args.dim, 1)
    times: dict[str, float] = {}
    found: dict[str, np.ndarray] = {}
    for backend in args.backends.split(","):
        times[backend], found[backend] = time_search(queries, corpus, args.k, backend, args.block_size)
        print(f"{backend}: {times[backend]:.1f} s", flush=True)
    first = next(iter(found))
    # Backends may order near-ties differently (their float32 kernels round the same product differently),
    # so ids may differ only where the two rows' exact scores are within TIE_TOLERANCE of each other.
    gaps = {b: rank_gaps(queries, corpus, found[first], ids) for b, ids in found.items() if b != first}
    same = all(gap <= TIE_TOLERANCE for _, gap in gaps.values())
    lines = [f"{args.queries} queries x {args.corpus} corpus vectors of width {args.dim}, top {args.k}, corpus "
             f"blocks of {args.block_size}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
             f"load average {os.getloadavg()[0]:.1f}"]
    lines += [f"{b}: {t:.1f} s ({args.queries * args.corpus / t / 1e6:.0f} M scores/s)" for b, t in times.items()]
    if len(times) > 1:
        base = times[first]
        lines.append(", ".join(f"{b} {t / base:.2f}x" for b, t in times.items()) + f" the time of {first}; "
                     f"the same ranking from every backend, near-ties aside: {'yes' if same else 'NO'}")
        lines += [f"{b} against {first}: {n} of {found[first].size} ranked ids differ, each a near-tie (largest "
                  f"exact-score gap {gap:.1e}, tolerance {TIE_TOLERANCE:.0e})" if gap <= TIE_TOLERANCE else
                  f"{b} against {first}: {n} ranked ids differ, largest exact-score gap {gap:.1e}: NOT a tie"
                  for b, (n, gap) in gaps.items() if n]
    print("\n".join(lines))
    if args.write:
        body = (f"{SECTION}\n\n`python benchmarks/search_backends.py --queries {args.queries} --corpus {args.corpus} "
                f"--dim {args.dim} --k {args.k} --block-size {args.block_size} --backends {args.backends} "
                f"--write`\n\n{ABOUT}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
        splice(DOC, SECTION, body)
        print(f"updated {DOC} ({SECTION})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
