"""Collation: prompt + text + EOS id, dynamic padding, length-grouped batches."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from conftest import make_tokenizer

from embedtune.data.collate import TextTokenizer, batches_by_length, length_grouped_order

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park with a big red car", "cat"]


@pytest.fixture(params=[False, True], ids=["plain", "eos_in_template"])
def text_tokenizer(request) -> TextTokenizer:
    return TextTokenizer.from_tokenizer(make_tokenizer(eos_in_template=request.param), max_length=64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_eos_is_the_last_real_token_under_dynamic_padding(text_tokenizer, side):
    text_tokenizer.padding_side = side
    batch = text_tokenizer(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, L)
    lengths = [len(t.split()) + 2 for t in TEXTS]  # <s> + words + EOS
    assert ids.shape == (4, max(lengths))  # padded to this batch's longest row, not a fixed width
    assert mask.sum(1).tolist() == lengths
    eos = text_tokenizer.eos_id
    for i in range(len(TEXTS)):
        real = ids[i][mask[i].bool()]
        assert real[-1].item() == eos and (real == eos).sum().item() == 1  # exactly one EOS, at the end
        if side == "right":
            assert ids[i, lengths[i] - 1].item() == eos
        else:
            assert ids[i, -1].item() == eos and mask[i, : ids.shape[1] - lengths[i]].sum() == 0


def test_truncation_keeps_the_eos(text_tokenizer):
    rows = text_tokenizer.ids([TEXTS[2]], max_length=5)
    assert len(rows[0]) == 5 and rows[0][-1] == text_tokenizer.eos_id
    assert text_tokenizer(TEXTS, max_length=4)["input_ids"].shape == (4, 4)


def test_prompt_is_applied_before_the_eos():
    tt = TextTokenizer.from_tokenizer(make_tokenizer(), prompt="this sentence {} means in one word")
    (row,) = tt.ids(["dog"])
    vocab = tt.tokenizer.get_vocab()
    words = "this sentence dog means in one word".split()
    assert row == [vocab["<s>"], *(vocab[w] for w in words), tt.eos_id]


def test_length_grouped_order_is_seeded_and_groups_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    order = length_grouped_order(lengths, batch_size=16, seed=7)
    assert sorted(order) == list(range(1000))  # a permutation: nothing dropped or repeated
    assert order == length_grouped_order(lengths, batch_size=16, seed=7)  # reproducible
    assert order != length_grouped_order(lengths, batch_size=16, seed=8)

    def mean_spread(perm: list[int]) -> float:
        return statistics.fmean(max(lengths[i] for i in perm[s : s + 16]) - min(lengths[i] for i in perm[s : s + 16])
                                for s in range(0, len(perm), 16))

    shuffled = list(range(1000))
    random.Random(7).shuffle(shuffled)
    assert mean_spread(order) < mean_spread(shuffled) / 5  # far less padding than a random order
    # Batches are still shuffled: the batch order is not sorted by length.
    firsts = [lengths[order[s]] for s in range(0, 1000, 16)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_batches_by_length_start_with_the_longest():
    lengths = [3, 9, 1, 7, 5]
    batches = list(batches_by_length(lengths, 2))
    assert batches == [[1, 3], [4, 0], [2]]
    assert isinstance(torch.tensor(batches[0]), torch.Tensor)


@pytest.mark.parametrize("n", [1000, 1001, 15, 0])
def test_length_grouped_batches_stay_aligned_when_the_last_batch_is_short(n):
    lengths = list(range(n))
    order = length_grouped_order(lengths, batch_size=16, seed=3, bucket_batches=4)
    assert sorted(order) == list(range(n))
    full = n - n % 16
    # Each full slice is exactly one batch, cut from a length-sorted bucket, so it is sorted; a slice that
    # straddled two batches would (almost surely) not be.
    for s in range(0, full, 16):
        chunk = [lengths[i] for i in order[s : s + 16]]
        assert chunk == sorted(chunk)
