"""``embedtune data split``: held-out anchors keep all their rows and never reach the training file; both files
or neither are written; bad input exits 2."""

from __future__ import annotations

import gzip

from embedtune.cli import main
from embedtune.data.split import split_examples
from embedtune.data.triplets import Example, read_examples


def test_split_holds_whole_anchors_apart_and_keeps_order():
    rows = [Example(f"a{i % 7}", f"p{i}", None, "mem", i + 2) for i in range(30)]
    train, held = split_examples(rows, 3, seed=1)
    held_anchors = {e.anchor for e in held}
    assert len(held_anchors) == 3 and not held_anchors & {e.anchor for e in train}
    assert sorted(train + held, key=lambda e: e.line) == rows
    assert train == sorted(train, key=lambda e: e.line) and held == sorted(held, key=lambda e: e.line)
    assert split_examples(rows, 3, seed=1) == (train, held)  # seeded
    assert split_examples(rows, 3, seed=2) != (train, held)


def test_cli_split_joins_files_and_writes_both(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv.gz"
    a.write_text("sent0,sent1\n" + "".join(f"q{i},p{i}\n" for i in range(10)))
    with gzip.open(b, "wt") as f:
        f.write("sent0,sent1\n" + "".join(f"r{i},s{i}\n" for i in range(10)))
    train, held = tmp_path / "train.csv", tmp_path / "held.tsv"
    assert main(["data", "split", str(a), str(b), "--held-out", "4", "--out", str(train),
                 "--held-out-file", str(held)]) == 0
    assert "20 rows, 20 distinct anchors: 16 rows to train, 4 rows (4 anchors) held out" in capsys.readouterr().out
    (t, tl), (h, hl) = read_examples(train), read_examples(held)
    assert len(t) == 16 and len(h) == 4 and tl.columns == hl.columns == {"anchor": "sent0", "positive": "sent1"}


def test_cli_split_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "a.csv"
    src.write_text("sent0,sent1\nq,p\nr,\n")
    args = ["data", "split", str(src), "--out", str(tmp_path / "t.csv"), "--held-out-file", str(tmp_path / "h.csv")]
    assert main([*args, "--held-out", "1"]) == 2
    assert "a.csv:3: field 'sent1': empty" in capsys.readouterr().err
    src.write_text("sent0,sent1\nq,p\nr,s\n")
    assert main([*args, "--held-out", "2"]) == 2
    assert "--held-out 2: expected 1 .. 1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
