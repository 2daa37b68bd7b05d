"""Models and texts for benchmarks/gpu_check.py, and its part (c): the paper's three model shapes.

The paper's models (MiniCPM-2B, Phi-2, Gemma-2B) are built from config with random weights at their
published shapes, since their weights cannot be fetched here; a random model costs what the trained one
costs. Each gets LoRA r=8 on q,v and runs, in bf16 with sdpa attention at max length 150:

  embedtune plain      one step of 60 triplets: EOS id appended, dynamic padding in length-sorted chunks,
                       transformer body only;
  paper protocol       the same LoRA model and loss the way the paper's code runs it: every row padded to
                       150 tokens, a full causal-LM forward with output_hidden_states=True (vocabulary
                       logits computed), the last position pooled;
  embedtune GradCache  one step of 512 triplets in chunks of about 60 triplets' tokens;
  paper protocol, 512  the paper's way at 512 triplets (it has no GradCache), to see whether it fits.

``--tiny`` builds tiny models of the same three families instead (a code check on CPU; it measures nothing).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The published configs (config.json of openbmb/MiniCPM-2B-*, microsoft/phi-2, google/gemma-2b): family and
# the fields that set the cost of a step. MiniCPM's own model code is hub code (trust_remote_code); its
# layers are Llama's with muP scalings (scale_emb 12, scale_depth 1.4, dim_model_base 256), which multiply
# activations elementwise and change no matrix product, so Llama layers at its shapes stand in for it.
PAPER_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "MiniCPM-2B": ("llama", {"hidden_size": 2304, "intermediate_size": 5760, "num_hidden_layers": 40,
                             "num_attention_heads": 36, "num_key_value_heads": 36, "vocab_size": 122753,
                             "rms_norm_eps": 1e-5, "tie_word_embeddings": True}),
    "Phi-2": ("phi", {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
                      "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200,
                      "partial_rotary_factor": 0.4, "resid_pdrop": 0.1, "tie_word_embeddings": False}),
    "Gemma-2B": ("gemma", {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                           "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                           "vocab_size": 256000, "tie_word_embeddings": True}),
}

TINY_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "MiniCPM-2B": ("llama", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True}),
    "Phi-2": ("phi", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 4, "partial_rotary_factor": 0.5, "resid_pdrop": 0.1}),
    "Gemma-2B": ("gemma", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16}),
}

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


# ---- texts and tokenizers ------------------------------------------------------------------------------
def read_triplets(data_dir: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` SNLI triplets of the data folder (anchor, positive, hard negative)."""
    from embedtune.data.triplets import read_examples

    rows, _ = read_examples(str(data_dir / "nli" / "snli_devtest_triplets.csv.gz"))
    if len(rows) < n:
        raise ValueError(f"the check needs {n} triplets; {data_dir} holds {len(rows)}")
    return [(e.anchor, e.positive, e.negative) for e in rows[:n]]


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over the words of ``texts`` (``</s>`` is EOS, ``<pad>`` pads): for models
    built from config, which need ids, not a trained vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().split()})
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def shapes_tokenizer(tokenizer_dir: str | None, texts: list[str], tiny: bool) -> tuple[Any, str]:
    """The tokenizer that turns the check's texts into ids, and how to name it in the report.

    A real tokenizer gives real sequence lengths: ``tokenizer_dir``, else the packaged default model's
    (SmolLM2, 49,152 ids, which fit every paper shape's vocabulary). Without either (or with ``tiny``), a
    word-level tokenizer over the texts: about one id per word, fewer than a subword tokenizer gives.
    """
    from transformers import AutoTokenizer

    if tokenizer_dir:
        return AutoTokenizer.from_pretrained(tokenizer_dir), f"tokenizer of {tokenizer_dir}"
    if not tiny:
        try:
            from embedtune.models.loading import load_tokenizer, resolve_source

            return load_tokenizer(resolve_source("default")), "SmolLM2 tokenizer (the packaged default model)"
        except Exception as exc:  # noqa: BLE001 - any failure means: not available here
            note = f"word-level tokenizer over the texts (default model's tokenizer unavailable: {exc})"
            return word_tokenizer(texts), note[:300]
    return word_tokenizer(texts), "word-level tokenizer over the texts"


def tiny_checkpoint(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """Save a tiny random Llama (2 layers, hidden 64) with a word-level tokenizer over ``texts``."""
    import transformers as tf

    tok = word_tokenizer(texts)
    torch.manual_seed(seed)
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=len(tok), bos_token_id=1, eos_token_id=2,
                            pad_token_id=3)
    folder.mkdir(parents=True, exist_ok=True)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- models built from config --------------------------------------------------------------------------
