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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROLES = ("anchor", "positive", "negative")
ALIASES: dict[str, tuple[str, ...]] = {
    "anchor": ("sent0", "anchor", "query"),
    "positive": ("sent1", "positive", "pos"),
    "negative": ("hard_neg", "negative", "neg"),
}
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
MAX_LISTED = 10
"""How many skipped lines a report lists (all of them are counted)."""

# Markers for bytes that are not text. Lone surrogates never come out of a valid UTF-8 decode, so a field
# holding one is exactly a field that held a bad byte: surrogateescape maps byte 0x80-0xFF to U+DC80-U+DCFF,
# and a NUL byte becomes U+DC00 (NUL itself would break csv on some Python versions).
_NUL_MARK = "\udc00"
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A training file (or hub data set) is unusable: ``FILE:LINE: field 'X': problem; expected ...``.

    Attributes:
        file: the file or data-set name.
        line: 1-based line where the bad row starts (header = 1), or None for file-level errors.
        field: the column or key at fault, or None.
        problem: what was wrong.
        expected: what was expected instead, or None.
    """

    def __init__(self, file: str, problem: str, *, line: int | None = None, field: str | None = None,
                 expected: str | None = None) -> None:
        self.file, self.line, self.field, self.problem, self.expected = file, line, field, problem, expected
        super().__init__(f"{file}:{line}: {self.reason}" if line is not None else f"{file}: {self.reason}")

    @property
    def reason(self) -> str:
        """The message without the file and line prefix."""
        text = (f"field {self.field!r}: " if self.field else "") + self.problem
        return f"{text}; expected {self.expected}" if self.expected else text


class _BadRow(Exception):
    """A row-level problem: an error in ``error`` mode, a counted skip in ``skip`` mode."""

    def __init__(self, line: int, problem: str, field: str | None = None, expected: str | None = None,
                 end: int | None = None) -> None:
        super().__init__(problem)
        self.line, self.problem, self.field, self.expected, self.end = line, problem, field, expected, end


@dataclass(frozen=True, slots=True)
class Example:
    """One training row. ``negative`` is None for pair sources; ``line`` is where the row starts (1-based)."""

    anchor: str
    positive: str
    negative: str | None
    source: str
    line: int


@dataclass
class LoadReport:
    """What reading one input found.

    Attributes:
        file: the path or data-set name as given.
        format: csv, tsv, jsonl or hub (``.gz`` noted in ``compressed``).
        columns: role -> column name used (anchor, positive, and negative when present).
        has_negatives: whether the input has a hard-negative column.
        rows: examples kept.
        skipped: bad rows skipped (``on_bad_row="skip"``).
        skipped_lines: the first ``MAX_LISTED`` skipped rows as (line, reason).
        duplicates: rows identical (all used fields) to an earlier row of the same input.
        duplicates_removed: of those, how many were dropped (``drop_duplicates=True``).
        blank_lines: empty lines (not rows; counted so every line is accounted for).
        multiline_rows: rows whose quoted field spans several lines.
        lines: lines (or hub rows) read.
        compressed: whether the file was gzipped.
    """

    file: str
    format: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    has_negatives: bool = False
    rows: int = 0
    skipped: int = 0
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    duplicates_removed: int = 0
    blank_lines: int = 0
    multiline_rows: int = 0
    lines: int = 0
    compressed: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped_lines"] = [{"line": n, "reason": r} for n, r in self.skipped_lines]
        return d

    def summary(self) -> str:
        kind = "triplets" if self.has_negatives else "pairs (no negative column: in-batch negatives only)"
        cols = ", ".join(f"{r}={c}" for r, c in self.columns.items())
        fmt = self.format + (" (gzip)" if self.compressed else "")
        lines = [
            f"{self.file}: {fmt}, {kind}; columns {cols}",
            f"  rows: {self.rows} kept, {self.skipped} skipped, {self.blank_lines} blank lines, "
            f"{self.lines} lines read",
            f"  exact duplicates: {self.duplicates}"
            + (f" ({self.duplicates_removed} removed)" if self.duplicates_removed else " (kept)"),
        ]
        if self.multiline_rows:
            lines.append(f"  rows with a field spanning several lines: {self.multiline_rows}")
        for n, reason in self.skipped_lines:
            lines.append(f"  skipped line {n}: {reason}")
        if self.skipped > len(self.skipped_lines):
            lines.append(f"  ... and {self.skipped - len(self.skipped_lines)} more skipped rows")
        return "\n".join(lines)


# ---- columns ------------------------------------------------------------------------------------------
def _expected_columns() -> str:
    return ("columns " + " or ".join(",".join(ALIASES[r][i] for r in ROLES) for i in range(3))
            + " (negative optional), or an explicit --columns mapping")


def resolve_columns(available: Iterable[str], columns: dict[str, str] | None, file: str,
                    line: int | None = 1) -> dict[str, str]:
    """Map roles (anchor, positive[, negative]) to the names in ``available`` (a header or JSON keys).

    Raises:
        DataError: a required role has no column, a name is ambiguous, or a mapping names a missing column.
    """
    available = list(available)
    shown = ", ".join(available) or "none"
    if columns:
        unknown = set(columns) - set(ROLES)
        if unknown:
            raise ValueError(f"column mapping has unknown role(s) {', '.join(sorted(unknown))}; "
                             f"roles: {', '.join(ROLES)}")
        for role in ("anchor", "positive"):
            if role not in columns:
                raise ValueError(f"column mapping lacks {role!r}; it needs anchor and positive (negative optional)")
        for role, name in columns.items():
            if name not in available:
                raise DataError(file, f"not found (available: {shown})", line=line, field=name,
                                expected=f"the column you mapped to {role}")
        return {r: columns[r] for r in ROLES if r in columns}
    by_lower: dict[str, str] = {}
    for name in available:
        key = name.strip().lower()
        if key in by_lower:
            raise DataError(file, "appears twice", line=line, field=name, expected="unique column names")
        by_lower[key] = name
    out: dict[str, str] = {}
    for role in ROLES:
        found = [by_lower[a] for a in ALIASES[role] if a in by_lower]
        if len(found) > 1:
            raise DataError(file, f"columns {', '.join(found)} all could be the {role}", line=line, field=found[1],
                            expected="one column per role; pass --columns to choose")
        if found:
            out[role] = found[0]
        elif role != "negative":
            raise DataError(file, f"no column for the {role} (found: {shown})", line=line, field=ALIASES[role][0],
                            expected=_expected_columns())
    return out


# ---- lines --------------------------------------------------------------------------------------------
class _Lines:
    """Numbered text lines of a binary file (gzip detected by its magic bytes), for csv or json parsing.

    Bad UTF-8 and NUL bytes do not stop the stream: they are recorded in ``problems`` (line -> reason) and
    marked in the text, so the row that holds them is rejected and the field named.
    """

    def __init__(self, path: Path, progress: bool = False) -> None:
        self.path, self.progress = path, progress
        self.line = 0
        self.problems: dict[int, str] = {}
        self.recent: deque[tuple[int, str]] = deque(maxlen=64)  # to re-read a row that failed to parse
        with open(path, "rb") as f:
            self.compressed = f.read(2) == _GZIP_MAGIC

    def __iter__(self) -> Iterator[str]:
        from tqdm.auto import tqdm

        with open(self.path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if self.compressed else raw
            total = self.path.stat().st_size
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {self.path.name}",
                       disable=not self.progress, leave=False)
            done = 0
            for data in stream:
                self.line += 1
                if self.line == 1 and data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                    data = data[3:]
                nul = b"\x00" in data
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.problems[self.line] = (f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at byte "
                                                f"{exc.start + 1} of the line)")
                    text = data.decode("utf-8", "surrogateescape")
                if nul:
                    at = data.index(b"\x00") + 1
                    self.problems.setdefault(self.line, f"NUL byte at byte {at} of the line")
                    text = text.replace("\x00", _NUL_MARK)
                self.recent.append((self.line, text))
                if self.line & 4095 == 0:  # cheap progress: compressed bytes consumed so far
                    bar.update(raw.tell() - done)
                    done = raw.tell()
                yield text
            bar.update(total - done)
            bar.close()

    def problem_in(self, start: int, end: int) -> str | None:
        """The recorded problem of the first line in [start, end], consumed so the dict stays small."""
        for n in range(start, end + 1):
            if n in self.problems:
                return self.problems.pop(n)
        return None

    def text_of(self, start: int, end: int) -> str | None:
        kept = [t for n, t in self.recent if start <= n <= end]
        return "".join(kept) if len(kept) == end - start + 1 else None


def _marked_field(values: dict[str, str]) -> str | None:
    """The first field holding a bad-byte marker (see ``_NUL_MARK``)."""
    for name, value in values.items():
        if any("\udc00" <= ch <= "\udcff" for ch in value):
            return name
    return None


def _quote_problem_field(text: str, delimiter: str) -> int | None:
    """Index of the field whose quoting is broken in ``text`` (unclosed, or text after the closing quote)."""
    index, quoted, at_start, i = 0, False, True, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"':
                if text[i + 1 : i + 2] == '"':  # an escaped quote ""
                    i += 2
                    continue
                quoted = False
                if i + 1 < len(text) and text[i + 1] not in (delimiter, "\r", "\n"):
                    return index
        elif ch == delimiter:
            index, at_start = index + 1, True
        elif ch == '"' and at_start:
            quoted, at_start = True, False
        else:
            at_start = False
        i += 1
    return index if quoted else None


def _csv_error(exc: csv.Error, start: int, end: int) -> tuple[str, str]:
    msg = str(exc)
    span = f" (lines {start}-{end})" if end > start else ""
    if "unexpected end of data" in msg:
        return (f"unclosed quote: the quoted field runs to the end of the file{span}",
                'a closing " (write a quote inside a quoted field as "")')
    if "expected after" in msg:
        return (f"text after a closing quote{span}",
                'the delimiter right after a closing quote (write a quote inside a quoted field as "")')
    if "field larger than field limit" in msg:
        return (f"field longer than {csv.field_size_limit()} characters, probably an unclosed quote "
                f"swallowing the lines after it{span}", 'a closing " at the end of the field')
    return f"cannot parse the row ({msg}){span}", "a well-formed CSV row"


# ---- readers ------------------------------------------------------------------------------------------
def _csv_rows(lines: _Lines, name: str, fmt: str, columns: dict[str, str] | None, report: LoadReport
              ) -> Iterator[tuple[int, dict[str, str] | _BadRow]]:
    """(start line, {role: text}) per data row of a csv/tsv file, or (start line, _BadRow)."""
    delimiter = "\t" if fmt == "tsv" else ","
    dname = "tab" if fmt == "tsv" else "comma"
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(name, "the file is empty", expected="a header line (e.g. sent0,sent1,hard_neg) and rows"
                        ) from None
    except csv.Error as exc:
        raise DataError(name, f"cannot parse the header ({exc})", line=1, expected=_expected_columns()) from None
    if lines.problems.get(1):
        raise DataError(name, f"header: {lines.problems[1]}", line=1, expected="UTF-8 text")
    if not header or not any(h.strip() for h in header):
        raise DataError(name, "the header line is empty", line=1, expected=_expected_columns())
    roles = resolve_columns(header, columns, name)
    report.columns = roles
    index = {role: header.index(col) for role, col in roles.items()}
    width = len(header)
    prev = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start, prev = prev + 1, reader.line_num
            problem, expected = _csv_error(exc, start, prev)
            text = lines.text_of(start, prev)
            col = _quote_problem_field(text, delimiter) if text is not None else None
            lines.problem_in(start, prev)
            yield start, _BadRow(start, problem, header[col] if col is not None and col < width else None,
                                 expected, end=prev)
            continue
        start, prev = prev + 1, reader.line_num
        if prev > start:
            report.multiline_rows += 1
        if not row:
            report.blank_lines += 1
            continue
        if len(row) != width:
            lines.problem_in(start, prev)
            if len(row) < width:
                yield start, _BadRow(start, f"missing: the row has {len(row)} of the header's {width} fields",
                                     header[len(row)], f"{width} {dname}-separated fields", end=prev)
            else:
                yield start, _BadRow(start, f"the row has {len(row)} fields but the header has {width}", None,
                                     f"{width} fields (quote any field that contains a {dname})", end=prev)
            continue
        values = {role: row[i] for role, i in index.items()}
        if lines.problems:
            problem = lines.problem_in(start, prev)
            if problem:
                bad = _marked_field({roles[r]: v for r, v in values.items()}) or _marked_field(dict(zip(header, row)))
                yield start, _BadRow(start, problem, bad, "UTF-8 text without NUL bytes", end=prev)
                continue
        yield start, values


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array",
               dict: "an object"}


def _object_values(obj: Any, n: int, roles: dict[str, str]) -> dict[str, str] | _BadRow:
    """Check one JSON object / hub row against the resolved keys."""
    if not isinstance(obj, dict):
        return _BadRow(n, f"the line holds {_JSON_TYPES.get(type(obj), type(obj).__name__)}, not an object", None,
                       "one JSON object per line")
    values = {}
    for role, key in roles.items():
        if key not in obj:
            return _BadRow(n, "missing", key, f"every row to have the keys {', '.join(roles.values())}")
        value = obj[key]
        if not isinstance(value, str):
            kind = _JSON_TYPES.get(type(value), type(value).__name__)
            return _BadRow(n, f"is {kind} ({json.dumps(value, default=str)[:40]}), not a string", key,
                           "a non-empty string")
        if "\x00" in value:  # a \u0000 escape
            return _BadRow(n, "contains a NUL character", key, "text without NUL characters")
        values[role] = value
    return values


def _jsonl_rows(lines: _Lines, name: str, columns: dict[str, str] | None, report: LoadReport
                ) -> Iterator[tuple[int, dict[str, str] | _BadRow]]:
    roles: dict[str, str] | None = None
    for n, text in enumerate(lines, 1):
        if not text.strip():
            report.blank_lines += 1
            continue
        problem = lines.problem_in(n, n)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield n, _BadRow(n, problem or f"not valid JSON ({exc.msg} at column {exc.colno})", None,
                             "one JSON object per line")
            continue
        if roles is None and isinstance(obj, dict):
            roles = resolve_columns(obj.keys(), columns, name, line=n)  # the first object fixes the keys
            report.columns = roles
        values = _object_values(obj, n, roles or {})
        if problem and not isinstance(values, _BadRow):
            values = _BadRow(n, problem, _marked_field({roles[r]: v for r, v in values.items()}),
                             "UTF-8 text without NUL bytes")
        yield n, values
    if lines.line == 0:
        raise DataError(name, "the file is empty", expected="one JSON object per line")


def _hub_rows(spec: str, columns: dict[str, str] | None, report: LoadReport
              ) -> Iterator[tuple[int, dict[str, str] | _BadRow]]:
    """Rows of a Hugging Face data set ``NAME[:CONFIG][@SPLIT]`` (split defaults to train); line = row number."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(spec, "is not a local file, and reading a Hugging Face data set needs the 'datasets' "
                        "package", expected="an existing .csv/.tsv/.jsonl file, or: pip install 'embedtune[hub]'"
                        ) from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # network, auth, unknown name: one clear message
        raise DataError(spec, f"is not a local file ({Path(spec).resolve()} does not exist) and loading it as a "
                        f"Hugging Face data set failed: {type(exc).__name__}: {exc}",
                        expected="an existing file or a reachable hub data set NAME[:CONFIG][@SPLIT]") from None
    roles = resolve_columns(ds.column_names, columns, spec, line=None)
    report.columns = roles
    for n, obj in enumerate(ds, 1):
        report.lines = n
        yield n, _object_values(obj, n, roles)


