"""Hard-negative mining: turn (anchor, positive) pairs into (anchor, positive, negative) triplets with any encoder.

Every distinct anchor and every distinct positive is embedded once. The candidates of an anchor are all the
distinct positives of the input, ranked by cosine similarity to it (exact search in blocks,
:mod:`embedtune.search`). Before ranking, a candidate is excluded when it is a positive of that anchor (in any
row), or equal to the anchor or to one of its positives after :func:`~.decontaminate.normalize_sentence` (case,
punctuation and whitespace ignored). From the ranks ``range_min .. range_max - 1`` (0-based) of what remains, a
candidate is rejected as a likely positive when it scores within ``margin`` of the row's own positive
(``score > positive_score - margin``); the row's negative is the best remaining one (``sampling="top"``) or a
random one (``"random"``). A row with none left is dropped and counted.

Memory: the anchor and candidate vectors (``(anchors + candidates) x dim`` float32), the top hits of each anchor,
and one block of scores; never an anchors x candidates matrix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..search import TopK, l2_normalize
from .decontaminate import normalize_sentence
from .formats import ALIASES, MAX_LISTED, SUFFIXES
from .triplets import Example, LoadReport, read_examples, write_examples

HISTOGRAM_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 2)  # cosine similarity in steps of 0.05


@dataclass
class MiningReport:
    """What mining did; saved as JSON beside the triplet file."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    range: tuple[int, int] = (10, 50)
    margin: float = 0.05
    sampling: str = "top"
    rows_in: int = 0
    rows_written: int = 0
    rows_without_negative: int = 0
    rows_without_negative_lines: list[tuple[str, int]] = field(default_factory=list)
    input_negatives_replaced: int = 0
    anchors: int = 0
    candidates: int = 0
    excluded_own_positives: int = 0
    excluded_duplicates: int = 0
    rejected_as_likely_positive: int = 0
    rows_with_rejections: int = 0
    positive_score_median: float | None = None
    histogram: dict[str, list[float] | list[int]] = field(default_factory=dict)
    search: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_without_negative_lines"] = [{"file": f, "line": n} for f, n in self.rows_without_negative_lines]
        return d

    def summary(self) -> str:
        lo, hi = self.range
        lines = [
            f"mined {self.rows_written} triplets from {self.rows_in} rows ({self.anchors} distinct anchors, "
            f"{self.candidates} distinct candidates; ranks {lo}:{hi}, margin {self.margin}, {self.sampling}, "
            f"search {self.search})",
            f"  excluded before ranking: {self.excluded_own_positives} own positives, {self.excluded_duplicates} "
            "normalized duplicates of the anchor or its positives",
            f"  rejected as likely positives (within the margin of the positive): {self.rejected_as_likely_positive} "
            f"candidates, in {self.rows_with_rejections} rows",
            f"  rows without a negative (dropped): {self.rows_without_negative}",
        ]
        lines += [f"    {f}:{n}" for f, n in self.rows_without_negative_lines]
        if self.input_negatives_replaced:
            lines.append(f"  negatives of the input replaced: {self.input_negatives_replaced}")
        s = self.seconds
        lines.append(f"  time: {s.get('total', 0):.1f} s (embedding {s.get('embed', 0):.1f} s, search "
                     f"{s.get('search', 0):.1f} s, selection {s.get('select', 0):.1f} s)")
        return "\n".join(lines)


def parse_range(spec: str | Sequence[int]) -> tuple[int, int]:
    """``"10:50"`` -> (10, 50): ranks 10 .. 49 (0-based) of the eligible candidates."""
    try:
        lo, hi = (int(x) for x in spec.split(":")) if isinstance(spec, str) else (int(spec[0]), int(spec[1]))
    except (ValueError, TypeError, IndexError):
        raise ValueError(f"range {spec!r}: expected MIN:MAX, two whole numbers such as 10:50") from None
    if not 0 <= lo < hi:
        raise ValueError(f"range {spec!r}: expected 0 <= MIN < MAX")
    return lo, hi


