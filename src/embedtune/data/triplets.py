"""Training examples (triplets or pairs) from .csv/.tsv/.jsonl files, optionally gzipped, or a hub data set.

Every row is validated while it streams past: an error names the file, the line where the bad row starts and
the field (``FILE:LINE: field 'X': what was wrong; expected ...``). With ``on_bad_row="skip"`` bad rows are
dropped instead, and counted with their line numbers in a :class:`LoadReport`; nothing is dropped silently.

Columns are found by name: SimCSE's ``sent0,sent1,hard_neg``, or ``anchor,positive,negative``, or
``query,pos,neg`` (case-insensitive), or an explicit mapping ``{"anchor": ..., "positive": ..., "negative": ...}``.
A source without a negative column gives pairs (``negative=None``); training then uses in-batch negatives only.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from .examples import ROLES, Example, LoadReport
from .formats import (
    ALIASES,
    MAX_LISTED,
    SUFFIXES,
    DataError,
    _BadRow,
    _csv_rows,
    _hub_rows,
    _jsonl_rows,
    _Lines,
    _looks_like_file,
    resolve_columns,
)

log = logging.getLogger(__name__)


def _open_rows(name: str, columns: dict[str, str] | None, report: LoadReport, progress: bool
               ) -> tuple[Iterator[tuple[int, dict[str, str] | _BadRow]], _Lines | None]:
    """The raw rows of a file (by its suffix) or hub data set, as (start line, values or :class:`_BadRow`),
    and the open file's line reader (None for the hub; the caller closes it). Fills ``report.format``."""
    path = Path(name).expanduser()
    if path.is_file():
        lower = path.name.lower().removesuffix(".gz")
        fmt = next((f for s, f in SUFFIXES.items() if lower.endswith(s)), None)
        if fmt is None:
            raise DataError(name, "unsupported file type", expected="a .csv, .tsv or .jsonl file, optionally .gz")
        try:
            lines = _Lines(path, progress)
        except OSError as exc:
            raise DataError(name, f"cannot read the file ({exc.strerror or exc})") from None
        report.format, report.compressed = fmt, lines.compressed
        rows = _jsonl_rows(lines, name, columns, report) if fmt == "jsonl" else _csv_rows(
            lines, name, fmt, columns, report)
        return rows, lines
    if path.exists():
        raise DataError(name, "is not a regular file", expected="a .csv, .tsv or .jsonl file")
    if _looks_like_file(name):
        raise DataError(name, f"file not found (looked at {path.resolve()})",
                        expected="an existing file, or a hub data set name")
    report.format = "hub"
    return _hub_rows(name, columns, report), None


def _with_texts(start: int, values: dict[str, str] | _BadRow, report: LoadReport) -> dict[str, str] | _BadRow:
    """``values``, or a :class:`_BadRow` naming the first field that is empty or whitespace-only."""
    if isinstance(values, _BadRow):
        return values
    for role, text in values.items():
        if not text.strip():
            return _BadRow(start, "empty" if not text else "whitespace-only", report.columns[role], "non-empty text")
    return values


