"""Decontamination finds training rows that share a (normalized) sentence with a benchmark, and only those."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from embedtune.data.decontaminate import (
    OverlapCounter,
    benchmark_pairs_touched,
    decontaminate,
    normalize_sentence,
    sts_sentence_index,
)
from embedtune.data.triplets import Example


def write_tsv(path: Path, rows: list[tuple[str, str, float]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows(rows)


@pytest.fixture()
def tiny_data(tmp_path) -> Path:
    """A data folder with two benchmarks: STS12 (raw + mteb_like text) and SICK-R."""
    root = tmp_path / "data"
    write_tsv(root / "sts/STS12/test.tsv", [("Don't stop.", "The cat sat.", 1.0), ("A man is here", "B", 2.0)])
    write_tsv(root / "sts/STS12/test.mteb_like.tsv", [("do n't stop .", "the cat sat .", 1.0),
                                                      ("a man is here", "b", 2.0)])
    write_tsv(root / "sts/SICK-R/test.tsv", [("The cat sat", "A dog barks loudly", 3.0)])
    return root


def small_index(root: Path) -> dict[str, set[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny files do not have the real sizes
        return sts_sentence_index(root, ["STS12", "SICK-R"])


@pytest.mark.parametrize("raw,key", [
    ("A man, playing  guitar!", "a man playing guitar"),
    ("  The CAT sat.\n", "the cat sat"),
    ("do n't stop .", "do n t stop"),
    ("Don't stop.", "don t stop"),
    ("Ｆｕｌｌ width", "full width"),  # NFKC
    ("snake_case-word", "snake case word"),
    ("...", ""),
])
def test_normalize_sentence(raw, key):
    assert normalize_sentence(raw) == key


def test_index_covers_both_text_variants(tiny_data):
    index = small_index(tiny_data)
    assert index["don t stop"] == {"STS12"}  # raw text
    assert index["do n t stop"] == {"STS12"}  # tokenized MTEB text
    assert index["the cat sat"] == {"STS12", "SICK-R"}
    assert "" not in index and "b" in index


def test_planted_overlaps_are_found_and_only_those(tiny_data):
    index = small_index(tiny_data)
    rows = [
        Example("a man plays", "someone plays", "nobody plays", "train.csv", 2),
        Example("The cat sat!", "x", "y", "train.csv", 3),  # anchor in STS12 and SICK-R
        Example("p", "DON'T STOP", "q", "train.csv", 4),  # positive in STS12 (raw variant)
        Example("the cat", "sat", "a dog barks", "train.csv", 5),  # fragments only: no match
        Example("p", "q", "a dog  barks loudly.", "train.csv", 6),  # negative in SICK-R
        Example("a man is here now", "b c", None, "pairs.csv", 2),  # superstring: no match
    ]
    kept, rep = decontaminate(rows, index)
    assert [r.line for r in kept] == [2, 5, 2]
    assert rep.removed == [("train.csv", 3), ("train.csv", 4), ("train.csv", 6)]
    assert (rep.rows_in, rep.rows_removed, rep.rows_out, rep.sentences_matched) == (6, 3, 3, 3)
    assert rep.per_benchmark == {"STS12": 2, "SICK-R": 2}
    assert rep.matches[0] == {"source": "train.csv", "line": 3, "fields": ["anchor"], "benchmarks": ["STS12", "SICK-R"]}
    assert rep.matches[2]["fields"] == ["negative"]
    assert "3 of 6 rows (50.00%)" in rep.summary()
    touched = benchmark_pairs_touched(rep.matched_keys, tiny_data, ["STS12", "SICK-R"])
    assert touched == {"STS12": (1, 2), "SICK-R": (1, 1)}


def test_report_is_saved_atomically_as_json(tiny_data, tmp_path):
    _, rep = decontaminate([Example("the cat sat", "b", None, "f.csv", 7)], small_index(tiny_data))
    path = rep.save(tmp_path / "run" / "decontamination.json")
    data = json.loads(path.read_text())
    assert data["removed"] == [{"source": "f.csv", "line": 7}] and data["rows_out"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["decontamination.json"]


def test_counter_lists_every_benchmark_even_without_overlap():
    counter = OverlapCounter({"x": {"STS17"}}, benchmarks=["STS12", "STS17", "BIOSSES"])
    assert not counter.match(Example("y", "z", None, "f", 2))
    assert counter.report.per_benchmark == {"STS12": 0, "STS17": 0, "BIOSSES": 0}


def test_real_snli_overlaps_the_benchmarks(shared_data):
    """SOURCES.md warns that SNLI dev/test shares sentences with STS17 and STSBenchmark; we must see it."""
    from embedtune.data.triplets import read_examples

    index = sts_sentence_index(shared_data)
    assert len(index) > 25_000
    rows, _ = read_examples(str(shared_data / "nli/snli_devtest_triplets.csv.gz"))
    kept, rep = decontaminate(rows, index)
    assert rep.rows_removed == len(rows) - len(kept) > 0
    assert list(rep.per_benchmark) == ["STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STSBenchmark",
                                       "BIOSSES", "SICK-R"]
    assert rep.per_benchmark["STS17"] > 0 and rep.per_benchmark["STSBenchmark"] > 0
    # Nothing that is left shares a sentence with any benchmark.
    assert decontaminate(kept, index)[1].rows_removed == 0
    # The MNLI file was filtered against the STS sentences when it was built: no overlap.
    mnli, _ = read_examples(str(shared_data / "nli/mnli_dev_triplets.csv.gz"))
    assert decontaminate(mnli, index)[1].rows_removed == 0
