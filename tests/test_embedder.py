from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_tiny_model, make_tokenizer

from embedtune.data.collate import TextTokenizer
from embedtune.models.embedder import Embedder
from embedtune.models.packing import PackedEncoder

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park near the red house",
         "cat", "a woman is eating food", "the quick brown fox jumps over the lazy dog"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean", "weighted_mean"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_and_right_padding_give_identical_embeddings(tiny_models, family, pooling, attn):
    from transformers import AutoModel

    # The test tokenizer is passed in directly: AutoTokenizer would swap it for the family's own class
    # (Qwen2Tokenizer rebuilds it from BPE merges it does not have, and every word became one id).
    backbone = AutoModel.from_pretrained(str(tiny_models[family]), attn_implementation=attn).eval()
    right = Embedder(backbone, make_tokenizer(), pooling=pooling)
    left = Embedder(backbone, make_tokenizer(), pooling=pooling, padding_side="left")
    rows = right.text_tokenizer.ids(TEXTS)
    assert len({i for r in rows for i in r}) > 20  # real words, not a degenerate tokenization
    a = right.encode(TEXTS, batch_size=len(TEXTS), normalize=False)
    b = left.encode(TEXTS, batch_size=len(TEXTS), normalize=False)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("eos_in_template", [False, True])
def test_eos_is_last_real_token_exactly_once(eos_in_template):
    tok = make_tokenizer(eos_in_template=eos_in_template)
    assert tok.pad_token is None
    for side in ("right", "left"):
        tt = TextTokenizer.from_tokenizer(tok, max_length=5, padding_side=side)
        batch = tt(["a man plays guitar in the park near the house", "dog", "the cat sits"])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape[1] == 5  # dynamic padding: the longest row, capped by max_length
        for row, m in zip(ids, mask):
            real = row[m.bool()].tolist()
            assert real[-1] == tok.eos_token_id
            assert real.count(tok.eos_token_id) == 1
            assert len(real) <= 5
        # the truncated row keeps BOS and ends in EOS
        assert ids[0][mask[0].bool()].tolist()[0] == tok.bos_token_id


def test_missing_pad_token_uses_eos_without_growing_vocab(tmp_path):
    folder = make_tiny_model("llama", tmp_path / "m")
    emb = Embedder.from_pretrained(str(folder), device="cpu")
    assert emb.tokenizer.pad_token == emb.tokenizer.eos_token
    assert len(emb.tokenizer) == len(make_tokenizer())
    assert emb.backbone.get_input_embeddings().weight.shape[0] == 64


def test_prompt_is_applied_before_eos(tiny_llama):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt="this sentence {} means one word")
    ids = emb.text_tokenizer.ids(["dog"])[0]
    words = emb.tokenizer.convert_ids_to_tokens(ids)
    assert words == ["<s>", "this", "sentence", "dog", "means", "one", "word", "</s>"]


def test_batched_equals_one_by_one_and_keeps_order(tiny_llama):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
    batched = emb.encode(TEXTS, batch_size=4)
    single = np.stack([emb.encode([t], batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # order: each text's vector does not depend on its neighbours
    rev = emb.encode(TEXTS[::-1], batch_size=3)
    np.testing.assert_allclose(rev[::-1], batched, atol=1e-5)


def test_encode_bad_inputs(tiny_llama):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
    assert emb.encode([]).shape == (0, 32)
    with pytest.raises(ValueError, match="index 1 is a int"):
        emb.encode(["dog", 3])
    with pytest.raises(ValueError, match="index 2 is empty"):
        emb.encode(["dog", "cat", "   "])
    with pytest.raises(ValueError, match="not a single string"):
        emb.encode("dog")


def test_save_load_full_model_roundtrip(tiny_llama, tmp_path):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", pooling="weighted_mean", prompt="p3",
                                   max_length=16, normalize=False)
    before = emb.encode(TEXTS)
    emb.save(tmp_path / "saved")
    again = Embedder.load(tmp_path / "saved", device="cpu")
    assert (again.pooling, again.prompt, again.max_length, again.normalize) == ("weighted_mean", "{} is: ", 16, False)
    np.testing.assert_allclose(again.encode(TEXTS), before, atol=1e-6)


def test_save_load_adapter_roundtrip(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
    emb.backbone = get_peft_model(emb.backbone, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights="gaussian"))
    with torch.no_grad():  # make the adapter matter
        for n, p in emb.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = emb.encode(TEXTS)
    emb.save(tmp_path / "run")
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    again = Embedder.load(tmp_path / "run", device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS), before, atol=1e-6)
    base = Embedder.from_pretrained(str(tiny_llama), device="cpu").encode(TEXTS)
    assert np.abs(base - before).max() > 1e-3
    # a LoRA run packs like its base (the server packs fine-tuned models too)
    packer = PackedEncoder(again)
    assert packer.supported
    np.testing.assert_allclose(packer.encode(again.text_tokenizer.ids(TEXTS)), before, atol=1e-5)


def test_load_rejects_foreign_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="embedtune.json"):
        Embedder.load(tmp_path)


