"""The nine STS benchmarks load from the shared data folder with the paper's sizes; a user's own STS-format
file is read as strictly, with FILE:LINE errors."""

from __future__ import annotations

import warnings

import pytest

from embedtune.data import sts
from embedtune.data.sts import (
    TASKS,
    find_data_dir,
    load_sts,
    load_sts_file_or_task,
    read_sts_tsv,
    resolve_task_names,
    resolve_task_specs,
)

SIZES = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186, "STS17": 250,
         "STSBenchmark": 1379, "BIOSSES": 100, "SICK-R": 9927}


def test_registry_is_the_nine_in_the_papers_order():
    assert {n: t.rows for n, t in TASKS.items()} == SIZES
    assert list(TASKS) == list(SIZES)
    assert resolve_task_names("all") == list(SIZES)
    assert resolve_task_names("stsb,sts17-en-en, sickr") == ["STSBenchmark", "STS17", "SICK-R"]
    with pytest.raises(ValueError, match="unknown STS task 'sts99'"):
        resolve_task_names(["sts99"])


@pytest.mark.parametrize("name", list(SIZES))
def test_nine_benchmarks_load_with_the_right_counts(shared_data, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a size mismatch warning would fail the test
        data = load_sts(name, shared_data)
    assert len(data) == len(data.sentences1) == len(data.sentences2) == SIZES[name]
    assert all(s.strip() for s in data.sentences1 + data.sentences2)
    lo, hi = (0.0, 4.0) if name == "BIOSSES" else (1.0, 5.0) if name == "SICK-R" else (0.0, 5.0)
    assert lo <= min(data.scores) and max(data.scores) <= hi


def test_sts12_16_default_to_mteb_text_and_offer_raw(shared_data):
    mteb = load_sts("STS12", shared_data)
    raw = load_sts("STS12", shared_data, variant="raw")
    assert mteb.source.endswith("test.mteb_like.tsv") and raw.source.endswith("test.tsv")
    assert mteb.scores == raw.scores
    assert raw.sentences1[0].startswith("The problem") and mteb.sentences1[0].startswith("the problem")
    # CSV quoting: the third raw row starts with a quoted quote.
    assert raw.sentences1[2].startswith('"It\'s a huge black eye,"')
    with pytest.raises(ValueError, match="variant must be"):
        load_sts("STS12", shared_data, variant="lower")


def test_size_mismatch_warns_with_the_benchmark_name(tmp_path):
    (tmp_path / "sts" / "STS17").mkdir(parents=True)
    (tmp_path / "sts" / "STS17" / "test.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.5\n")
    with pytest.warns(UserWarning, match="benchmark STS17: 1 pairs .* expected 250"):
        data = load_sts("sts17-en-en", tmp_path)
    assert data.scores == [1.5]


def test_bad_tsv_rows_name_file_and_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\tNaN-ish\n")
    with pytest.raises(ValueError, match=r"x.tsv:3: field 'score' is 'NaN-ish', not a number"):
        read_sts_tsv(path, "x")
    path.write_text("sentence1\tsentence2\tscore\na\t \t1\n")
    with pytest.raises(ValueError, match=r"x.tsv:2: field 'sentence2' is empty"):
        read_sts_tsv(path, "x")


@pytest.mark.parametrize("content,message", [
    (b"sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", r"x.tsv:3: the row has 2 fields but the header has 3"),
    (b"sentence1\tsentence2\tscore\na\tb\t1\tzz\n", r"x.tsv:2: the row has 4 fields but the header has 3"),
    (b"sentence1\tsentence2\tscore\na\tb\tinf\n", r"x.tsv:2: field 'score' is 'inf'; expected a finite number"),
    (b"sentence1\tsentence2\tscore\na\tb\xff\t1\n", r"x.tsv:2: field 'sentence2' holds invalid UTF-8"),
    (b"sentence1\tsentence2\tscore\n", r"x.tsv: no rows after the header"),
    (b"", r"x.tsv:1: header lacks column\(s\) score, sentence1, sentence2"),
])
def test_own_sts_files_are_read_strictly(tmp_path, content, message):
    path = tmp_path / "x.tsv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_sts_tsv(path, "x")


def test_task_specs_mix_benchmarks_and_files(tmp_path):
    own = tmp_path / "my_dev.tsv"
    own.write_text("sentence1\tsentence2\tscore\na man\ta woman\t2.5\n")
    assert resolve_task_specs(f"sts12, {own},stsb") == ["STS12", str(own), "STSBenchmark"]
    data = load_sts_file_or_task(str(own))
    assert (data.name, data.scores, data.source) == ("my_dev", [2.5], str(own))
    with pytest.raises(FileNotFoundError, match="STS file .*nope.tsv not found"):
        resolve_task_specs(str(tmp_path / "nope.tsv"))
    (tmp_path / "STS17.tsv").write_text(own.read_text())
    with pytest.raises(ValueError, match="would go by the benchmark name 'STS17'"):
        resolve_task_specs(str(tmp_path / "STS17.tsv"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my_dev.tsv").write_text(own.read_text())
    with pytest.raises(ValueError, match="both go by the name 'my_dev'"):
        resolve_task_specs([str(own), str(tmp_path / "sub" / "my_dev.tsv")])


def test_missing_folder_and_file_say_where_they_looked(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="from --data-dir"):
        find_data_dir(tmp_path / "nope")
    monkeypatch.setenv(sts.DATA_ENV, str(tmp_path / "env-nope"))
    with pytest.raises(FileNotFoundError, match=r"env-nope \(from \$EMBEDTUNE_DATA\)"):
        find_data_dir()
    monkeypatch.setenv(sts.DATA_ENV, str(tmp_path))
    assert find_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"benchmark BIOSSES: file .*sts/BIOSSES/test.tsv not found"):
        load_sts("BIOSSES")


def test_hub_source_uses_the_mteb_datasets(monkeypatch):
    """The hub code path, exercised with a stand-in for ``datasets.load_dataset`` (no network here)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake(*args, split=None):
        calls.append((args, split))
        return datasets.Dataset.from_dict({"sentence1": ["a"] * 250, "sentence2": ["b"] * 250, "score": [1] * 250})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_sts("STS17", source="hub")
    assert calls == [(("mteb/sts17-crosslingual-sts", "en-en"), "test")]
    assert len(data) == 250 and data.source == "hf://mteb/sts17-crosslingual-sts/en-en"
    with pytest.raises(ValueError, match="only the mteb_like text"):
        load_sts("STS12", source="hub", variant="raw")
    with pytest.warns(UserWarning, match="benchmark STSBenchmark-dev: 250 pairs"):
        load_sts("STSBenchmark-dev", source="hub")
    assert calls[-1] == (("mteb/stsbenchmark-sts",), "validation")