@dataclass
class _Index:
    """Distinct texts and, per row, which anchor and candidate it has."""

    anchors: list[str]
    candidates: list[str]
    row_anchor: np.ndarray  # (N,)
    row_positive: np.ndarray  # (N,)
    excluded: list[set[int]]  # per anchor
    own_positives: int
    duplicates: int


def _index(examples: Sequence[Example]) -> _Index:
    anchor_ids: dict[str, int] = {}
    cand_ids: dict[str, int] = {}
    positives: list[set[int]] = []
    row_a = np.empty(len(examples), dtype=np.int64)
    row_p = np.empty(len(examples), dtype=np.int64)
    for i, ex in enumerate(examples):
        a = row_a[i] = anchor_ids.setdefault(ex.anchor, len(anchor_ids))
        if a == len(positives):
            positives.append(set())
        row_p[i] = cand_ids.setdefault(ex.positive, len(cand_ids))
        positives[a].add(int(row_p[i]))
    by_key: dict[str, list[int]] = {}
    for text, c in cand_ids.items():
        key = normalize_sentence(text)
        if key:  # punctuation-only text matches nothing
            by_key.setdefault(key, []).append(c)
    candidates = list(cand_ids)
    excluded: list[set[int]] = []
    own = dups = 0
    for anchor, pos in zip(anchor_ids, positives):
        keys = {normalize_sentence(anchor), *(normalize_sentence(candidates[p]) for p in pos)}
        same = {c for k in keys if k for c in by_key.get(k, ())}
        excluded.append(pos | same)
        own += len(pos)
        dups += len(same - pos)
    return _Index(list(anchor_ids), candidates, row_a, row_p, excluded, own, dups)


