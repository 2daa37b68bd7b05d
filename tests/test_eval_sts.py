"""STS metrics: equal to scipy by hand (ties included), to sentence-transformers' and MTEB's evaluators on the
same embeddings and data, and task-name errors that list the known tasks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import WORDS
from scipy.stats import pearsonr, rankdata, spearmanr

from embedtune.data.sts import TASKS, StsData, resolve_task_names
from embedtune.evaluation.sts import correlations, score_sts


def _pearson_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def test_correlations_equal_scipy_by_hand_with_ties():
    rng = np.random.default_rng(0)
    e1 = rng.normal(size=(12, 5))
    e2 = rng.normal(size=(12, 5))
    # Tied similarities: pairs 4 and 8 repeat pair 2, pair 10 repeats pair 9 (identical rows compute
    # bit-identical similarities, so the ties are exact whatever the arithmetic).
    e1[[4, 8]], e2[[4, 8]] = e1[2], e2[2]
    e1[10], e2[10] = e1[9], e2[9]
    gold = [0, 1, 1, 2, 2, 2, 3.5, 4, 4, 5, 5, 0]  # tied gold scores
    got = correlations(e1, e2, gold)
    g = np.asarray(gold, dtype=float)
    cos = np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(e1, e2)])
    man = -np.array([np.abs(a - b).sum() for a, b in zip(e1, e2)])
    euc = -np.array([np.sqrt(((a - b) ** 2).sum()) for a, b in zip(e1, e2)])
    for name, sim in [("cosine", cos), ("manhattan", man), ("euclidean", euc)]:
        # Spearman by hand: Pearson of average ranks (the tie-aware definition scipy uses).
        by_hand = _pearson_by_hand(rankdata(g), rankdata(sim)) * 100
        assert got[f"{name}_spearman"] == pytest.approx(by_hand, abs=1e-9)
        assert got[f"{name}_spearman"] == pytest.approx(spearmanr(g, sim).statistic * 100, abs=1e-9)
        assert got[f"{name}_pearson"] == pytest.approx(_pearson_by_hand(g, sim) * 100, abs=1e-9)
        assert got[f"{name}_pearson"] == pytest.approx(pearsonr(g, sim).statistic * 100, abs=1e-9)


def test_each_unique_sentence_is_encoded_once():
    data = StsData("x", ["a b", "c d", "a b", "e"], ["c d", "a b", "f", "e"], [1.0, 2.0, 3.0, 4.5], "mem")
    seen: list[list[str]] = []

    def encode(texts):
        seen.append(list(texts))
        return np.stack([np.array([len(t), t.count("a") + 1.0, 1.0]) for t in texts])

    res = score_sts(data, encode)
    assert len(seen) == 1 and sorted(seen[0]) == sorted({"a b", "c d", "e", "f"})
    assert (res.pairs, res.unique_sentences) == (4, 4)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as err:
        resolve_task_names("STS12,NoSuchTask")
    msg = str(err.value)
    assert "NoSuchTask" in msg and all(name in msg for name in TASKS)
    assert resolve_task_names("sts12, stsb,SICK-R") == ["STS12", "STSBenchmark", "SICK-R"]


@pytest.fixture(scope="module")
def word_pairs() -> StsData:
    """60 pairs of random sentences over the tiny tokenizer's vocabulary, with tied gold scores."""
    rng = np.random.default_rng(1)
    s1 = [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) for _ in range(60)]
    s2 = [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) for _ in range(60)]
    s2[5] = s1[5]  # a repeated sentence, as in the real benchmarks
    return StsData("STSBenchmark", s1, s2, [float(x) for x in rng.integers(0, 6, 60)], "generated")


@pytest.fixture(scope="module")
def tiny_embedder(tiny_llama):
    from embedtune.models.embedder import Embedder

    return Embedder.from_pretrained(str(tiny_llama), device="cpu")


def test_matches_sentence_transformers_evaluator(tiny_embedder, word_pairs):
    """sentence-transformers' EmbeddingSimilarityEvaluator on the same embeddings and data, to 1e-6."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    ours = score_sts(word_pairs, lambda texts: tiny_embedder.encode(texts))

    class SameEmbeddings(EmbeddingSimilarityEvaluator):
        # Feed it our embeddings: the comparison is of the metric, not of two encoders.
        def embed_inputs(self, model, sentences, **kwargs):
            return tiny_embedder.encode(list(sentences))

        def store_metrics_in_model_card_data(self, *args, **kwargs):
            pass

    evaluator = SameEmbeddings(word_pairs.sentences1, word_pairs.sentences2, word_pairs.scores,
                               similarity_fn_names=["cosine", "manhattan", "euclidean"], name="t")
    theirs = evaluator(model=None)
    for fn in ("cosine", "manhattan", "euclidean"):
        for stat in ("spearman", "pearson"):
            assert getattr(ours, f"{fn}_{stat}") / 100 == pytest.approx(theirs[f"t_{stat}_{fn}"], abs=1e-6)


def test_matches_mteb_sts_evaluator_offline(tiny_embedder, word_pairs, tmp_path):
    """MTEB's own STSBenchmark task run on a local STS file (its hub copy is unreachable: the file is read
    with embedtune's reader and handed to the task as its data set), encoding through our encoder."""
    import mteb
    from datasets import Dataset, DatasetDict
    from mteb.models import EncoderProtocol

    from embedtune.data.sts import read_sts_tsv
    from embedtune.evaluation.mteb import EmbedtuneEncoder

    path = tmp_path / "test.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows(zip(word_pairs.sentences1, word_pairs.sentences2, word_pairs.scores))
    local = read_sts_tsv(path, "STSBenchmark")
    encoder = EmbedtuneEncoder(tiny_embedder, batch_size=16)
    assert isinstance(encoder, EncoderProtocol)
    task = mteb.get_task("STSBenchmark")
    columns = {"sentence1": local.sentences1, "sentence2": local.sentences2, "score": local.scores}
    task.dataset = {"default": DatasetDict({"test": Dataset.from_dict(columns)})}
    task.data_loaded = True
    theirs = task.evaluate(encoder, split="test", encode_kwargs={"batch_size": 16})["default"]
    ours = score_sts(word_pairs, lambda texts: tiny_embedder.encode(texts))
    assert theirs["main_score"] == pytest.approx(ours.cosine_spearman / 100, abs=1e-6)
    for key in ("cosine_spearman", "cosine_pearson", "manhattan_spearman", "manhattan_pearson",
                "euclidean_spearman", "euclidean_pearson"):
        assert theirs[key] == pytest.approx(getattr(ours, key) / 100, abs=1e-6)


def test_mteb_encoder_uses_task_prompt(tiny_embedder):
    from types import SimpleNamespace

    from embedtune.evaluation.mteb import EmbedtuneEncoder

    encoder = EmbedtuneEncoder(tiny_embedder, prompts={"STS": "this sentence {} means"})
    meta = SimpleNamespace(name="STSBenchmark", type="STS")
    batches = [{"text": ["a man plays"]}, {"text": ["the dog runs", "a cat"]}]
    got = encoder.encode(batches, task_metadata=meta, hf_split="test", hf_subset="default")
    assert got.shape == (3, tiny_embedder.dim)
    assert tiny_embedder.prompt is None  # restored after the call
    tiny_embedder.text_tokenizer.prompt = "this sentence {} means"
    try:
        expected = tiny_embedder.encode(["a man plays", "the dog runs", "a cat"])
    finally:
        tiny_embedder.text_tokenizer.prompt = None
    np.testing.assert_allclose(got, expected, atol=1e-6)
