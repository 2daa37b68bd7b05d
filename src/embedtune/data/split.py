"""Hold a slice of a pair (or triplet) file apart: a training file and a held-out file without shared anchors.

Rows are grouped by anchor text, so every row of a held-out query is held out (a query seen in training would
make retrieval numbers on the held-out slice look better than they are). ``held_out`` distinct anchors, drawn
with a seeded shuffle, go to the held-out file; everything else, in input order, to the training file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .triplets import Example, read_examples, write_examples


@dataclass
class SplitReport:
    """Rows and distinct anchors on each side."""

    rows: int
    anchors: int
    train_rows: int
    held_out_rows: int
    held_out_anchors: int

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.anchors} distinct anchors: {self.train_rows} rows to train, "
                f"{self.held_out_rows} rows ({self.held_out_anchors} anchors) held out")


def split_examples(examples: Sequence[Example], held_out: int, seed: int = 7
                   ) -> tuple[list[Example], list[Example]]:
    """(train, held-out) rows, input order kept on both sides; ``held_out`` distinct anchors held out.

    Raises:
        ValueError: ``held_out`` is not between 1 and the number of distinct anchors minus one.
    """
    anchors = list(dict.fromkeys(e.anchor for e in examples))
    if not 0 < held_out < len(anchors):
        raise ValueError(f"--held-out {held_out}: expected 1 .. {len(anchors) - 1} (the input has {len(anchors)} "
                         "distinct anchors)")
    held = set(random.Random(seed).sample(anchors, held_out))
    return [e for e in examples if e.anchor not in held], [e for e in examples if e.anchor in held]


def split_files(inputs: Sequence[str], train_out: str | Path, held_out_out: str | Path, held_out: int, *,
                seed: int = 7, columns: dict[str, str] | None = None, on_bad_row: str = "error",
                progress: bool = False) -> SplitReport:
    """Read and validate ``inputs`` (rows joined in order), split them, write both files atomically.

    Raises:
        DataError: a bad row or file (``FILE:LINE: field ...``); nothing is written then.
        ValueError: outputs that are inputs, or have no .csv/.tsv/.jsonl[.gz] suffix; a bad ``held_out``.
    """
    from .mining import check_output_path

    train_out, held_out_out = check_output_path(train_out, inputs), check_output_path(held_out_out, inputs)
    if train_out.resolve() == held_out_out.resolve():
        raise ValueError("the training and held-out files must differ")
    examples: list[Example] = []
    names: dict[str, str] = {}
    has_negatives = False
    for path in inputs:
        rows, load = read_examples(path, columns, on_bad_row, progress=progress)
        examples.extend(rows)
        names = names or load.columns
        has_negatives = has_negatives or load.has_negatives
    train, held = split_examples(examples, held_out, seed)
    write_examples(held, held_out_out, names=names, with_negatives=has_negatives)
    try:
        write_examples(train, train_out, names=names, with_negatives=has_negatives)
    except BaseException:
        Path(held_out_out).unlink(missing_ok=True)  # both files or neither
        raise
    return SplitReport(len(examples), len({e.anchor for e in examples}), len(train), len(held),
                       len({e.anchor for e in held}))