def test_missing_model_error_says_what_was_tried(tmp_path):
    from embedtune.models.loading import ModelNotFoundError, resolve_source

    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_source(str(tmp_path / "nope.gguf"))


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_and_sdpa_attention_give_the_same_embeddings(tiny_models, family):
    """``attn_implementation=auto`` picks eager on CPU for speed; it must not change the embeddings."""
    from embedtune.models.loading import load_backbone, resolve_source

    source = resolve_source(str(tiny_models[family]))
    out = {}
    for attn in ("eager", "sdpa"):
        backbone = load_backbone(source, dtype="float32", device="cpu", attn_implementation=attn)
        assert backbone.config._attn_implementation == attn
        out[attn] = Embedder(backbone, make_tokenizer()).encode(TEXTS, batch_size=4, normalize=False)
    np.testing.assert_allclose(out["eager"], out["sdpa"], atol=1e-5)


def test_attention_implementation_auto_and_unknown():
    from embedtune.models.loading import resolve_attn_implementation

    assert resolve_attn_implementation("auto", "cpu") == "eager"
    assert resolve_attn_implementation("auto", "cuda") is None  # transformers' own choice on GPUs
    assert resolve_attn_implementation("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="flash_attention_2"):
        resolve_attn_implementation("flash", "cpu")


def test_autocast_bf16_runs_in_bf16_and_stays_close(tiny_llama, tmp_path):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
    exact = emb.encode(TEXTS)
    emb.autocast = "bf16"
    fast = emb.encode(TEXTS)
    assert fast.dtype == np.float32
    assert np.abs(fast - exact).max() > 1e-6  # bf16 products really ran
    assert (fast * exact).sum(axis=1).min() > 0.98  # ... and the vectors barely move
    assert next(emb.backbone.parameters()).dtype == torch.float32  # weights untouched
    emb.save(tmp_path / "saved")
    assert "autocast" not in json.loads((tmp_path / "saved" / "embedtune.json").read_text())  # runtime choice
    assert Embedder.load(tmp_path / "saved", device="cpu", autocast="bf16").autocast == "bf16"
    emb.autocast = "none"
    np.testing.assert_allclose(emb.encode(TEXTS), exact, atol=1e-6)


def test_autocast_rejects_bad_values(tiny_llama):
    with pytest.raises(ValueError, match="autocast must be bf16, fp16 or none, got 'int8'"):
        Embedder.from_pretrained(str(tiny_llama), device="cpu", autocast="int8")
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", autocast="fp16")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        emb.encode(["a dog"])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_num_layers_keeps_the_first_layers_and_their_output(tiny_models, family):
    """A backbone cut to N layers gives the full model's hidden state after layer N, through the final norm,
    and never loads the dropped layers' weights."""
    full = Embedder.from_pretrained(str(tiny_models[family]), device="cpu")
    cut = Embedder.from_pretrained(str(tiny_models[family]), device="cpu", num_layers=1)
    assert (full.num_layers, cut.num_layers) == (2, 1)
    assert not any(".1." in name for name, _ in cut.backbone.named_parameters())  # no dead weights
    batch = full.tokenize(TEXTS)
    with torch.no_grad():
        hidden = full.backbone(**batch, output_hidden_states=True).hidden_states[1]  # (B, L, D) after layer 1
        final_norm = full.backbone.ln_f if family == "gpt2" else full.backbone.norm
        expected = full._pool(final_norm(hidden), batch["attention_mask"])
        got = cut(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"model.num_layers=3: .* has 2 decoder layers; choose 1..2"):
        Embedder.from_pretrained(str(tiny_models[family]), device="cpu", num_layers=3)


def test_adapter_run_at_reduced_depth_reloads_at_that_depth(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", num_layers=1)
    emb.backbone = get_peft_model(emb.backbone, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights="gaussian"))
    with torch.no_grad():
        for n, p in emb.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = emb.encode(TEXTS)
    emb.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "embedtune.json").read_text())["num_layers"] == 1
    again = Embedder.load(tmp_path / "run", device="cpu")
    assert again.num_layers == 1
    np.testing.assert_allclose(again.encode(TEXTS), before, atol=1e-6)


