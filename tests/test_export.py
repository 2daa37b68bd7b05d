from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_lora_run

from embedtune.export import NotARunError, export_merged, export_sentence_transformers
from embedtune.models.embedder import Embedder

TEXTS = ["a man plays guitar", "the dog", "cat",
         "two children are playing in the park near the red house with the big blue car and the lazy dog"]


def make_run(base: Path, folder: Path, **options) -> Embedder:
    """A run folder as training writes it: base + a LoRA adapter (q/v) that changes the embeddings."""
    return make_lora_run(base, folder, **options)


def test_merged_equals_base_plus_adapter(tiny_llama, tmp_path):
    emb = make_run(tiny_llama, tmp_path / "run", pooling="weighted_mean", prompt="p3", max_length=16)
    expected = emb.encode(TEXTS)
    assert np.abs(expected - Embedder.from_pretrained(str(tiny_llama), device="cpu").encode(TEXTS)).max() > 1e-3
    out = export_merged(tmp_path / "run", tmp_path / "merged")
    meta = json.loads((out / "embedtune.json").read_text())
    assert meta["adapter"] is False and meta["exported_from"]["had_adapter"] is True
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = Embedder.load(out, device="cpu")
    assert not merged.has_adapter()
    assert (merged.pooling, merged.prompt, merged.max_length) == ("weighted_mean", "{} is: ", 16)
    np.testing.assert_allclose(merged.encode(TEXTS), expected, atol=1e-4)
    # An in-memory Embedder is exported from a copy: it keeps its adapter and its vectors.
    export_merged(emb, tmp_path / "merged2")
    assert emb.has_adapter()
    np.testing.assert_allclose(emb.encode(TEXTS), expected, atol=1e-6)


@pytest.mark.parametrize(("prompt", "padding_side", "pooling"), [
    (None, "right", "last"),
    ("this sentence {} means one word", "left", "last"),
    ("p3", "right", "mean"),
    (None, "left", "weighted_mean"),
])
def test_sentence_transformers_folder_equals_embedder(tiny_llama, tmp_path, caplog, prompt, padding_side,
                                                     pooling):
    from sentence_transformers import SentenceTransformer

    # max_length 8 truncates the long text: the EOS must survive it in both implementations.
    emb = make_run(tiny_llama, tmp_path / "run", prompt=prompt, padding_side=padding_side, pooling=pooling,
                   max_length=8)
    # embedtune keeps a prompt's suffix when it truncates; the exported tokenizer cannot (it cuts the end of
    # the prompted text), so with a suffix only the texts within the max length are exact, and the export warns.
    tt = emb.text_tokenizer
    plain = dataclasses.replace(tt, prompt=None)  # tokenizes the prompted text and cuts its end
    st_ids = plain.ids([tt.format(t) for t in TEXTS])
    fits = [len(dataclasses.replace(plain, max_length=1000).ids([tt.format(t)])[0]) <= 8 for t in TEXTS]
    suffix = bool(tt.suffix)
    texts = [t for t, ok in zip(TEXTS, fits) if ok or not suffix]
    assert texts and (not suffix or not all(fits))
    expected = emb.encode(texts)
    with caplog.at_level("WARNING", logger="embedtune.export"):
        out = export_sentence_transformers(tmp_path / "run", tmp_path / "st")
    assert ("over-long texts get different vectors" in caplog.text) == suffix
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(texts, batch_size=len(texts)), expected, atol=1e-4)
    np.testing.assert_allclose(st.encode(texts[:1]), expected[:1], atol=1e-4)  # alone, no padding
    # The saved tokenizer does embedtune's preprocessing: same ids, EOS exactly once, also when truncated.
    features = st.preprocess(TEXTS)
    eos = tt.eos_id
    for i, (row, mask, ids) in enumerate(zip(features["input_ids"], features["attention_mask"], tt.ids(TEXTS))):
        real = row[mask.bool()].tolist()
        assert real[-1] == eos and real.count(eos) == 1 and len(real) <= 8
        assert real == st_ids[i]
        assert (real == ids) == (fits[i] or not suffix)
    assert not fits[-1] and len(tt.ids([TEXTS[-1]])[0]) == 8  # the long text was truncated
    # The folder is also an embedtune model (prompt done by the tokenizer, not twice).
    again = Embedder.load(out, device="cpu")
    assert again.prompt is None
    np.testing.assert_allclose(again.encode(texts), expected, atol=1e-4)


