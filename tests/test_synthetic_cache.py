"""``data.synthetic`` in a recipe: the pairs are generated once into the cache, named by every setting that
decides them, reused by later runs, waited for by the other processes of a distributed run, and read
beside the recipe's files."""

from __future__ import annotations

import csv
import gzip
import threading

import pytest

from embedtune.config import SyntheticConfig, load_config
from embedtune.data.synthetic import PARAPHRASE
from embedtune.training import synthetic_cache
from embedtune.training.run_files import prepare_examples


class Counting:
    """A generator stand-in: distinct scientific sentences, and a reworded copy for each paraphrase prompt."""

    def __init__(self):
        self.calls = 0

    def __call__(self, instructions, temperature):
        self.calls += 1
        head = PARAPHRASE.split("{sentence}")[0]
        out = []
        for i, text in enumerate(instructions):
            if text.startswith(head):
                out.append("In other words, " + text[len(head):].lower())
            else:
                out.append(f"The enzyme variant {self.calls}-{i} binds its substrate inside the nucleus.")
        return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "config.json").write_text("{}")  # a checkpoint folder, by name only: nothing loads it
    return generator


def test_the_cache_name_changes_with_every_setting_that_decides_the_pairs(cache, monkeypatch):
    base = SyntheticConfig(pairs=10, generator=str(cache))
    path = synthetic_cache.cache_path(base)
    assert path == synthetic_cache.cache_path(SyntheticConfig(pairs=10, generator=str(cache)))
    assert path.name.startswith("science-10-seed0-") and path.name.endswith(".csv.gz")
    other = cache.parent / "other-generator"
    other.mkdir()
    (other / "config.json").write_text("{}")
    variants = [SyntheticConfig(pairs=11, generator=str(cache)), SyntheticConfig(pairs=10, generator=str(other)),
                SyntheticConfig(pairs=10, generator=str(cache), topics="geology; ecology"),
                SyntheticConfig(pairs=10, generator=str(cache), seed=1),
                SyntheticConfig(pairs=10, generator=str(cache), batch_size=64)]
    names = {synthetic_cache.cache_path(v).name for v in variants}
    assert len(names) == len(variants) and path.name not in names
    monkeypatch.setattr(synthetic_cache, "SYNTHESIS_VERSION", 999)
    assert synthetic_cache.cache_path(base) != path


def test_a_run_writes_the_pairs_once_and_later_runs_reuse_them(cache, tmp_path, monkeypatch):
    triplets = tmp_path / "triplets.csv"
    with open(triplets, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        w.writerows([(f"anchor {i}", f"positive {i}", f"negative {i}") for i in range(6)])
    cfg = load_config(None, [f"data.train_files=[{triplets}]", "data.decontaminate=false",
                             "data.synthetic.pairs=5", f"data.synthetic.generator={cache}",
                             "data.synthetic.batch_size=4"])
    made = []
    monkeypatch.setattr(synthetic_cache, "load_generator", lambda *a, **k: made.append(Counting()) or made[-1])

    examples, report = prepare_examples(cfg, None, tmp_path / "run1", device="cpu", show_progress=False)
    assert len(made) == 1
    pairs = [e for e in examples if e.negative is None]
    assert len(examples) == 11 and len(pairs) == 5
    assert all(p.positive.startswith("In other words, the enzyme variant") for p in pairs)
    record = report["synthetic"]
    assert record["generated_this_call"] and record["report"]["pairs"] == 5
    path = synthetic_cache.cache_path(cfg.data.synthetic)
    assert record["file"] == str(path) and path.is_file()
    assert report["files"][-1]["file"] == str(path)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 6  # header and the five pairs

    again, report2 = prepare_examples(cfg, None, tmp_path / "run2", device="cpu", show_progress=False)
    assert len(made) == 1  # no generator loaded the second time
    assert not report2["synthetic"]["generated_this_call"] and report2["synthetic"]["seconds"] == 0
    assert [(e.anchor, e.positive) for e in again] == [(e.anchor, e.positive) for e in examples]


def test_generating_the_pairs_leaves_the_run_s_random_state_alone(cache, monkeypatch):
    """A run that generates the pairs must draw its LoRA init and dropout exactly as a run that finds them
    cached: the generation is seeded with its own seed, so it must not reseed the run's generator."""
    import torch

    monkeypatch.setattr(synthetic_cache, "load_generator", lambda *a, **k: Counting())
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    synthetic_cache.synthetic_file(SyntheticConfig(pairs=3, generator=str(cache), seed=0), show_progress=False)
    assert torch.equal(torch.rand(4), expected)


def test_a_process_other_than_the_main_one_waits_for_the_file(cache, monkeypatch):
    sc = SyntheticConfig(pairs=3, generator=str(cache))
    path = synthetic_cache.cache_path(sc)
    monkeypatch.setattr(synthetic_cache.dist, "is_main", lambda: False)
    monkeypatch.setattr(synthetic_cache, "load_generator", lambda *a, **k: pytest.fail("only rank 0 generates"))

    def rank0():
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        path.with_name(path.name + ".report.json").write_text('{"pairs": 3}')

    timer = threading.Timer(0.2, rank0)
    timer.start()
    found, record = synthetic_cache.synthetic_file(sc, poll_s=0.02)
    timer.join()
    assert found == path and record["report"] == {"pairs": 3} and not record["generated_this_call"]


def test_zero_pairs_is_refused_by_the_generator_call(cache):
    with pytest.raises(ValueError, match="data.synthetic.pairs must be positive"):
        synthetic_cache.synthetic_file(SyntheticConfig(pairs=0, generator=str(cache)))
