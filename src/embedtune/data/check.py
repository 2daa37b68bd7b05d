"""``embedtune data check``: validate a training input in one streaming pass and describe it.

One pass gives the row and duplicate counts (:mod:`.triplets`), token lengths per field measured with the
shared :class:`~embedtune.data.collate.TextTokenizer` (prompt + text + EOS, so the numbers are what training
sees), and the overlap with the STS benchmarks (:mod:`.decontaminate`). Memory stays flat: rows are not kept,
only one small batch of texts and one int per measured text.
"""

from __future__ import annotations

import statistics
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decontaminate import DecontaminationReport, OverlapCounter, benchmark_pairs_touched
from .examples import ROLES, LoadReport
from .triplets import iter_examples


def length_stats(lengths: array | list[int], cap: int | None = None) -> dict[str, float | int]:
    """min, mean, p50, p95, p99, max (and how many exceed ``cap``) of token lengths."""
    if not len(lengths):
        return {"count": 0}
    ordered = sorted(lengths)
    n = len(ordered)

    def pct(q: float) -> int:
        return ordered[min(n - 1, int(q * n))]

    out: dict[str, float | int] = {"count": n, "min": ordered[0], "mean": round(statistics.fmean(ordered), 2),
                                   "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": ordered[-1]}
    if cap is not None:
        out["over_cap"] = sum(1 for x in ordered if x > cap)
    return out


@dataclass
class CheckReport:
    """Everything ``data check`` found for one input."""

    load: LoadReport
    token_lengths: dict[str, dict[str, Any]] | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    overlap: DecontaminationReport | None = None
    pairs_touched: dict[str, tuple[int, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "load": self.load.to_dict(),
            "tokenizer": self.tokenizer, "max_length": self.max_length, "token_lengths": self.token_lengths,
            "overlap": self.overlap.to_dict() if self.overlap else None,
            "pairs_touched": {k: {"pairs": a, "of": b} for k, (a, b) in (self.pairs_touched or {}).items()},
        }

    def format(self) -> str:
        """A human-readable report."""
        out = [self.load.summary()]
        if self.token_lengths:
            out.append(f"  token lengths ({self.tokenizer}; prompt + text + EOS; cap {self.max_length}):")
            out.append(f"    {'field':<10} {'min':>5} {'mean':>7} {'p50':>5} {'p95':>5} {'p99':>5} {'max':>5} "
                       f"{'over cap':>9}")
            for role, s in self.token_lengths.items():
                name = self.load.columns.get(role, role)
                out.append(f"    {name:<10} {s['min']:>5} {s['mean']:>7.1f} {s['p50']:>5} {s['p95']:>5} "
                           f"{s['p99']:>5} {s['max']:>5} {s.get('over_cap', 0):>9}")
        if self.overlap is not None:
            rep = self.overlap
            share = 100.0 * rep.rows_removed / rep.rows_in if rep.rows_in else 0.0
            out.append(f"  overlap with the STS benchmarks (sentences compared lower-cased, punctuation and "
                       f"whitespace ignored): {rep.rows_removed} rows ({share:.2f}%), "
                       f"{rep.sentences_matched} distinct sentences")
            out.append(f"    {'benchmark':<14} {'rows':>6} {'test pairs touched':>22}")
            for b, n in rep.per_benchmark.items():
                touched, total = (self.pairs_touched or {}).get(b, (None, None))
                pairs = f"{touched}/{total}" if touched is not None else "-"
                out.append(f"    {b:<14} {n:>6} {pairs:>22}")
            if rep.rows_removed:
                out.append("    remove them with: embedtune data decontaminate FILE --out CLEAN "
                           "(training removes them by default)")
        return "\n".join(out)


def check_file(path_or_name: str | Path, columns: dict[str, str] | None = None, on_bad_row: str = "error", *,
               text_tokenizer=None, tokenizer_name: str | None = None, index: dict[str, set[str]] | None = None,
               data_dir: str | Path | None = None, batch_size: int = 1024, progress: bool = False) -> CheckReport:
    """Validate one input and measure it, streaming.

    Args:
        path_or_name: file or hub data set (see :func:`embedtune.data.triplets.iter_examples`).
        columns: explicit role -> column mapping.
        on_bad_row: ``error`` or ``skip``.
        text_tokenizer: a :class:`~embedtune.data.collate.TextTokenizer` for token lengths, or None to skip them.
        tokenizer_name: shown in the report.
        index: from :func:`~embedtune.data.decontaminate.sts_sentence_index`, or None to skip the overlap.
        data_dir: data folder, for the benchmark-side counts of the overlap.
        batch_size: texts tokenized at once.
        progress: tqdm bar over the file.

    Raises:
        DataError: as :func:`~embedtune.data.triplets.iter_examples`.
    """
    load = LoadReport(str(path_or_name))
    counter = OverlapCounter(index) if index is not None else None
    lengths: dict[str, array] = {r: array("I") for r in ROLES}
    pending: dict[str, list[str]] = {r: [] for r in ROLES}
    huge = 1 << 30  # measure the full length; truncation is reported as "over cap" instead

    def flush(role: str) -> None:
        if pending[role]:
            lengths[role].extend(len(ids) for ids in text_tokenizer.ids(pending[role], max_length=huge))
            pending[role].clear()

    for ex in iter_examples(path_or_name, columns, on_bad_row, report=load, progress=progress):
        if counter is not None:
            counter.match(ex)
        if text_tokenizer is not None:
            for role in ROLES:
                text = getattr(ex, role)
                if text is not None:
                    pending[role].append(text)
                    if len(pending[role]) >= batch_size:
                        flush(role)
    report = CheckReport(load=load)
    if text_tokenizer is not None:
        for role in ROLES:
            flush(role)
        report.token_lengths = {r: length_stats(lengths[r], text_tokenizer.max_length) for r in ROLES
                                if len(lengths[r])}
        report.tokenizer, report.max_length = tokenizer_name, text_tokenizer.max_length
    if counter is not None:
        report.overlap = counter.report
        tasks = [b for b in counter.report.per_benchmark]
        report.pairs_touched = benchmark_pairs_touched(counter.report.matched_keys, data_dir, tasks)
    return report