def build_lora_lm(family: str, fields: dict[str, Any], tokenizer: Any, device: torch.device,
                  dtype: torch.dtype, attn: str = "sdpa", max_length: int = 150) -> tuple[Any, Any, int]:
    """A causal LM of ``family`` with random weights, LoRA r=8/alpha 32/dropout 0.1 on q,v of its body.

    Returns (lm, embedder, parameters): the LM (for the paper's protocol) and an Embedder over its LoRA body
    (for embedtune's step) share every weight, so both protocols train the same model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from embedtune.config import LoraConfig
    from embedtune.models.embedder import Embedder
    from embedtune.training.lora import apply_lora

    fields = {"vocab_size": len(tokenizer), **fields}
    if len(tokenizer) > fields["vocab_size"]:
        raise ValueError(f"the tokenizer's {len(tokenizer)} ids do not fit a vocabulary of {fields['vocab_size']}")
    config = AutoConfig.for_model(family, **fields, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    with torch.device(device):  # the weights are drawn on the device itself, not on the CPU and copied
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    lm.requires_grad_(False)
    params = sum(p.numel() for p in lm.parameters())  # tied embeddings counted once
    body = apply_lora(lm.base_model, LoraConfig(r=8, alpha=32, dropout=0.1))  # LoRA layers go into lm too
    embedder = Embedder(body, tokenizer, max_length=max_length)
    return lm, embedder.train(), params


def paper_embed(lm: Any, pad_id: int, rows: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """The paper's embedding: rows right-padded to ``width``, full causal-LM forward with hidden states,
    position -1 pooled (a pad position for short rows, as in the paper's code). Returns (B, D)."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, width)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r[:width])
        mask[i, : len(r)] = 1
    out = lm(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
    return out.hidden_states[-1][:, -1].float()  # (B, D); out.logits (B, width, V) was computed too


# ---- part (c): one shape ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_case(step: Callable[[list], None], batches: list[list], device: torch.device) -> dict[str, Any]:
    """One warm-up step, then the timed ones: triplets/s and, on a GPU, peak memory over the timed steps."""
    gib = 2.0**30
    try:
        step(batches[0])
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device) / gib if device.type == "cuda" else None
        start = time.perf_counter()
        for b in batches[1:]:
            step(b)
        _sync(device)
        seconds = time.perf_counter() - start
    except torch.OutOfMemoryError as exc:
        _free(device)
        return {"error": "out of memory", "detail": str(exc).splitlines()[0][:200]}
    n = sum(len(b) for b in batches[1:])
    peak = torch.cuda.max_memory_allocated(device) / gib if device.type == "cuda" else None
    return {"triplets_per_s": n / seconds, "step_s": seconds / len(batches[1:]), "peak_gib": peak, "held_gib": held}


def _steps(lm: Any, emb: Any, device: torch.device, width: int) -> dict[str, Callable[..., Callable[[list], None]]]:
    """Step makers of the two protocols; each step is forward + backward + AdamW on the LoRA weights."""
    from embedtune.training.gradcache import ContrastiveBatch, contrastive_step
    from embedtune.training.loss import info_nce
    from embedtune.training.trainer import make_autocast

    autocast, _ = make_autocast("bf16", device)
    params = [p for p in emb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)
    tt = emb.text_tokenizer

    def ours(mini_batch_size: int | None) -> Callable[[list], None]:
        def step(batch: list) -> None:
            b = ContrastiveBatch(*(tt.ids([t[i] for t in batch]) for i in range(3)))
            contrastive_step(emb, tt.pad, b, mini_batch_size=mini_batch_size, autocast=autocast, device=device)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def paper() -> Callable[[list], None]:
        def step(batch: list) -> None:
            with autocast():
                a, p, n = (paper_embed(lm, tt.pad_id, tt.ids([t[i] for t in batch]), width, device) for i in range(3))
            info_nce(a, p, n, 0.05).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    return {"ours": ours, "paper": paper}


def measure_shape(name: str, family: str, fields: dict[str, Any], tokenizer: Any, triplets: list,
                  device: torch.device, *, batch: int, big_batch: int, steps: int, width: int,
                  paper_big: bool) -> dict[str, Any]:
    """Part (c) for one model: build it, then time the four cases (see the module docstring)."""
    dtype = torch.bfloat16
    lm, emb, params = build_lora_lm(family, fields, tokenizer, device, dtype, "sdpa", width)
    held = torch.cuda.memory_allocated(device) / 2.0**30 if device.type == "cuda" else None
    makers = _steps(lm, emb, device, width)

    def batches(size: int) -> list[list]:
        return [[triplets[(k * size + i) % len(triplets)] for i in range(size)] for k in range(steps + 1)]

    cases = [("embedtune plain", batch, makers["ours"](None)), ("paper protocol", batch, makers["paper"]()),
             (f"embedtune GradCache (chunks of ~{batch})", big_batch, makers["ours"](batch))]
    if paper_big:
        cases.append(("paper protocol", big_batch, makers["paper"]()))
    rows = []
    for label, size, step in cases:  # the paper's 512 last: an out-of-memory error there spoils nothing after it
        rows.append({"case": label, "batch": size, **time_case(step, batches(size), device)})
    del lm, emb, makers
    _free(device)
    return {"model": name, "family": family, "parameters": params, "weights_gib": held, "cases": rows}