PROMPT = "this sentence {} means one word"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_shared_prompt_prefix_runs_once_and_changes_no_embedding(tiny_models, family, attn):
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(tiny_models[family]), attn_implementation=attn).eval()
    emb = Embedder(backbone, make_tokenizer(), prompt=PROMPT).eval()
    batch = emb.tokenize(TEXTS)
    with torch.inference_mode():
        assert emb.shared_prefix_length(batch["input_ids"], batch["attention_mask"]) == 3  # <s> this sentence
    # the same words open every text: the shared prefix reaches into the texts
    same_start = ["the dog", "the dog plays in the park", "the dog is eating food"]
    for texts in (TEXTS, same_start):
        shared = emb.encode(texts, batch_size=len(texts), normalize=False)
        emb.share_prefix = False
        whole = emb.encode(texts, batch_size=len(texts), normalize=False)
        emb.share_prefix = True
        assert np.isfinite(shared).all()
        np.testing.assert_allclose(shared, whole, atol=1e-5)
    batch = emb.tokenize(same_start)
    with torch.inference_mode():  # the last row is "<s> this sentence the dog means one word </s>"
        assert emb.shared_prefix_length(batch["input_ids"], batch["attention_mask"]) == 5


def test_a_shared_prefix_with_an_adapter_gives_the_adapters_embeddings(tiny_llama, tmp_path):
    from conftest import make_lora_run

    make_lora_run(tiny_llama, tmp_path / "run", seed=0, prompt=PROMPT)
    emb = Embedder.load(tmp_path / "run", device="cpu")
    assert emb.has_adapter() and emb.prompt == PROMPT
    shared = emb.encode(TEXTS, batch_size=4)
    emb.share_prefix = False
    np.testing.assert_allclose(shared, emb.encode(TEXTS, batch_size=4), atol=1e-5)


def test_the_prefix_is_not_shared_where_it_would_change_the_result(tiny_llama):
    def length(emb, texts, grad=False, train=False):
        batch = emb.tokenize(texts)
        emb.train(train)
        with torch.set_grad_enabled(grad):
            return emb.shared_prefix_length(batch["input_ids"], batch["attention_mask"])

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt=PROMPT)
    assert length(emb, TEXTS) == 3
    assert length(emb, TEXTS, grad=True) == 0  # a graph: only where the trainer allows it
    assert length(emb, TEXTS, train=True) == 0  # train mode (GradCache's no-grad pass): likewise
    emb.share_prefix_with_grad = True
    assert length(emb, TEXTS, grad=True, train=True) == 3
    emb.share_prefix_with_grad = False
    assert length(emb, TEXTS[:1]) == 0  # one row: nothing to share
    emb.backbone.config._attn_implementation = "flash_attention_2"  # only eager and sdpa are checked here
    assert length(emb, TEXTS) == 0
    emb.backbone.config._attn_implementation = "eager"
    assert length(Embedder.from_pretrained(str(tiny_llama), device="cpu"), TEXTS) == 0  # only <s> in common
    mean = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt=PROMPT, pooling="mean")
    assert length(mean, TEXTS) == 0  # the prefix's states are part of a mean
    left = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt=PROMPT, padding_side="left")
    assert length(left, TEXTS) == 0  # rows of different lengths start with padding
    np.testing.assert_allclose(left.encode(TEXTS), emb.encode(TEXTS), atol=1e-5)


def test_the_prefix_cache_lives_for_one_encode_call_or_one_block(tiny_llama):
    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", prompt=PROMPT)
    seen = []
    real = emb._forward_after_prefix

    def spy(input_ids, attention_mask, p):
        seen.append(dict(emb._prefix_memo))  # the cache as this forward finds it
        return real(input_ids, attention_mask, p)

    emb._forward_after_prefix = spy
    texts = ["a man plays guitar", "the dog", "two children are playing", "cat"]  # no first word in common
    first = emb.encode(texts, batch_size=2)  # two batches: the prefix runs for the first only
    assert [len(m) for m in seen] == [0, 1] and emb._prefix_memo is None
    seen.clear()
    with emb.prefix_cache():
        emb.encode(texts[:2])
        cached = emb._prefix_memo
        again = emb.encode(texts, batch_size=2)
        assert emb._prefix_memo is cached  # kept across calls inside the block
    assert [len(m) for m in seen] == [0, 1, 1] and emb._prefix_memo is None
    np.testing.assert_allclose(again, first, atol=1e-6)
