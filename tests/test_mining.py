"""Hard-negative mining: the exclusion, range and margin rules on a hand-made case; equal to a brute-force
ranking of the full score matrix whatever the block size; the CLI writes a triplet file that training reads,
with its report, for an embedtune model, a run folder and a sentence-transformers peer; bad input exits 2
before any model loads and leaves no file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import WORDS

from embedtune.cli import main
from embedtune.data.decontaminate import normalize_sentence
from embedtune.data.mining import mine_file, mine_hard_negatives
from embedtune.data.triplets import Example, read_examples
from embedtune.search import l2_normalize


class Lookup:
    """An encoder that returns fixed vectors per text (the mining rules, not a model, are under test)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def pairs(*rows: tuple[str, str]) -> list[Example]:
    return [Example(a, p, None, "mem", i + 2) for i, (a, p) in enumerate(rows)]


def unit(angle_deg: float) -> list[float]:
    a = np.deg2rad(angle_deg)
    return [float(np.cos(a)), float(np.sin(a))]


def test_rules_exclusions_range_and_margin():
    # Anchor "q" at 0 degrees; its positive "p" at 30 (score cos 30 = 0.866). Candidates, closest first:
    # "Q!" (a normalized duplicate of the anchor), "p2" (q's other positive), "c10" ... "c60".
    vectors = {"q": unit(0), "p": unit(30), "Q!": unit(1), "p2": unit(2), "r": unit(90), "rp": unit(95)}
    for deg in (10, 20, 40, 50, 60):
        vectors[f"c{deg}"] = unit(deg)
    examples = pairs(("q", "p"), ("q", "p2"), ("r", "rp"), ("x", "Q!"),
                     *[(f"a{d}", f"c{d}") for d in (10, 20, 40, 50, 60)])
    for d in (10, 20, 40, 50, 60):
        vectors[f"a{d}"] = unit(d + 180)
    vectors["x"] = unit(-90)
    got, report = mine_hard_negatives(examples, Lookup(vectors), ranks=(0, 3), margin=0.05, backend="numpy")
    by_row = {(e.anchor, e.positive): e.negative for e in got}
    # For q / p: eligible ranks after excluding Q! and p2: c10 (0.985), c20 (0.940), c40 (0.766). c10 and c20
    # score above 0.866 - 0.05: rejected as likely positives; c40 is the negative.
    assert by_row[("q", "p")] == "c40"
    # For q / p2 (score 0.999): c10 scores above 0.949 (rejected), c20 does not.
    assert by_row[("q", "p2")] == "c20"
    assert report.excluded_own_positives == 2 + 1 + 1 + 5 and report.excluded_duplicates == 1
    assert report.rejected_as_likely_positive >= 2 and report.rows_with_rejections >= 1
    assert report.rows_written == len(got) == report.rows_in - report.rows_without_negative
    assert sum(report.histogram["negative"]) == report.rows_written
    assert sum(report.histogram["positive"]) == report.rows_in
    assert normalize_sentence("Q!") == normalize_sentence("q") and "Q!" not in {e.negative for e in got if
                                                                                e.anchor == "q"}
    # A window past the end of the candidates gives no negative: the row is dropped and counted.
    got, report = mine_hard_negatives(examples, Lookup(vectors), ranks=(30, 40), backend="numpy")
    assert got == [] and report.rows_without_negative == len(examples)


def brute_force(examples: list[Example], vectors: dict[str, np.ndarray], lo: int, hi: int, margin: float):
    """The rules applied to the full score matrix, one row at a time."""
    cands = list(dict.fromkeys(e.positive for e in examples))
    emb = l2_normalize(np.array([vectors[c] for c in cands]))
    out = []
    for e in examples:
        a = l2_normalize(np.array([vectors[e.anchor]]))[0]
        own = {x.positive for x in examples if x.anchor == e.anchor}
        keys = {normalize_sentence(t) for t in (e.anchor, *own)}
        scores = emb @ a
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        eligible = [i for i in order if cands[i] not in own and normalize_sentence(cands[i]) not in keys]
        sp = float(l2_normalize(np.array([vectors[e.positive]]))[0] @ a)
        ok = [i for i in eligible[lo:hi] if scores[i] <= sp - margin]
        if ok:
            out.append(Example(e.anchor, e.positive, cands[ok[0]], e.source, e.line))
    return out


@pytest.mark.parametrize("block_size", [1000, 7, 1])
def test_equals_brute_force_on_a_random_case(block_size):
    rng = np.random.default_rng(0)
    texts = list(dict.fromkeys(" ".join(rng.choice(WORDS, 4)) for _ in range(260)))
    anchors, positives = texts[:120], texts[120:240]
    vectors = {a: rng.normal(size=8) for a in anchors}
    vectors.update({p: vectors[a] + rng.normal(scale=0.6, size=8) for a, p in zip(anchors, positives)})
    rows = [*zip(anchors, positives), (anchors[0], positives[5])]  # anchor 0 has two positives
    dup = anchors[3].upper() + "!"  # a normalized duplicate of anchor 3, close to it, as another row's positive
    vectors[dup] = vectors[anchors[3]] + 0.01
    rows.append((anchors[7], dup))
    examples = pairs(*rows)
    expected = brute_force(examples, vectors, 4, 12, 0.05)
    got, report = mine_hard_negatives(examples, Lookup(vectors), ranks=(4, 12), margin=0.05, backend="numpy",
                                      block_size=block_size)
    assert got == expected and len(got) > 100
    assert report.excluded_duplicates == 1 and report.rejected_as_likely_positive > 0


