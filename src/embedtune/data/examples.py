"""What a training input is made of: the roles of a row, one :class:`Example`, and the :class:`LoadReport`
of reading an input. The readers (:mod:`.formats`, :mod:`.triplets`) and the filters that look at rows
(:mod:`.decontaminate`, :mod:`.check`, :mod:`.mining`) all build on these and on nothing else here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("anchor", "positive", "negative")
"""The fields of a row, in order; ``negative`` is absent from pair sources."""


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
