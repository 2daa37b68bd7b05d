"""Reading and validating training files: every malformed input names file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from embedtune.data.triplets import (
    DataError,
    Example,
    LoadReport,
    iter_examples,
    load_training_data,
    parse_columns,
    read_examples,
    validate,
    write_examples,
)

GOOD = "sent0,sent1,hard_neg\na man plays,someone plays,nobody plays\na dog runs,an animal runs,a cat sleeps\n"


def put(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` to tmp_path/name, gzip-compressed when the name ends in .gz."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path / name
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return path


def error_of(path: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        read_examples(str(path), **kwargs)
    return info.value


# ---- good inputs ----------------------------------------------------------------------------------------
def test_csv_triplets_with_line_numbers(tmp_path):
    text = 'sent0,sent1,hard_neg\na,b,c\n"multi\nline",e,f\ng,h,i\n'
    rows, rep = read_examples(str(put(tmp_path, "t.csv", text)))
    assert rows[0] == Example("a", "b", "c", str(tmp_path / "t.csv"), 2)
    assert [r.line for r in rows] == [2, 3, 5]  # the quoted field spans lines 3-4, so the next row starts at 5
    assert rows[1].anchor == "multi\nline"
    assert (rep.rows, rep.skipped, rep.duplicates, rep.multiline_rows, rep.lines) == (3, 0, 0, 1, 5)
    assert rep.has_negatives and rep.columns == {"anchor": "sent0", "positive": "sent1", "negative": "hard_neg"}


@pytest.mark.parametrize("name,content", [
    ("t.tsv", "anchor\tpositive\tnegative\nq\tp\tn\n"),
    ("t.tsv.gz", "Anchor\tPositive\tNegative\r\nq\tp\tn\r\n"),  # case-insensitive names, CRLF
    ("t.jsonl", '{"query": "q", "pos": "p", "neg": "n", "id": 1}\n\n'),
    ("t.jsonl.gz", json.dumps({"sent0": "q", "sent1": "p", "hard_neg": "n"}) + "\n"),
    ("t.csv", "\ufeffsent0,sent1,hard_neg,label\nq,p,n,0\n"),  # byte-order mark, an extra column
])
def test_formats_and_column_aliases(tmp_path, name, content):
    rows, rep = read_examples(str(put(tmp_path, name, content)))
    assert [(r.anchor, r.positive, r.negative) for r in rows] == [("q", "p", "n")]
    assert rep.compressed == name.endswith(".gz")
    assert rep.format == name.split(".")[1]


def test_pairs_have_no_negative(tmp_path):
    rows, rep = read_examples(str(put(tmp_path, "p.csv", "sent0,sent1\na,b\n")))
    assert rows[0].negative is None and not rep.has_negatives
    assert "in-batch negatives only" in rep.summary()


def test_explicit_column_mapping(tmp_path):
    path = put(tmp_path, "m.csv", "premise,hypothesis,contra\na,b,c\n")
    rows, rep = read_examples(str(path), columns=parse_columns("anchor=premise,positive=hypothesis,negative=contra"))
    assert (rows[0].anchor, rows[0].negative) == ("a", "c")
    rows, _ = read_examples(str(path), columns=parse_columns("premise,hypothesis"))  # positional, pairs
    assert rows[0].negative is None
    err = error_of(path, columns={"anchor": "premise", "positive": "nope"})
    assert str(err).startswith(f"{path}:1: field 'nope': not found (available: premise, hypothesis, contra)")
    with pytest.raises(ValueError, match="roles are anchor"):
        parse_columns("a=x,b=y")


# ---- malformed inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,content,line,field,text", [
    ("missing.csv", "sent0,hard_neg\na,c\n", 1, "sent1", "no column for the positive (found: sent0, hard_neg)"),
    ("ambiguous.csv", "sent0,anchor,sent1\na,b,c\n", 1, "anchor", "columns sent0, anchor all could be the anchor"),
    ("empty_field.csv", GOOD + "x,,z\n", 4, "sent1", "empty; expected non-empty text"),
    ("blank_field.tsv", "sent0\tsent1\nx\t  \n", 2, "sent1", "whitespace-only"),
    ("short.csv", GOOD + "x,y\n", 4, "hard_neg", "missing: the row has 2 of the header's 3 fields"),
    ("long.csv", GOOD + "x,y,z,w\n", 4, None, "the row has 4 fields but the header has 3"),
    ("unclosed.csv", GOOD + 'x,"y,z\nu,v,w\n', 4, "sent1", "unclosed quote: the quoted field runs to the end"),
    ("after_quote.csv", GOOD + 'x,"y"z,w\n', 4, "sent1", "text after a closing quote"),
    ("bad_json.jsonl", '{"sent0": "a", "sent1": "b"}\n{"sent0": "a", "sent1": }\n', 2, None, "not valid JSON"),
    ("no_field.jsonl", '{"sent0": "a", "sent1": "b"}\n{"sent0": "a"}\n', 2, "sent1", "missing"),
    ("number.jsonl", '{"sent0": "a", "sent1": "b"}\n{"sent0": "a", "sent1": 5}\n', 2, "sent1",
     "is a number (5), not a string"),
    ("null.jsonl", '{"sent0": "a", "sent1": null}\n', 1, "sent1", "is null (null), not a string"),
    ("array.jsonl", '{"sent0": "a", "sent1": "b"}\n["a", "b"]\n', 2, None, "the line holds an array, not an object"),
    ("nul_escape.jsonl", '{"sent0": "a\\u0000", "sent1": "b"}\n', 1, "sent0", "contains a NUL character"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, name, content, line, field, text):
    path = put(tmp_path, name, content)
    err = error_of(path)
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert str(err).startswith(f"{path}:{line}: " + (f"field {field!r}: " if field else ""))
    assert text in str(err)
    assert "; expected " in str(err)


def test_bad_utf8_and_nul_bytes_name_the_field(tmp_path):
    path = put(tmp_path, "bytes.csv", GOOD.encode() + b"ok,caf\xe9,z\n")
    err = error_of(path)
    assert (err.line, err.field) == (4, "sent1")
    assert "invalid UTF-8 (byte 0xe9 at byte 7 of the line)" in str(err)
    path = put(tmp_path, "nul.csv.gz", GOOD.encode() + b"ok,fine,n\x00o\n")
    err = error_of(path)
    assert (err.line, err.field) == (4, "hard_neg") and "NUL byte at byte 10" in str(err)
    path = put(tmp_path, "bytes.jsonl", b'{"sent0": "a", "sent1": "b\xff"}\n')
    err = error_of(path)
    assert (err.line, err.field) == (1, "sent1") and "invalid UTF-8" in str(err)


@pytest.mark.parametrize("name,content,text", [
    ("empty.csv", "", "the file is empty"),
    ("empty.jsonl", "", "the file is empty"),
    ("header_only.csv", "sent0,sent1,hard_neg\n", "no rows after the header"),
    ("header_blank.tsv.gz", "sent0\tsent1\n\n\n", "no rows after the header"),
    ("blank_header.csv", "\na,b,c\n", "the header line is empty"),
    ("blank.jsonl", "\n\n", "no rows"),
])
def test_empty_inputs(tmp_path, name, content, text):
    path = put(tmp_path, name, content)
    err = error_of(path)
    assert text in str(err) and str(err).startswith(str(path))


def test_truncated_and_corrupt_gzip(tmp_path):
    body = ("sent0,sent1,hard_neg\n" + "".join(f"anchor {i},positive {i},negative {i}\n" for i in range(3000))).encode()
    packed = gzip.compress(body, mtime=0)
    truncated = tmp_path / "trunc.csv.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    err = error_of(truncated)
    assert "truncated .gz: the compressed data ends early" in str(err) and err.line is None
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(packed[:-8] + bytes(8))  # CRC and size trailer zeroed
    assert "corrupt .gz" in str(error_of(corrupt))
    notgz = tmp_path / "plain.csv.gz"
    notgz.write_bytes(b"\x1f\x8bnot really gzip")
    assert "corrupt .gz" in str(error_of(notgz))
    with pytest.raises(DataError, match="truncated"):  # skip mode cannot skip a broken stream
        read_examples(str(truncated), on_bad_row="skip")


def test_missing_and_unsupported_files(tmp_path):
    err = error_of(tmp_path / "nope.csv")
    assert "file not found (looked at" in str(err)
    put(tmp_path, "t.parquet", "x")
    assert "unsupported file type" in str(error_of(tmp_path / "t.parquet"))
    with pytest.raises(ValueError, match="on_bad_row"):
        read_examples(str(tmp_path / "t.parquet"), on_bad_row="ignore")


# ---- skip mode, duplicates ------------------------------------------------------------------------------
def test_skip_mode_counts_and_lists_lines(tmp_path):
    lines = [GOOD.rstrip("\n"), "x,,z", "short,row", "a man plays,someone plays,nobody plays", "p,q,r", "", "s,t,u"]
    path = put(tmp_path, "mixed.csv", "\n".join(lines) + "\n" + 'late,"unclosed,x\n')
    rows, rep = read_examples(str(path), on_bad_row="skip")
    assert [r.line for r in rows] == [2, 3, 6, 7, 9]
    assert (rep.rows, rep.skipped, rep.duplicates, rep.blank_lines) == (5, 3, 1, 1)
    assert [n for n, _ in rep.skipped_lines] == [4, 5, 10]
    assert rep.skipped_lines[0][1] == "field 'sent1': empty; expected non-empty text"
    assert "field 'hard_neg': missing" in rep.skipped_lines[1][1]
    assert "unclosed quote" in rep.skipped_lines[2][1]
    assert rep.to_dict()["skipped_lines"][0] == {"line": 4, "reason": rep.skipped_lines[0][1]}
    assert "skipped line 5: field 'hard_neg'" in rep.summary()


def test_skip_mode_with_only_bad_rows_is_an_error(tmp_path):
    path = put(tmp_path, "bad.jsonl", '{"sent0": "a", "sent1": ""}\n{"sent0": "a", "sent1": 3}\n')
    with pytest.raises(DataError, match="all 2 rows are bad"):
        read_examples(str(path), on_bad_row="skip")


def test_skip_mode_lists_only_the_first_lines_but_counts_all(tmp_path):
    path = put(tmp_path, "many.csv", "sent0,sent1\n" + "a,\n" * 25 + "a,b\n")
    rows, rep = read_examples(str(path), on_bad_row="skip")
    assert (rep.rows, rep.skipped, len(rep.skipped_lines)) == (1, 25, 10)
    assert "and 15 more skipped rows" in rep.summary()


def test_duplicates_counted_and_optionally_dropped(tmp_path):
    path = put(tmp_path, "d.csv", GOOD + "a dog runs,an animal runs,a cat sleeps\na dog runs,an animal runs,other\n")
    rows, rep = read_examples(str(path))
    assert (len(rows), rep.duplicates, rep.duplicates_removed) == (4, 1, 0)
    rows, rep = read_examples(str(path), drop_duplicates=True)
    assert (len(rows), rep.duplicates, rep.duplicates_removed) == (3, 1, 1)


def test_iter_examples_streams_and_fills_the_report(tmp_path):
    report = LoadReport("x")
    it = iter_examples(str(put(tmp_path, "t.csv", GOOD)), report=report)
    first = next(it)
    assert first.line == 2 and report.rows == 1  # one row read, not the whole file
    assert len(list(it)) == 1 and report.rows == 2
    assert validate(str(tmp_path / "t.csv")).rows == 2


# ---- several inputs, hub, writing -----------------------------------------------------------------------
def test_load_training_data_expands_the_data_folder(shared_data):
    rows, reports = load_training_data(["{data}/nli/snli_devtest_triplets.csv.gz", "{data}/pairs/"
                                        "stsb_train_score_ge4_pairs.csv.gz"], data_dir=shared_data)
    assert [r.rows for r in reports] == [6219, 181]
    assert len(rows) == 6400 and rows[0].line == 2 and rows[-1].negative is None
    assert rows[0].source == f"{shared_data}/nli/snli_devtest_triplets.csv.gz"


def test_hub_dataset_path_without_network(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["p", ""], "negative": ["n", "m"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, rep = read_examples("someone/triplets:cfg@dev", on_bad_row="skip")
    assert calls == [("someone/triplets", "cfg", "dev")]
    assert (rep.format, rep.rows, rep.skipped, rows[0].source) == ("hub", 1, 1, "someone/triplets:cfg@dev")
    assert rep.skipped_lines == [(2, "field 'positive': empty; expected non-empty text")]


def test_hub_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="is not a local file .* ConnectionError: no network"):
        read_examples("someone/triplets")


@pytest.mark.parametrize("name", ["out.csv", "out.tsv.gz", "out.jsonl"])
def test_write_examples_round_trips(tmp_path, name):
    rows = [Example("a, \"quoted\"", "b\tc", "d\ne", "x", 2), Example("f", "g", "h", "x", 3)]
    assert write_examples(rows, tmp_path / name) == 2
    back, rep = read_examples(str(tmp_path / name))
    assert [(r.anchor, r.positive, r.negative) for r in back] == [(r.anchor, r.positive, r.negative) for r in rows]
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # no temporary file left behind