def _looks_like_file(spec: str) -> bool:
    lower = spec.lower().removesuffix(".gz")
    return spec.startswith((".", "/", "~")) or any(lower.endswith(s) for s in SUFFIXES) or spec.endswith(".gz")


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
    path = Path(name).expanduser()
    lines: _Lines | None = None
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
    elif path.exists():
        raise DataError(name, "is not a regular file", expected="a .csv, .tsv or .jsonl file")
    elif _looks_like_file(name):
        raise DataError(name, f"file not found (looked at {path.resolve()})",
                        expected="an existing file, or a hub data set name")
    else:
        report.format = "hub"
        rows = _hub_rows(name, columns, report)
    seen: set[int] = set()
    data_rows = 0
    try:
        for start, values in rows:
            data_rows += 1
            if not isinstance(values, _BadRow):
                for role, text in values.items():
                    if not text.strip():
                        values = _BadRow(start, "empty" if not text else "whitespace-only", report.columns[role],
                                         "non-empty text")
                        break
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
        log.warning("some inputs have hard negatives and some do not: %s",
                    ", ".join(f"{r.file}={'yes' if r.has_negatives else 'no'}" for r in reports))
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


from .decontaminate import (  # noqa: E402  (re-exported: the trainer imports everything from here)
    DecontaminationReport,
    decontaminate,
    normalize_sentence,
    sts_sentence_index,
)

__all__ = [
    "ALIASES", "DataError", "DecontaminationReport", "Example", "LoadReport", "decontaminate", "expand_data_path",
    "iter_examples", "load_training_data", "normalize_sentence", "parse_columns", "read_examples", "resolve_columns",
    "sts_sentence_index", "validate", "write_examples",
]
