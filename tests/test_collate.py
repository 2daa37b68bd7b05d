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


@pytest.mark.parametrize("eos_in_template", [False, True])
def test_truncation_cuts_the_text_and_keeps_the_prompt_suffix(eos_in_template):
    tt = TextTokenizer.from_tokenizer(make_tokenizer(eos_in_template=eos_in_template),
                                      prompt="this sentence {} means in one word", max_length=12)
    vocab = tt.tokenizer.get_vocab()
    text = "two children are playing in the park with a big red car"
    (row,) = tt.ids([text])
    words = "this sentence two children are playing means in one word".split()  # 12 = <s> + 10 + EOS
    assert row == [vocab["<s>"], *(vocab[w] for w in words), tt.eos_id]
    assert tt.ids(["dog"])[0] == [vocab["<s>"], *(vocab[w] for w in "this sentence dog means in one word".split()),
                                  tt.eos_id]  # short texts untouched
    # Room for one text token between prefix and suffix: kept. No room: the end is cut, as without a prompt
    # (keeping the suffix then would give every long text the same ids).
    (one,) = tt.ids([text], max_length=9)
    assert one == [vocab["<s>"], *(vocab[w] for w in "this sentence two means in one word".split()), tt.eos_id]
    (tight,) = tt.ids([text], max_length=8)
    assert tight == [vocab["<s>"], *(vocab[w] for w in "this sentence two children are playing".split()),
                     tt.eos_id]


def test_truncation_keeps_special_tokens_the_tokenizer_appends():
    """A tokenizer that appends a special token other than the EOS id embedtune uses: kept, after the suffix."""
    tok = make_tokenizer(eos_in_template=True)  # appends </s>
    vocab = tok.get_vocab()
    tt = TextTokenizer(tokenizer=tok, eos_id=vocab["<unk>"], pad_id=vocab["<unk>"],
                       prompt="this sentence {} means in one word", max_length=12)
    (row,) = tt.ids(["two children are playing in the park with a big red car"])
    words = "this sentence two children are means in one word".split()
    assert row == [vocab["<s>"], *(vocab[w] for w in words), vocab["</s>"], tt.eos_id]


@pytest.mark.parametrize("prompt", ["{} ", "{}  ", "this {}\t"])
def test_a_whitespace_suffix_is_cut_like_no_suffix(prompt):
    tt = TextTokenizer.from_tokenizer(make_tokenizer(), prompt=prompt, max_length=5)
    assert tt.suffix == ""
    plain = TextTokenizer.from_tokenizer(make_tokenizer(), max_length=5)
    assert tt.ids([TEXTS[2]]) == plain.ids([prompt.format(TEXTS[2])])


def test_p1_truncation_with_the_real_byte_level_tokenizer(default_embedder):
    """SmolLM2's byte-level BPE: the suffix survives the cut, and the text's closing quote with it."""
    import dataclasses

    base = default_embedder.text_tokenizer
    tt = dataclasses.replace(base, prompt='This sentence: "{}" means in one word: ', max_length=24)
    text = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."
    full = dataclasses.replace(tt, max_length=10_000).ids([text])[0]
    (row,) = tt.ids([text])
    assert len(full) > 24 and len(row) == 24 and row[-1] == tt.eos_id
    decoded = base.tokenizer.decode(row[:-1])
    assert decoded.startswith('This sentence: "The quick brown fox') and decoded.endswith('" means in one word: ')
    assert row[:10] == full[:10] and row[-8:] == full[-8:]  # head and tail are the untruncated row's tokens


@pytest.mark.parametrize("prompt", [None, "{}", "this {}"])
def test_truncation_without_a_suffix_cuts_the_end(prompt):
    tt = TextTokenizer.from_tokenizer(make_tokenizer(), prompt=prompt, max_length=5)
    vocab = tt.tokenizer.get_vocab()
    assert tt.suffix == ""
    words = ((prompt or "{}").format(TEXTS[2])).split()[:3]
    assert tt.ids([TEXTS[2]]) == [[vocab["<s>"], *(vocab[w] for w in words), tt.eos_id]]


def test_suffix_kept_with_a_tokenizer_that_gives_no_offsets(monkeypatch):
    """Slow tokenizers give no character offsets: the suffix's own token count is used instead."""
    tt = TextTokenizer.from_tokenizer(make_tokenizer(), prompt="this sentence {} means in one word", max_length=10)
    real = tt.tokenizer.__class__.__call__

    def no_offsets(self, *args, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tt.tokenizer.__class__, "__call__", no_offsets)
    vocab = tt.tokenizer.get_vocab()
    (row,) = tt.ids([TEXTS[2]])
    assert row == [vocab["<s>"], *(vocab[w] for w in "this sentence two children means in one word".split()),
                   tt.eos_id]
    (tight,) = tt.ids([TEXTS[2]], max_length=8)  # <s> + prefix 2 + suffix 4 leave no text token: end cut
    assert tight == [vocab["<s>"], *(vocab[w] for w in "this sentence two children are playing".split()), tt.eos_id]


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