def write_pairs(path, n: int = 30, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = {f"{' '.join(rng.choice(WORDS, 5))},{' '.join(rng.choice(WORDS, 4))}" for _ in range(n)}
    path.write_text("sent0,sent1\n" + "\n".join(sorted(lines)) + "\n")


def test_cli_writes_triplets_that_training_reads(tmp_path, tiny_llama, capsys):
    src = tmp_path / "pairs.csv"
    write_pairs(src)
    out = tmp_path / "mined.tsv.gz"
    assert main(["data", "mine-negatives", str(src), "--out", str(out), "--model", str(tiny_llama),
                 "--range", "1:5", "--margin", "0.0", "--search", "numpy",
                 "--max-dropped", "1"]) == 0  # a random tiny model leaves most rows without a negative
    assert "mined" in capsys.readouterr().out
    examples, load = read_examples(out)
    assert load.has_negatives and load.columns == {"anchor": "sent0", "positive": "sent1", "negative": "hard_neg"}
    assert all(e.negative not in (e.anchor, e.positive) for e in examples)
    report = json.loads((tmp_path / "mined.tsv.gz.report.json").read_text())
    assert report["rows_written"] == len(examples) and report["range"] == [1, 5]
    assert report["model"] == str(tiny_llama) and report["inputs"][0]["rows"] == report["rows_in"]


def test_cli_accepts_a_run_folder_and_a_peer(tmp_path, tiny_llama):
    from test_peer import make_tiny_st_folder

    from embedtune.models.embedder import Embedder

    src = tmp_path / "pairs.jsonl"
    rng = np.random.default_rng(1)
    src.write_text("".join(json.dumps({"query": " ".join(rng.choice(WORDS, 5)), "pos": " ".join(rng.choice(WORDS, 3))})
                           + "\n" for _ in range(20)))
    run = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="p1").save(tmp_path / "run")
    peer = make_tiny_st_folder(tmp_path / "peer")
    for model in (run, peer):
        out = tmp_path / f"{model.name}.jsonl"
        # --margin=-1 turns the margin off: random tiny models score every pair alike.
        assert main(["data", "mine-negatives", str(src), "--out", str(out), "--model", str(model),
                     "--range", "0:4", "--margin=-1"]) == 0
        examples, load = read_examples(out)
        assert load.columns == {"anchor": "query", "positive": "pos", "negative": "neg"} and len(examples) > 0
        assert json.loads(out.with_name(out.name + ".report.json").read_text())["model"] == str(model)


class _Collapsed:
    """An encoder whose vectors all point nearly one way, as an untrained LM's EOS states do (every cosine > 0.99)."""

    def encode(self, texts, batch_size=64, show_progress=False):
        rng = np.random.default_rng(len(texts))
        return np.ones((len(texts), 8)) + 0.01 * rng.standard_normal((len(texts), 8))


def test_a_model_that_cannot_separate_the_rows_fails_and_writes_nothing(tmp_path):
    src = tmp_path / "pairs.csv"
    write_pairs(src)
    out = tmp_path / "mined.csv"
    message = r"(?s)of \d+ rows got no negative.*median score is (0\.99|1\.0).*all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match=message):
        mine_file([str(src)], out, _Collapsed, ranks=(1, 5), margin=0.05, backend="numpy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]
    # The same rows with the margin off: every row gets a negative, and the threshold is not in the way.
    _, _, report = mine_file([str(src)], out, _Collapsed, ranks=(1, 5), margin=-1.0, backend="numpy")
    assert report.rows_written == report.rows_in > 0 and report.positive_score_median > 0.99


@pytest.mark.parametrize("content,args,message", [
    ("sent0,sent1\na b,c d\ne f,\n", [], "pairs.csv:3: field 'sent1': empty; expected non-empty text"),
    ("sent0,sent1\na b,c d\n", ["--range", "50:10"], "expected 0 <= MIN < MAX"),
    ("sent0,sent1\na b,c d\n", ["--max-dropped", "1.5"], "--max-dropped 1.5: expected a fraction of the rows"),
    ("sent0,sent1\na b,c d\n", ["--out-is-input"], "is one of the inputs"),
    ("sent0,sent1\na b,c d\n", ["--out", "x.parquet"], "output must end in .csv, .tsv or .jsonl"),
])
def test_cli_bad_input_exits_2_before_the_model_and_writes_nothing(tmp_path, capsys, content, args, message):
    src = tmp_path / "pairs.csv"
    src.write_text(content)
    out = tmp_path / "mined.csv"
    if args == ["--out-is-input"]:
        out, args = src, []
    elif args[:1] == ["--out"]:
        out, args = tmp_path / args[1], []
    # A model that does not exist: the input error must come first.
    code = main(["data", "mine-negatives", str(src), "--out", str(out), "--model", str(tmp_path / "no-model"),
                 *args])
    assert code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]