def iter_examples(path_or_name: str | Path, columns: dict[str, str] | None = None, on_bad_row: str = "error", *,
                  report: LoadReport | None = None, drop_duplicates: bool = False, progress: bool = False
                  ) -> Iterator[Example]:
    """Stream validated examples from a file or hub data set, holding only one row at a time.

    Args:
        path_or_name: a .csv/.tsv/.jsonl file (optionally .gz), or a hub data set ``NAME[:CONFIG][@SPLIT]``.
        columns: explicit role -> column mapping (anchor, positive, optional negative); default: by name.
        on_bad_row: ``error`` (raise at the first bad row) or ``skip`` (count it in the report).
        report: a :class:`LoadReport` filled in as rows stream (complete once the iterator is exhausted).
        drop_duplicates: drop exact duplicate rows (they are counted either way).
        progress: show a tqdm bar over the file's bytes.

    Raises:
        DataError: a bad row (``error`` mode), or a file-level problem in either mode: unreadable or empty
            file, missing columns, truncated or corrupt .gz, no rows at all.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    name = str(path_or_name)
    report = report if report is not None else LoadReport(name)
    report.file = name
    rows, lines = _open_rows(name, columns, report, progress)
    seen: set[int] = set()
    data_rows = 0
    try:
        for start, values in rows:
            data_rows += 1
            values = _with_texts(start, values, report)
            if isinstance(values, _BadRow):
                if on_bad_row == "error":
                    raise DataError(name, values.problem, line=values.line, field=values.field,
                                    expected=values.expected)
                report.skipped += 1
                if len(report.skipped_lines) < MAX_LISTED:
                    report.skipped_lines.append((values.line, DataError(name, values.problem, field=values.field,
                                                                        expected=values.expected).reason))
                continue
            ex = Example(values["anchor"], values["positive"], values.get("negative"), name, start)
            # A 64-bit hash per row, not the row: a collision (p ~ n^2 / 2^64) would only miscount one duplicate.
            key = hash((ex.anchor, ex.positive, ex.negative))
            if key in seen:
                report.duplicates += 1
                if drop_duplicates:
                    report.duplicates_removed += 1
                    continue
            else:
                seen.add(key)
            report.rows += 1
            yield ex
    except EOFError:
        raise DataError(name, f"truncated .gz: the compressed data ends early, after line {lines.line if lines else 0}",
                        expected="a complete gzip file (re-download or re-compress it)") from None
    except (OSError, zlib.error) as exc:
        raise DataError(name, f"corrupt .gz after line {lines.line if lines else 0} ({exc})",
                        expected="a valid gzip file") from None
    finally:
        if lines is not None:
            lines.close()
    if lines is not None:
        report.lines = lines.line
    report.has_negatives = "negative" in report.columns
    if data_rows == 0:
        raise DataError(name, "no rows after the header" if report.format in ("csv", "tsv") else "no rows",
                        expected="at least one example")
    if report.rows == 0 and report.skipped:
        raise DataError(name, f"all {report.skipped} rows are bad (first: line {report.skipped_lines[0][0]}: "
                        f"{report.skipped_lines[0][1]})", expected="at least one valid example")


def validate(path_or_name: str | Path, columns: dict[str, str] | None = None, on_bad_row: str = "error",
             progress: bool = False) -> LoadReport:
    """Validate a whole input without keeping its rows (memory: one row plus a hash per distinct row)."""
    report = LoadReport(str(path_or_name))
    for _ in iter_examples(path_or_name, columns, on_bad_row, report=report, progress=progress):
        pass
    return report


def read_examples(path_or_name: str | Path, columns: dict[str, str] | None = None, on_bad_row: str = "error", *,
                  drop_duplicates: bool = False, progress: bool = False) -> tuple[list[Example], LoadReport]:
    """Read and validate all examples of one input (see :func:`iter_examples` for the arguments)."""
    report = LoadReport(str(path_or_name))
    examples = list(iter_examples(path_or_name, columns, on_bad_row, report=report,
                                  drop_duplicates=drop_duplicates, progress=progress))
    return examples, report


def expand_data_path(path: str, data_dir: str | Path | None = None) -> str:
    """Replace ``{data}`` by the data folder (``--data-dir``, ``$EMBEDTUNE_DATA`` or ``../shared/data``)."""
    if "{data}" not in path:
        return path
    from .sts import find_data_dir

    return path.replace("{data}", str(find_data_dir(data_dir)))


def load_training_data(paths: list[str] | str, columns: dict[str, str] | None = None, on_bad_row: str = "error",
                       data_dir: str | Path | None = None, *, drop_duplicates: bool = False, progress: bool = False
                       ) -> tuple[list[Example], list[LoadReport]]:
    """Read several inputs (files or hub data sets; ``{data}`` is the data folder) into one list.

    Returns:
        all examples in input order, and one :class:`LoadReport` per input.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError("no training files given")
    examples: list[Example] = []
    reports: list[LoadReport] = []
    for p in paths:
        rows, report = read_examples(expand_data_path(str(p), data_dir), columns, on_bad_row,
                                     drop_duplicates=drop_duplicates, progress=progress)
        examples.extend(rows)
        reports.append(report)
        log.info("%s: %d rows (%d skipped, %d exact duplicates)", report.file, report.rows, report.skipped,
                 report.duplicates)
    if len({r.has_negatives for r in reports}) > 1:
        log.info("triplets and pairs mixed (training batches hold one kind each): %s",
                 ", ".join(f"{r.file}={'triplets' if r.has_negatives else 'pairs'}" for r in reports))
    return examples, reports


def parse_columns(spec: str | dict[str, str] | None) -> dict[str, str] | None:
    """``anchor=A,positive=P[,negative=N]`` or positional ``A,P[,N]`` -> a role mapping (None stays None)."""
    if spec is None or isinstance(spec, dict):
        return spec
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if all("=" in p for p in parts):
        mapping = dict(tuple(x.strip() for x in p.split("=", 1)) for p in parts)
    elif not any("=" in p for p in parts) and 2 <= len(parts) <= 3:
        mapping = dict(zip(ROLES, parts))
    else:
        raise ValueError(f"--columns {spec!r}: expected anchor=COL,positive=COL[,negative=COL] or COL,COL[,COL]")
    unknown = set(mapping) - set(ROLES)
    if unknown or not {"anchor", "positive"} <= set(mapping):
        raise ValueError(f"--columns {spec!r}: roles are anchor, positive (required) and negative (optional)")
    return mapping


def write_examples(examples: Iterable[Example], path: str | Path, names: dict[str, str] | None = None,
                   with_negatives: bool | None = None) -> int:
    """Write examples atomically as .csv/.tsv/.jsonl (``.gz`` compresses); returns the number of rows.

    ``names`` maps roles to output column names (default: SimCSE's sent0, sent1, hard_neg). Pairs are written
    without a negative column; ``with_negatives`` forces the choice (else: whether any example has one).
    """
    from ..io import atomic_path

    path = Path(path)
    lower = path.name.lower().removesuffix(".gz")
    fmt = next((f for s, f in SUFFIXES.items() if lower.endswith(s)), None)
    if fmt is None:
        raise ValueError(f"{path}: output must end in .csv, .tsv or .jsonl (optionally .gz)")
    names = {**dict(zip(ROLES, ALIASES["anchor"][:1] + ALIASES["positive"][:1] + ALIASES["negative"][:1])),
             **(names or {})}
    examples = list(examples)
    with_neg = any(e.negative is not None for e in examples) if with_negatives is None else with_negatives
    if with_neg and any(e.negative is None for e in examples):
        raise ValueError("cannot write a mix of triplets and pairs into one file")
    roles = list(ROLES if with_neg else ROLES[:2])
    with atomic_path(path) as tmp:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                for e in examples:
                    f.write(json.dumps({names[r]: getattr(e, r) for r in roles}, ensure_ascii=False) + "\n")
            else:
                w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
                w.writerow([names[r] for r in roles])
                w.writerows([getattr(e, r) for r in roles] for e in examples)
    return len(examples)


__all__ = [
    "ALIASES", "DataError", "Example", "LoadReport", "expand_data_path", "iter_examples", "load_training_data",
    "parse_columns", "read_examples", "resolve_columns", "validate", "write_examples",
]
