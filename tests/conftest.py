"""Offline fixtures: tiny causal LMs built from config and a small word-level tokenizer.

``make_tiny_model(family, folder)`` writes a transformers checkpoint (model + tokenizer) that
``Embedder.from_pretrained(folder)`` loads like any hub model, so tests exercise the real loading path.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = (
    "a the man woman dog cat is are was plays playing sits sitting on in at park street guitar piano "
    "runs running eats food house car red blue big small happy sad child children two three near with "
    "and of to sentence this means word one quick brown fox jumps over lazy"
).split()
FAMILIES = ["llama", "phi", "gemma", "qwen2", "gpt2"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tokenizer(eos_in_template: bool = False, with_pad: bool = False):
    """A word-level tokenizer over WORDS. ``eos_in_template``: it appends </s> itself (like tokenizers
    whose add_eos_token works); ``with_pad``: it has a pad token (else embedtune must supply one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + (["<pad>"] if with_pad else [])
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos_in_template:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    kwargs = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **kwargs)


def tiny_config(family: str, vocab_size: int = 64):
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, **common)
    if family == "phi":
        return tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            **common)
    if family == "gemma":
        return tf.GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=8, **common)
    if family == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    raise ValueError(family)


def make_tiny_model(family: str, folder: Path, eos_in_template: bool = False, with_pad: bool = False,
                    seed: int = 0) -> Path:
    """Write a tiny causal LM checkpoint (random weights, fixed seed) plus tokenizer to ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    make_tokenizer(eos_in_template, with_pad).save_pretrained(folder)
    return folder


def make_lora_run(base: Path, folder: Path, *, targets=("q_proj", "v_proj"), b_std: float = 0.5,
                  seed: int | None = None, **options):
    """A run folder as training writes it: ``base`` + a rank-4 LoRA adapter on ``targets`` whose B factors are
    drawn from N(0, b_std) (so the adapter changes the embeddings); returns the Embedder."""
    from peft import LoraConfig, get_peft_model

    from embedtune.models.embedder import Embedder

    if seed is not None:
        torch.manual_seed(seed)
    emb = Embedder.from_pretrained(str(base), device="cpu", **options)
    emb.backbone = get_peft_model(emb.backbone, LoraConfig(r=4, target_modules=list(targets),
                                                           init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in emb.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    emb.save(folder)
    return emb


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny checkpoint per family."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("EMBEDTUNE_DATA") or SHARED_DATA)
    if not path.is_dir():
        pytest.fail(f"shared data folder {path} is missing (tests need ../shared/data or $EMBEDTUNE_DATA)")
    return path


@pytest.fixture(scope="session")
def default_embedder():
    """The real packaged default model (SmolLM2-135M-Instruct), loaded once per session."""
    from embedtune.models.embedder import Embedder

    return Embedder.from_pretrained("default", device="cpu")


@pytest.fixture(scope="session")
def tiny_sts_dir(tmp_path_factory):
    """``<dir>/sts/<Name>/test.tsv`` for two benchmarks, 40 pairs each of words the tiny tokenizer knows."""
    root = tmp_path_factory.mktemp("stsdata")
    rng = np.random.default_rng(3)
    for name in ("STS17", "STSBenchmark"):
        folder = root / "sts" / name
        folder.mkdir(parents=True)
        with open(folder / "test.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["sentence1", "sentence2", "score"])
            for _ in range(40):
                w.writerow([" ".join(rng.choice(WORDS, 5)), " ".join(rng.choice(WORDS, 4)), f"{rng.uniform(0, 5):.2f}"])
    return root