def _search(anchor_emb: np.ndarray, cand_emb: np.ndarray, need: np.ndarray, backend: str, block_size: int,
            progress: bool) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Top ``need[a]`` candidates of each anchor, in two passes: most anchors need ``range_max`` plus a few
    exclusions; the rare anchor with many (hundreds of positives) gets its own wider search."""
    from tqdm.auto import tqdm

    k0 = int(min(len(cand_emb), np.percentile(need, 99) if len(need) else 1))
    ids: list[np.ndarray] = [np.empty(0, np.int64)] * len(anchor_emb)
    scores: list[np.ndarray] = [np.empty(0, np.float32)] * len(anchor_emb)
    backend_used = ""
    for rows, k in ((np.flatnonzero(need <= k0), k0), (np.flatnonzero(need > k0), int(need.max(initial=0)))):
        if not len(rows):
            continue
        topk = TopK(anchor_emb[rows], max(1, k), backend)
        backend_used = topk.backend
        for start in tqdm(range(0, len(cand_emb), block_size), desc="searching", unit="block", disable=not progress,
                          leave=False):
            topk.add(cand_emb[start : start + block_size], start)
        got_ids, got_scores = topk.result()
        for j, a in enumerate(rows):
            ids[a], scores[a] = got_ids[j], got_scores[j]
    return ids, scores, backend_used


def _select(idx: _Index, ids: list[np.ndarray], scores: list[np.ndarray], positive_scores: np.ndarray,
            lo: int, hi: int, margin: float, sampling: str, seed: int, examples: Sequence[Example],
            report: MiningReport) -> tuple[list[Example], list[float], list[float]]:
    """One negative per row from its anchor's window of eligible ranks; fills the report's counts."""
    rng = np.random.default_rng(seed)
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    for a, excl in enumerate(idx.excluded):
        keep = np.array([int(c) not in excl for c in ids[a].tolist()], dtype=bool)
        windows.append((ids[a][keep][lo:hi], scores[a][keep][lo:hi]))
    out: list[Example] = []
    chosen, rejected = [], []
    for i, ex in enumerate(examples):
        cand, s = windows[idx.row_anchor[i]]
        ok = s <= positive_scores[i] - margin  # (W,): not a likely positive
        if (~ok).any():
            report.rows_with_rejections += 1
            report.rejected_as_likely_positive += int((~ok).sum())
            rejected.extend(s[~ok].tolist())
        if not ok.any():
            report.rows_without_negative += 1
            if len(report.rows_without_negative_lines) < MAX_LISTED:
                report.rows_without_negative_lines.append((ex.source, ex.line))
            continue
        pick = int(np.flatnonzero(ok)[0] if sampling == "top" else rng.choice(np.flatnonzero(ok)))
        chosen.append(float(s[pick]))
        out.append(Example(ex.anchor, ex.positive, idx.candidates[cand[pick]], ex.source, ex.line))
    return out, chosen, rejected


def mine_hard_negatives(examples: Sequence[Example], encoder: Any, *, ranks: tuple[int, int] | str = (10, 50),
                        margin: float = 0.05, sampling: str = "top", seed: int = 7, batch_size: int = 64,
                        backend: str = "auto", block_size: int = 16384, progress: bool = False
                        ) -> tuple[list[Example], MiningReport]:
    """Mine one hard negative per (anchor, positive) row (see the module docstring for the rules).

    Args:
        examples: pairs (a negative already present is replaced).
        encoder: an :class:`~embedtune.Embedder` or a peer: ``encode(texts, batch_size=, show_progress=)``.
        ranks: (min, max) eligible ranks to draw from, 0-based, max exclusive (or ``"MIN:MAX"``).
        margin: reject candidates scoring above ``positive score - margin``.
        sampling: ``top`` (the best remaining candidate) or ``random`` (seeded).
        backend: search backend (:func:`embedtune.search.resolve_backend`).
        block_size: candidates scored at a time.

    Returns:
        the triplets (rows without a negative dropped; input order) and the report.
    """
    lo, hi = parse_range(ranks)
    if sampling not in ("top", "random"):
        raise ValueError(f"sampling must be 'top' or 'random', got {sampling!r}")
    if not np.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    start = time.perf_counter()
    report = MiningReport(range=(lo, hi), margin=margin, sampling=sampling, rows_in=len(examples))
    report.input_negatives_replaced = sum(e.negative is not None for e in examples)
    idx = _index(examples)
    report.anchors, report.candidates = len(idx.anchors), len(idx.candidates)
    report.excluded_own_positives, report.excluded_duplicates = idx.own_positives, idx.duplicates

    def embed(texts: list[str]) -> np.ndarray:
        return l2_normalize(encoder.encode(texts, batch_size=batch_size, show_progress=progress))

    anchor_emb, cand_emb = embed(idx.anchors), embed(idx.candidates)  # (A, D), (P, D)
    t_embed = time.perf_counter() - start
    # Enough hits that ranks lo..hi-1 survive the exclusions (or every candidate, when there are fewer).
    need = np.minimum([hi + len(e) for e in idx.excluded], len(idx.candidates)).astype(np.int64)
    ids, scores, report.search = _search(anchor_emb, cand_emb, need, backend, block_size, progress)
    t_search = time.perf_counter() - start - t_embed
    positive_scores = (anchor_emb[idx.row_anchor] * cand_emb[idx.row_positive]).sum(axis=1)  # (N,)
    report.positive_score_median = round(float(np.median(positive_scores)), 4) if len(positive_scores) else None
    triplets, chosen, rejected = _select(idx, ids, scores, positive_scores, lo, hi, margin, sampling, seed,
                                         examples, report)
    report.rows_written = len(triplets)

    def hist(values: Sequence[float]) -> list[int]:
        return np.histogram(np.clip(values, -1, 1), bins=HISTOGRAM_EDGES)[0].tolist()

    report.histogram = {"edges": HISTOGRAM_EDGES.tolist(), "positive": hist(positive_scores.tolist()),
                        "negative": hist(chosen), "rejected_as_likely_positive": hist(rejected)}
    total = time.perf_counter() - start
    report.seconds = {k: round(v, 3) for k, v in {"embed": t_embed, "search": t_search,
                                                  "select": total - t_embed - t_search, "total": total}.items()}
    return triplets, report


def _output_names(columns: dict[str, str]) -> dict[str, str]:
    """The input's anchor/positive column names, and the negative name of the same family (query -> neg)."""
    anchor = columns.get("anchor", "sent0")
    family = next((i for i, a in enumerate(ALIASES["anchor"]) if a == anchor.strip().lower()), 0)
    return {"anchor": anchor, "positive": columns.get("positive", "sent1"), "negative": ALIASES["negative"][family]}


