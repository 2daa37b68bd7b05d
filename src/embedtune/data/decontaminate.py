"""Decontamination: drop training rows that share a sentence with an evaluation benchmark.

A training set that contains test sentences inflates every score measured after it (SNLI, for one, overlaps
STS17 and STSBenchmark). Sentences are compared after :func:`normalize_sentence` (case, punctuation and
whitespace ignored), against both text variants of STS12-16 (raw SemEval and MTEB's tokenized lower-case),
so "don't" in a training file matches "do n't" in a tokenized benchmark file as well as "Don't" in the raw one.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .examples import ROLES, Example

_NON_WORD = re.compile(r"[\W_]+")


def normalize_sentence(s: str) -> str:
    """Comparison key of a sentence: NFKC, case-folded, every run of punctuation/whitespace one space, stripped.

    ``"A man, playing  guitar!"`` and ``"a man playing guitar"`` give the same key; a sentence of only
    punctuation gives ``""``, which never matches.
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def _variants(task) -> list[str]:
    return ["mteb_like", "raw"] if task.has_mteb_like else ["mteb_like"]


def sts_sentence_index(data_dir: str | Path | None = None, tasks: str | list[str] | None = "all"
                       ) -> dict[str, set[str]]:
    """Map each normalized benchmark sentence to the benchmarks that contain it.

    Both text variants of STS12-16 are indexed (``raw`` and ``mteb_like``), so a match does not depend on
    which one an evaluation reads.

    Args:
        data_dir: data folder (see :func:`embedtune.data.sts.find_data_dir`).
        tasks: ``all`` (the nine) or benchmark names.
    """
    from .sts import ALL_TASKS, load_sts, resolve_task_names

    index: dict[str, set[str]] = {}
    for name in resolve_task_names(tasks):
        task = ALL_TASKS[name]
        for variant in _variants(task):
            data = load_sts(name, data_dir, variant=variant)
            for s in (*data.sentences1, *data.sentences2):
                key = normalize_sentence(s)
                if key:
                    index.setdefault(key, set()).add(name)
    return index


@dataclass
class DecontaminationReport:
    """What decontamination found.

    Attributes:
        rows_in: rows checked.
        rows_removed: rows sharing at least one sentence with a benchmark.
        per_benchmark: benchmark -> rows touching it (a row can touch several; every indexed benchmark listed).
        removed: (source, line) of each removed row, in input order.
        matches: per removed row: source, line, the fields that matched and the benchmarks.
        sentences_matched: distinct normalized sentences that matched.
    """

    rows_in: int = 0
    rows_removed: int = 0
    per_benchmark: dict[str, int] = field(default_factory=dict)
    removed: list[tuple[str, int]] = field(default_factory=list)
    matches: list[dict[str, Any]] = field(default_factory=list)
    sentences_matched: int = 0
    matched_keys: set[str] = field(default_factory=set, repr=False)

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rows_removed

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in, "rows_removed": self.rows_removed, "rows_out": self.rows_out,
            "per_benchmark": dict(self.per_benchmark), "sentences_matched": self.sentences_matched,
            "removed": [{"source": s, "line": n} for s, n in self.removed], "matches": self.matches,
        }

    def summary(self) -> str:
        share = 100.0 * self.rows_removed / self.rows_in if self.rows_in else 0.0
        lines = [f"{self.rows_removed} of {self.rows_in} rows ({share:.2f}%) share a sentence with a benchmark "
                 f"({self.sentences_matched} distinct sentences)"]
        width = max((len(b) for b in self.per_benchmark), default=0)
        lines += [f"  {b:<{width}}  {n:>6} rows" for b, n in self.per_benchmark.items()]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON atomically (a training run keeps it in its output folder)."""
        from ..io import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")


class OverlapCounter:
    """Streaming matcher: feed examples one at a time, read a :class:`DecontaminationReport` at the end."""

    def __init__(self, index: dict[str, set[str]], benchmarks: Iterable[str] | None = None) -> None:
        from .sts import ALL_TASKS

        self.index = index
        names = set(benchmarks) if benchmarks is not None else set().union(*index.values()) if index else set()
        order = [n for n in ALL_TASKS if n in names] + sorted(names - set(ALL_TASKS))
        self.report = DecontaminationReport(per_benchmark=dict.fromkeys(order, 0))

    def match(self, example: Example) -> bool:
        """Count one example; True when it shares a sentence with a benchmark (it should be removed)."""
        rep = self.report
        rep.rows_in += 1
        hits: dict[str, set[str]] = {}
        for role in ROLES:
            text = getattr(example, role)
            if text is None:
                continue
            key = normalize_sentence(text)
            found = self.index.get(key) if key else None
            if found:
                hits[role] = found
                rep.matched_keys.add(key)
        if not hits:
            return False
        benchmarks = set().union(*hits.values())
        for b in benchmarks:
            rep.per_benchmark[b] = rep.per_benchmark.get(b, 0) + 1
        rep.rows_removed += 1
        rep.removed.append((example.source, example.line))
        rep.matches.append({"source": example.source, "line": example.line, "fields": sorted(hits),
                            "benchmarks": [b for b in rep.per_benchmark if b in benchmarks]})
        rep.sentences_matched = len(rep.matched_keys)
        return True


def decontaminate(examples: list[Example], index: dict[str, set[str]]
                  ) -> tuple[list[Example], DecontaminationReport]:
    """Remove every example whose anchor, positive or negative (normalized) is a benchmark sentence.

    Args:
        examples: training examples.
        index: from :func:`sts_sentence_index`.

    Returns:
        the kept examples (order preserved) and the report.
    """
    counter = OverlapCounter(index)
    kept = [e for e in examples if not counter.match(e)]
    return kept, counter.report


def benchmark_pairs_touched(matched_keys: set[str], data_dir: str | Path | None = None,
                            tasks: str | list[str] | None = "all") -> dict[str, tuple[int, int]]:
    """benchmark -> (pairs with a sentence in ``matched_keys`` in either text variant, total pairs).

    The other side of the overlap: how much of each test set a training file has seen.
    """
    from .sts import ALL_TASKS, load_sts, resolve_task_names

    out: dict[str, tuple[int, int]] = {}
    for name in resolve_task_names(tasks):
        task = ALL_TASKS[name]
        touched: set[int] = set()
        total = 0
        for variant in _variants(task):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a size mismatch was already reported when the index was built
                data = load_sts(name, data_dir, variant=variant)
            total = len(data)
            for i, (a, b) in enumerate(zip(data.sentences1, data.sentences2)):
                if normalize_sentence(a) in matched_keys or normalize_sentence(b) in matched_keys:
                    touched.add(i)
        out[name] = (len(touched), total)
    return out
