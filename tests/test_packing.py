"""Packed inference (embedtune.models.packing): a packed pass gives the padded vectors, and the probe
turns packing off for a model that lets rows see each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_tokenizer

from embedtune.models.embedder import Embedder
from embedtune.models.packing import PackedEncoder

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park near the red house",
         "cat", "a woman is eating food", "the quick brown fox jumps over the lazy dog"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean", "weighted_mean"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_pass_gives_the_padded_embeddings(tiny_models, family, pooling, attn):
    from embedtune.models.loading import load_backbone, resolve_source

    backbone = load_backbone(resolve_source(str(tiny_models[family])), dtype="float32", device="cpu",
                             attn_implementation=attn)
    emb = Embedder(backbone, make_tokenizer(), pooling=pooling)
    packer = PackedEncoder(emb)
    assert packer.supported  # every family here builds its mask with transformers' packing-aware helper
    eos = emb.text_tokenizer.eos_id
    rows = emb.text_tokenizer.ids(TEXTS) + [[eos]]  # a one-token row (EOS alone) packs too
    packed = packer.encode(rows, normalize=False)
    np.testing.assert_allclose(packed, emb.encode_ids(rows, normalize=False), atol=1e-5)
    # a pack of one-token rows only: every position is 0
    singles = [[eos], [rows[0][0]], [eos]]
    np.testing.assert_allclose(packer.encode(singles, normalize=False),
                               emb.encode_ids(singles, normalize=False), atol=1e-5)


class _Leaky(torch.nn.Module):
    """A backbone wrapper standing in for custom model code that mishandles packed sequences."""

    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.config, self.how = inner, inner.config, how

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        if attention_mask is None:  # the packed call
            if self.how == "no-positions":  # builds a plain causal mask: rows see each other
                position_ids = None
            else:  # keeps the restarts but passes an all-ones mask, which turns packing detection off
                attention_mask = torch.ones_like(input_ids)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


@pytest.mark.parametrize("how", ["no-positions", "ones-mask"])
def test_packing_probe_rejects_a_model_that_leaks_across_rows(tiny_llama, how):
    from embedtune.batching import MicroBatcher

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
    emb.backbone = _Leaky(emb.backbone, how)
    packer = PackedEncoder(emb)
    assert not packer.supported
    with pytest.raises(ValueError, match="packing was asked for"):
        MicroBatcher(emb, packing=True)
    with pytest.raises(ValueError, match="packed sequences"):
        packer.encode(emb.text_tokenizer.ids(TEXTS))
    batcher = MicroBatcher(emb)  # auto: falls back to padded passes, same vectors as encode
    assert batcher.packing is False
    rows = emb.text_tokenizer.ids(TEXTS)
    np.testing.assert_allclose(batcher.embed_batch(rows), emb.encode_ids(rows), atol=1e-6)


def test_attention_tokens_follows_the_model_width(tiny_llama, default_embedder):
    small = PackedEncoder(Embedder.from_pretrained(str(tiny_llama), device="cpu")).attention_tokens
    default = PackedEncoder(default_embedder).attention_tokens
    # SmolLM2-135M: 106M non-embedding parameters over 30 layers, 9 heads x 64 -> about 3,073
    assert 2900 < default < 3300
    assert small < default