def check_output_path(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """``out`` must be a .csv/.tsv/.jsonl[.gz] file that is none of the inputs."""
    out = Path(out)
    if not out.name.lower().removesuffix(".gz").endswith(tuple(SUFFIXES)):
        raise ValueError(f"{out}: output must end in .csv, .tsv or .jsonl (optionally .gz)")
    for p in inputs:
        if Path(p).exists() and Path(p).resolve() == out.resolve():
            raise ValueError(f"--out {out} is one of the inputs (an input is never overwritten)")
    return out


def mine_file(inputs: Sequence[str], out: str | Path, make_encoder: Callable[[], Any], *,
              report_path: str | Path | None = None, columns: dict[str, str] | None = None,
              on_bad_row: str = "error", max_dropped: float = 0.5, **options: Any
              ) -> tuple[Path, Path, MiningReport]:
    """Validate the inputs, then build the encoder, mine, and write the triplets and the JSON report.

    Inputs are read (and every row validated, ``FILE:LINE: field ...`` errors) before ``make_encoder`` is
    called, so a bad file costs no model load. Both outputs are written atomically: nothing is left on error.

    Args:
        inputs: pair (or triplet) files, as ``embedtune train`` reads them; their rows are mined together.
        out: triplet file (.csv/.tsv/.jsonl, optionally .gz).
        make_encoder: builds the model (called once, after validation).
        report_path: JSON report (default: ``OUT.report.json``).
        max_dropped: fail (writing nothing) when more than this fraction of the rows got no negative: the
            model cannot tell candidates from positives, and a file of the few rows left is not what was asked.
        options: :func:`mine_hard_negatives` arguments (ranks, margin, sampling, seed, batch_size, backend).

    Returns:
        the triplet file, the report file and the report.
    """
    from ..io import write_text_atomic

    out = check_output_path(out, inputs)
    parse_range(options.get("ranks", (10, 50)))
    if not 0.0 <= max_dropped <= 1.0:
        raise ValueError(f"--max-dropped {max_dropped:g}: expected a fraction of the rows, 0 to 1")
    examples: list[Example] = []
    loads: list[LoadReport] = []
    for path in inputs:
        rows, load = read_examples(path, columns, on_bad_row, progress=options.get("progress", False))
        examples.extend(rows)
        loads.append(load)
    encoder = make_encoder()
    triplets, report = mine_hard_negatives(examples, encoder, **options)
    report.inputs = [load.to_dict() for load in loads]
    source = getattr(encoder, "source", None)
    report.model = getattr(source, "spec", None)
    if not triplets or report.rows_without_negative > max_dropped * report.rows_in:
        raise ValueError(
            f"{report.rows_without_negative} of {report.rows_in} rows got no negative in ranks "
            f"{report.range[0]}:{report.range[1]} (more than --max-dropped {max_dropped:g}): "
            f"{report.rejected_as_likely_positive} candidates scored within the margin {report.margin} of their "
            f"positive, whose median score is {report.positive_score_median}. A model that scores every pair near "
            "1 (an untrained LM's EOS states all point one way) cannot tell negatives from positives: mine with a "
            "trained run (--model runs/NAME) or a sentence-transformers model (--model all-MiniLM-L6-v2); or widen "
            "--range, lower --margin, or raise --max-dropped to keep the rows that did get one")
    write_examples(triplets, out, names=_output_names(loads[0].columns), with_negatives=True)
    record = Path(report_path) if report_path else out.with_name(out.name + ".report.json")
    try:
        write_text_atomic(record, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)  # no triplet file without its report
        raise
    return out, record, report