def test_exports_of_a_reduced_depth_run_hold_only_its_layers(tiny_llama, tmp_path):
    from safetensors import safe_open
    from sentence_transformers import SentenceTransformer

    emb = make_run(tiny_llama, tmp_path / "run", num_layers=1)
    expected = emb.encode(TEXTS)
    merged = export_merged(tmp_path / "run", tmp_path / "merged")
    st = export_sentence_transformers(tmp_path / "run", tmp_path / "st")
    for folder in (merged, st):
        assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            assert not [k for k in f.keys() if "layers.1." in k]  # no dead weights of the dropped layer
    assert Embedder.load(merged, device="cpu").num_layers == 1
    np.testing.assert_allclose(Embedder.load(merged, device="cpu").encode(TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(SentenceTransformer(str(st), device="cpu").encode(TEXTS[:1]), expected[:1], atol=1e-4)


def test_sentence_transformers_tokenizer_that_appends_eos_itself(tmp_path):
    from conftest import make_tiny_model
    from sentence_transformers import SentenceTransformer

    base = make_tiny_model("llama", tmp_path / "base", eos_in_template=True)
    emb = make_run(base, tmp_path / "run", max_length=6, normalize=False)
    out = export_sentence_transformers(emb, tmp_path / "st")
    st = SentenceTransformer(str(out), device="cpu")
    assert [m.__class__.__name__ for m in st] == ["Transformer", "Pooling"]  # no Normalize: normalize=False
    np.testing.assert_allclose(st.encode(TEXTS), emb.encode(TEXTS), atol=1e-4)
    for row, mask in zip(*(st.preprocess(TEXTS)[k] for k in ("input_ids", "attention_mask"))):
        assert row[mask.bool()].tolist().count(emb.text_tokenizer.eos_id) == 1


def test_foreign_folders_get_clear_errors(tiny_llama, tmp_path):
    with pytest.raises(NotARunError, match="plain transformers checkpoint"):
        export_merged(tiny_llama, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_sentence_transformers(tmp_path / "nope", tmp_path / "out")
    adapter = tmp_path / "adapter"
    make_run(tiny_llama, adapter)
    (adapter / "embedtune.json").unlink()
    with pytest.raises(NotARunError, match="bare PEFT adapter"):
        export_merged(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_no_folder_and_keeps_old_one(tiny_llama, tmp_path, monkeypatch):
    make_run(tiny_llama, tmp_path / "run")
    out = export_merged(tmp_path / "run", tmp_path / "out")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        export_merged(tmp_path / "run", out)

    def broken_save(self, directory):
        (Path(directory) / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(Embedder, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_merged(tmp_path / "run", out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_merged(tmp_path / "run", tmp_path / "fresh")
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_export(tiny_llama, tmp_path, capsys):
    from embedtune.cli import main

    emb = make_run(tiny_llama, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 2
    assert "--merge" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--merge", "--out", str(tmp_path / "m")]) == 0
    np.testing.assert_allclose(Embedder.load(tmp_path / "m", device="cpu").encode(TEXTS), emb.encode(TEXTS), atol=1e-4)
    assert main(["export", str(tmp_path / "run"), "--merge", "--out", str(tmp_path / "m")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tiny_llama), "--merge", "--out", str(tmp_path / "x")]) == 2
    assert "not an embedtune run" in capsys.readouterr().err
    args = ["export", str(tmp_path / "run"), "--format", "sentence-transformers", "--out", str(tmp_path / "st")]
    assert main(args) == 0
    assert (tmp_path / "st" / "modules.json").is_file()
