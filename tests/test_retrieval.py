"""Retrieval evaluation: the metrics equal sentence-transformers' InformationRetrievalEvaluator and MTEB's
(pytrec_eval) scores on the same vectors, to 1e-6; files are validated like ``data check``; the CLI writes
retrieval.json beside (or instead of) results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import WORDS

from embedtune.cli import main
from embedtune.data.formats import DataError
from embedtune.evaluation.retrieval import evaluate_retrieval, load_retrieval_data, retrieval_metrics

DIM = 16


def write_case(tmp_path, seed: int = 0) -> tuple:
    """A pair file (25 queries, 1-3 positives each, some negatives), a corpus file (new passages plus copies of
    pair-file passages), and a vector per text: positives are their query plus noise, so ranks are mixed."""
    rng = np.random.default_rng(seed)
    vec: dict[str, np.ndarray] = {}
    rows = []
    for q in range(25):
        query = f"query {q}"
        vec[query] = rng.normal(size=DIM)
        for p in range(int(rng.integers(1, 4))):
            pos = f"passage {q}-{p}"
            vec[pos] = vec[query] + rng.normal(scale=1.3, size=DIM)
            neg = f"negative {q}-{p}"
            vec[neg] = vec[query] + rng.normal(scale=1.6, size=DIM)
            rows.append((query, pos, neg))
    extra = [f"extra {i}" for i in range(40)]
    for t in extra:
        vec[t] = rng.normal(size=DIM)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("query\tpositive\tnegative\n" + "".join("\t".join(r) + "\n" for r in rows))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(extra[:20] + [rows[0][1], extra[3]] + extra[20:]) + "\n")  # two duplicates
    return pairs, corpus, vec


def lookup(vec: dict[str, np.ndarray]):
    return lambda texts: np.stack([vec[t] for t in texts]).astype(np.float32)


def test_load_groups_queries_and_dedupes_the_corpus(tmp_path):
    pairs, corpus, _ = write_case(tmp_path)
    rows = pairs.read_text().splitlines()[1:]
    data = load_retrieval_data(pairs, corpus)
    passages = list(data.corpus())
    assert len(data.queries) == 25 and len(data.relevant) == 25
    assert len(passages) == len(set(passages)) == data.corpus_size == 2 * len(rows) + 40
    assert data.corpus_file_duplicates == 2
    first = data.queries.index("query 0")
    assert {passages[i] for i in data.relevant[first]} == {r.split("\t")[1] for r in rows if r.startswith("query 0\t")}


@pytest.mark.parametrize("tie", [False, True])
def test_metrics_equal_sentence_transformers_evaluator(tmp_path, tie):
    """Same vectors into both; with ``tie`` two passages share one vector, so the tie order (ascending corpus
    id in both) is checked too."""
    import torch
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    pairs, corpus, vec = write_case(tmp_path)
    if tie:
        vec["extra 5"] = vec["passage 2-0"].copy()
    data = load_retrieval_data(pairs, corpus)
    ours = evaluate_retrieval(None, data, encode=lookup(vec), chunk_size=7, backend="numpy").metrics
    passages = list(data.corpus())
    cid = {t: f"{i:05d}" for i, t in enumerate(passages)}  # ascending ids = our corpus order

    class SameVectors(InformationRetrievalEvaluator):
        def embed_inputs(self, model, sentences, **kwargs):
            return torch.from_numpy(lookup(vec)(list(sentences)))

    evaluator = SameVectors(
        queries={f"q{i}": q for i, q in enumerate(data.queries)}, corpus={cid[t]: t for t in passages},
        relevant_docs={f"q{i}": {f"{j:05d}" for j in rel} for i, rel in enumerate(data.relevant)},
        corpus_chunk_size=9, accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], mrr_at_k=[10], ndcg_at_k=[10],
        map_at_k=[10], score_functions={"cosine": cos_sim}, write_csv=False)
    theirs = evaluator.compute_all_metrics(model=None)["cosine"]
    expected = {"recall@1": theirs["recall@k"][1], "recall@10": theirs["recall@k"][10],
                "mrr@10": theirs["mrr@k"][10], "ndcg@10": theirs["ndcg@k"][10]}
    assert 0.05 < expected["recall@10"] < 0.95 and 0.05 < expected["mrr@10"] < 0.95  # a case that discriminates
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_metrics_equal_mteb_retrieval_scores(tmp_path):
    """MTEB scores retrieval with pytrec_eval (recall, nDCG) and its own MRR; same vectors, no ties."""
    from mteb._evaluators.retrieval_metrics import calculate_retrieval_scores

    from embedtune.search import l2_normalize

    pairs, corpus, vec = write_case(tmp_path, seed=1)
    data = load_retrieval_data(pairs, corpus)
    ours = evaluate_retrieval(None, data, encode=lookup(vec), backend="numpy").metrics
    passages = list(data.corpus())
    scores = l2_normalize(lookup(vec)(data.queries)) @ l2_normalize(lookup(vec)(passages)).T  # (Q, C)
    results = {f"q{i}": {f"d{j}": float(s) for j, s in enumerate(row)} for i, row in enumerate(scores)}
    qrels = {f"q{i}": {f"d{j}": 1 for j in rel} for i, rel in enumerate(data.relevant)}
    theirs = calculate_retrieval_scores(results, qrels, [1, 10])
    per_query = theirs.all_scores.values()
    assert ours["recall@1"] == pytest.approx(np.mean([s["recall_1"] for s in per_query]), abs=1e-6)
    assert ours["recall@10"] == pytest.approx(np.mean([s["recall_10"] for s in per_query]), abs=1e-6)
    assert ours["ndcg@10"] == pytest.approx(np.mean([s["ndcg_cut_10"] for s in per_query]), abs=1e-6)
    assert ours["mrr@10"] == pytest.approx(theirs.mrr["MRR@10"], abs=1e-6)


def test_metrics_by_hand():
    ids = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    got = retrieval_metrics(ids, [{1, 9}, {0}, {6}], recall_at=(1, 3), mrr_at=(3,), ndcg_at=(3,))
    assert got["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert got["recall@3"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    ndcg0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert got["ndcg@3"] == pytest.approx((ndcg0 + 1 + 0) / 3)


def test_search_backends_and_chunks_give_the_same_metrics(tmp_path):
    pairs, corpus, vec = write_case(tmp_path, seed=2)
    data = load_retrieval_data(pairs, corpus)
    runs = [evaluate_retrieval(None, data, encode=lookup(vec), chunk_size=c, backend=b)
            for b, c in [("numpy", 1000), ("numpy", 5), ("faiss", 1000), ("faiss", 13)]]
    assert {r.search for r in runs} == {"numpy", "faiss"}
    for r in runs[1:]:
        assert r.metrics == pytest.approx(runs[0].metrics, abs=1e-12)


@pytest.mark.parametrize("name,content,message", [
    ("p.tsv", "query\tpositive\na\tb\nc\t\n", "p.tsv:3: field 'positive': empty"),
    ("p.tsv", "query\tnegative\na\tb\n", "p.tsv:1: field 'sent1': no column for the positive"),
    ("c.txt", "x\n\ny\n", "c.txt:2: empty line; expected one passage per line"),
    ("c.jsonl", '{"text": "x"}\n{"txt": "y"}\n', "c.jsonl:2: field 'text': missing"),
    ("c.txt", b"x\nab\xffc\n", "c.txt:2: invalid UTF-8"),
])
def test_bad_files_name_file_line_and_field(tmp_path, name, content, message):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("query\tpositive\na\tb\n")
    bad = tmp_path / name
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        load_retrieval_data(pairs, None if name == "p.tsv" else bad)


def _sentence(rng) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(3, 7))))


def test_cli_retrieval_writes_retrieval_json_and_sts_only_when_asked(tmp_path, tiny_llama, tiny_sts_dir, capsys):
    rng = np.random.default_rng(0)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,pos\n" + "".join(f"{_sentence(rng)},{_sentence(rng)}\n" for _ in range(12)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(_sentence(rng) + "\n" for _ in range(30)))
    out = tmp_path / "only"
    assert main(["eval", "--model", str(tiny_llama), "--retrieval", str(pairs), "--corpus", str(corpus),
                 "--out", str(out)]) == 0
    payload = json.loads((out / "retrieval.json").read_text())
    assert payload["queries"] == 12 and payload["corpus"] >= 30
    assert set(payload["metrics"]) == {"recall@1", "recall@10", "mrr@10", "ndcg@10"}
    assert all(0.0 <= v <= 1.0 for v in payload["metrics"].values())
    assert payload["meta"]["model"] == str(tiny_llama) and not (out / "results.json").exists()
    assert "| recall@10 |" in capsys.readouterr().out
    both = tmp_path / "both"
    assert main(["eval", "--model", str(tiny_llama), "--retrieval", str(pairs), "--tasks", "STS17",
                 "--data-dir", str(tiny_sts_dir), "--out", str(both)]) == 0
    assert (both / "retrieval.json").is_file() and json.loads((both / "results.json").read_text())["task_order"] == [
        "STS17"]


def test_cli_retrieval_bad_input_exits_2_before_the_model_loads(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("query\tpositive\na b\tc d\ne f\t \n")
    out = tmp_path / "out"
    # A model that does not exist: the data error must come first.
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--retrieval", str(pairs), "--out", str(out)]) == 2
    assert f"{pairs}:3: field 'positive': whitespace-only" in capsys.readouterr().err
    assert not out.exists()
    assert main(["eval", "--corpus", str(pairs), "--out", str(out)]) == 2
    assert "--corpus is the corpus of --retrieval" in capsys.readouterr().err
