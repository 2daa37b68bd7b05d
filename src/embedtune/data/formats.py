"""File formats of training data: column names, numbered lines, and row parsers for csv/tsv/jsonl and hub sets.

Each parser yields ``(start line, {role: text})`` per row, or ``(start line, _BadRow)`` for a row that is
wrong; :func:`embedtune.data.triplets.iter_examples` decides whether that is an error or a counted skip.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .examples import ROLES, LoadReport

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
        self._bar = None
        with open(path, "rb") as f:
            self.compressed = f.read(2) == _GZIP_MAGIC

    def __iter__(self) -> Iterator[str]:
        from tqdm.auto import tqdm

        with open(self.path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if self.compressed else raw
            total = self.path.stat().st_size
            bar = self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {self.path.name}",
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

    def close(self) -> None:
        """Remove the progress bar (also when reading stopped at an error, so the message prints cleanly)."""
        if self._bar is not None:
            self._bar.close()

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
