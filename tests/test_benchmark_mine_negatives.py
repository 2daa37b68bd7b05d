"""benchmarks/mine_negatives.py: the sample that times embedding alone when --baseline-fraction is below 1."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mine_negatives  # noqa: E402

TEXTS = [f"text {i}" for i in range(1000)]


def test_the_whole_fraction_is_every_text_in_order():
    assert mine_negatives.baseline_sample(TEXTS, 1.0) == TEXTS


def test_a_fraction_is_a_seeded_sample_of_distinct_texts_of_that_size():
    sample = mine_negatives.baseline_sample(TEXTS, 0.1)
    assert len(sample) == 100 and len(set(sample)) == 100 and set(sample) <= set(TEXTS)
    assert sample == mine_negatives.baseline_sample(TEXTS, 0.1)  # the same draw on every run
    assert sample != mine_negatives.baseline_sample(TEXTS, 0.1, seed=1)
    assert sample != TEXTS[:100]  # random, not the file's first rows
    assert len(mine_negatives.baseline_sample(TEXTS[:3], 0.01)) == 1  # never an empty sample


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match="--baseline-fraction must be in"):
        mine_negatives.baseline_sample(TEXTS, fraction)
