"""`embedtune encode` on .txt, .jsonl and stdin; bad input gives file:line errors and no output file."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from embedtune.cli import main
from embedtune.models.embedder import Embedder


def test_encode_txt_and_jsonl_match_library(tiny_llama, tmp_path):
    texts = ["a man plays guitar", "the dog runs in the park", "a cat"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n")
    assert main(["encode", "--model", str(tiny_llama), "--device", "cpu", "--input", str(tmp_path / "t.txt"),
                 "--output", str(tmp_path / "a.npy")]) == 0
    assert main(["encode", "--model", str(tiny_llama), "--device", "cpu", "--input", str(tmp_path / "t.jsonl"),
                 "--output", str(tmp_path / "b.npy")]) == 0
    expected = Embedder.from_pretrained(str(tiny_llama), device="cpu").encode(texts)
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), expected, atol=1e-6)


def test_encode_autocast_option(tiny_llama, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a man plays guitar\nthe dog runs\n", encoding="utf-8")
    args = ["encode", "--model", str(tiny_llama), "--device", "cpu", "--input", str(tmp_path / "t.txt")]
    assert main([*args, "--output", str(tmp_path / "a.npy")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.npy"), "--autocast", "bf16"]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.abs(a - b).max() > 1e-6 and (a * b).sum(axis=1).min() > 0.98
    with pytest.raises(SystemExit):
        main([*args, "--output", str(tmp_path / "c.npy"), "--autocast", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists()


def test_encode_stdin(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a dog\nthe cat sits\n"))
    assert main(["encode", "--model", str(tiny_llama), "--device", "cpu", "--input", "-",
                 "--output", str(tmp_path / "s.npy"), "--no-normalize"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 32)


@pytest.mark.parametrize("name,content,message", [
    ("t.txt", "a dog\n\nthe cat\n", "t.txt:2: empty line"),
    ("t.jsonl", '{"text": "a dog"}\n{"text": 3}\n', "t.jsonl:2: field 'text' must be a non-empty string"),
    ("t.jsonl", '{"text": "a dog"}\n{"txt": "x"}\n', "t.jsonl:2: expected an object with a 'text' field"),
    ("t.jsonl", '{"text": "a dog"\n', "t.jsonl:1: not valid JSON"),
    ("t.txt", "", "t.txt: no texts found"),
])
def test_encode_bad_input(tiny_llama, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    out = tmp_path / "e.npy"
    assert main(["encode", "--model", str(tiny_llama), "--input", str(tmp_path / name), "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".e.npy*"))


def test_encode_missing_file_and_bad_utf8(tiny_llama, tmp_path, capsys):
    assert main(["encode", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "x.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    assert main(["encode", "--model", str(tiny_llama), "--input", str(tmp_path / "bad.txt"),
                 "--output", str(tmp_path / "x.npy")]) == 2
    assert "bad.txt:2: not valid UTF-8" in capsys.readouterr().err
