"""``embedtune data check|decontaminate``: exit status, messages, atomic output."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import make_tokenizer
from test_decontaminate import write_tsv

from embedtune.cli import main

GOOD = "sent0,sent1,hard_neg\na man plays guitar,the man plays,a dog\nthe cat,a cat,two dogs\nthe cat,a cat,two dogs\n"


@pytest.fixture()
def tokenizer_dir(tmp_path):
    """A folder that resolve_source accepts (config.json) holding only the small word-level tokenizer."""
    folder = tmp_path / "tok"
    make_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 2}))
    return folder


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    for name in ["STS12", "STS13", "STS14", "STS15", "STS16"]:
        write_tsv(root / f"sts/{name}/test.tsv", [("The cat.", "x", 1.0)])
        write_tsv(root / f"sts/{name}/test.mteb_like.tsv", [("the cat .", "x", 1.0)])
    for name in ["STS17", "STSBenchmark", "BIOSSES", "SICK-R"]:
        write_tsv(root / f"sts/{name}/test.tsv", [("y", "z", 1.0)])
    return root


def test_check_reports_rows_duplicates_lengths_and_overlap(tmp_path, tokenizer_dir, data_dir, capsys):
    path = tmp_path / "t.csv"
    path.write_text(GOOD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["data", "check", str(path), "--model", str(tokenizer_dir), "--data-dir", str(data_dir),
                     "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows: 3 kept, 0 skipped" in out and "exact duplicates: 1" in out
    (report,) = json.loads((tmp_path / "r.json").read_text())
    # <s> + words + EOS: "a man plays guitar" -> 6, "the cat" -> 4 (twice).
    assert report["token_lengths"]["anchor"] == {"count": 3, "min": 4, "mean": 4.67, "p50": 4, "p95": 6, "p99": 6,
                                                 "max": 6, "over_cap": 0}
    assert report["overlap"]["rows_removed"] == 2
    assert report["overlap"]["per_benchmark"]["STS12"] == 2 and report["overlap"]["per_benchmark"]["SICK-R"] == 0
    assert report["pairs_touched"]["STS16"] == {"pairs": 1, "of": 1}
    assert "SICK-R" in out and "    STS12               2                    1/1" in out


@pytest.mark.parametrize("content,message", [
    ("sent0,sent1,hard_neg\na,b,c\nx,,z\n", "t.csv:3: field 'sent1': empty; expected non-empty text"),
    ("sent0,hard_neg\na,c\n", "t.csv:1: field 'sent1': no column for the positive"),
    ("", "t.csv: the file is empty"),
])
def test_check_exits_2_with_the_message(tmp_path, capsys, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    assert main(["data", "check", str(path), "--model", "none", "--no-overlap"]) == 2
    err = capsys.readouterr().err
    assert f"embedtune data: error: {tmp_path}/{message}" in err


def test_check_skip_mode_reports_skipped_lines(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("sent0,sent1\na,b\nx,\nc,d\n")
    assert main(["data", "check", str(path), "--model", "none", "--no-overlap", "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert "rows: 2 kept, 1 skipped" in out and "skipped line 3: field 'sent1': empty" in out


def test_decontaminate_writes_clean_copy_and_record(tmp_path, data_dir, capsys):
    src = tmp_path / "t.csv"
    src.write_text(GOOD)
    out = tmp_path / "clean" / "t.csv.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["data", "decontaminate", str(src), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    from embedtune.data.triplets import read_examples

    rows, rep = read_examples(str(out))
    assert [(r.anchor, r.negative) for r in rows] == [("a man plays guitar", "a dog")]
    assert rep.columns == {"anchor": "sent0", "positive": "sent1", "negative": "hard_neg"}
    record = json.loads((tmp_path / "clean" / "t.csv.gz.removed.json").read_text())
    assert [r["line"] for r in record["removed"]] == [3, 4]
    assert "2 of 3 rows" in capsys.readouterr().out


def test_decontaminate_leaves_no_output_on_error(tmp_path, data_dir, capsys):
    src = tmp_path / "t.csv"
    src.write_text("sent0,sent1\na,b\nc\n")
    out = tmp_path / "clean.csv"
    assert main(["data", "decontaminate", str(src), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert "t.csv:3: field 'sent1': missing" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "t.csv"]
    assert main(["data", "decontaminate", str(src), "--out", str(src)]) == 2
