"""Training speed and memory: embedtune's contrastive step against two baselines, in one run.

Speed (triplets/s, same model, data, batch and machine):
  ours    embedtune's step: EOS id appended, dynamic padding in length-sorted chunks, transformer body only.
  ours-dropout0  the same with LoRA dropout 0 (configs/default-cpu.yaml): no random masks to draw.
  paper   the paper's protocol: every row padded to 150 tokens, a full causal-LM forward with
          output_hidden_states=True (vocabulary logits computed), last position pooled, same LoRA and loss.
  st      sentence-transformers' MultipleNegativesRankingLoss (scale 20 = 1/0.05) with a PEFT LoRA adapter,
          Pooling('lasttoken'), the EOS token appended to each text so both pool at an EOS.
Memory (peak RSS of a fresh process; each case runs in its own subprocess):
  plain-32       one plain step of 32 triplets
  gradcache-512  one GradCache step of 512 triplets in mini-batches of 32

Run:  .venv/bin/python benchmarks/train_speed.py [--steps 3] [--batch 32]
Writes the "## Training speed and memory" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Training speed and memory"


def _triplets(n: int) -> list[tuple[str, str, str]]:
    from embedtune.data.sts import find_data_dir
    from embedtune.data.triplets import read_examples

    rows, _ = read_examples(str(find_data_dir() / "nli" / "snli_devtest_triplets.csv.gz"))
    return [(e.anchor, e.positive, e.negative) for e in rows[:n]]


def _lora_cfg():
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=8, lora_alpha=32, lora_dropout=0.1,
                      target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")


def _ours(batches, mini_batch_size=None, lora_dropout=0.1):
    import torch

    from embedtune.config import RunConfig
    from embedtune.training.gradcache import ContrastiveBatch, contrastive_step
    from embedtune.training.trainer import build_embedder

    cfg = RunConfig()
    cfg.model.max_length = 150
    cfg.lora.dropout = lora_dropout
    emb = build_embedder(cfg, torch.device("cpu")).train()
    opt = torch.optim.AdamW([p for p in emb.parameters() if p.requires_grad], lr=5e-5)
    tt = emb.text_tokenizer

    def step(batch):
        b = ContrastiveBatch(*(tt.ids([t[i] for t in batch]) for i in range(3)))
        contrastive_step(emb, tt.pad, b, mini_batch_size=mini_batch_size)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _paper(batches):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from embedtune.models.loading import ensure_default_converted, load_tokenizer, resolve_source
    from embedtune.training.loss import info_nce

    tok = load_tokenizer(resolve_source("default"))
    lm = AutoModelForCausalLM.from_pretrained(str(ensure_default_converted()), dtype=torch.float32)
    lm = get_peft_model(lm, _lora_cfg()).train()
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=5e-5)

    def embed(texts):
        # The paper's code: EOS text appended, every row padded to 150, full LM forward with hidden states.
        enc = tok([t + tok.eos_token for t in texts], padding="max_length", max_length=150, truncation=True,
                  return_tensors="pt")
        out = lm(**enc, output_hidden_states=True)
        return out.hidden_states[-1][:, -1]  # position -1 of a right-padded row, as in the paper's code

    def step(batch):
        a, p, n = (embed([t[i] for t in batch]) for i in range(3))
        info_nce(a, p, n, 0.05).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _st(batches):
    import torch
    from peft import get_peft_model
    from sentence_transformers import SentenceTransformer, losses

    from embedtune.models.loading import ensure_default_converted

    try:  # sentence-transformers >= 6: pin the module to plain text (no chat template around each input)
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        text_only = {"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                     "module_output_name": "token_embeddings"}
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

        text_only = {}
    transformer = Transformer(str(ensure_default_converted()), max_seq_length=150, **text_only)
    # PEFT directly: transformers' add_adapter integration asks for a newer peft than PyPI serves here.
    attr = "model" if hasattr(transformer, "model") else "auto_model"
    setattr(transformer, attr, get_peft_model(getattr(transformer, attr), _lora_cfg()))
    pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    model.train()
    eos = transformer.tokenizer.eos_token
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)

    def step(batch):
        feats = [model.tokenize([t[i] + eos for t in batch]) for i in range(3)]
        loss = loss_fn(feats, None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def speed(case: str, batch: int, steps: int) -> float:
    data = _triplets(batch * (steps + 1))
    batches = [data[i * batch : (i + 1) * batch] for i in range(steps + 1)]
    cases = {"ours": _ours, "ours-dropout0": lambda b: _ours(b, lora_dropout=0.0), "paper": _paper, "st": _st}
    step = cases[case](batches)
    step(batches[0])  # warm-up (allocations, oneDNN kernels)
    start = time.perf_counter()
    for b in batches[1:]:
        step(b)
    return batch * steps / (time.perf_counter() - start)


def memory(case: str) -> dict:
    """Run in a fresh process: RSS after loading, then peak RSS over one step."""
    import torch

    torch.manual_seed(0)
    batch, mini = (32, None) if case == "plain-32" else (512, 32)
    data = _triplets(batch)
    step = _ours([data], mini_batch_size=mini)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    step(data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "loaded_mib": loaded, "peak_mib": peak, "seconds": time.perf_counter() - start}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_section(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(text.rstrip() + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--speed-case", choices=["ours", "ours-dropout0", "paper", "st"])
    parser.add_argument("--memory-case", choices=["plain-32", "gradcache-512"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.speed_case:
        print(json.dumps({"case": args.speed_case, "triplets_per_s": speed(args.speed_case, args.batch, args.steps)}))
        return
    if args.memory_case:
        print(json.dumps(memory(args.memory_case)))
        return

    results = {c: _child(["--speed-case", c, "--steps", str(args.steps), "--batch", str(args.batch)])
               for c in ("ours", "ours-dropout0", "paper", "st")}
    for c, r in results.items():
        print(f"{c:13s} {r['triplets_per_s']:.2f} triplets/s", flush=True)
    mem = {c: _child(["--memory-case", c]) for c in ("plain-32", "gradcache-512")}
    for c, r in mem.items():
        print(f"{c:14s} loaded {r['loaded_mib']:.0f} MiB, peak {r['peak_mib']:.0f} MiB, step {r['seconds']:.1f} s")
    ours = results["ours"]["triplets_per_s"]
    ratio_mem = mem["gradcache-512"]["peak_mib"] / mem["plain-32"]["peak_mib"]
    text = f"""{SECTION}

Command: `.venv/bin/python benchmarks/train_speed.py --steps {args.steps} --batch {args.batch}`; machine:
{platform.processor() or platform.machine()}, {os.cpu_count()} cores (1-min load average \
{os.getloadavg()[0]:.1f}), Python {platform.python_version()}; default model (SmolLM2-135M-Instruct, fp32),
LoRA r=8 on q,v (dropout 0.1 unless said), batch {args.batch}
SNLI triplets, {args.steps} timed steps after one warm-up, each case in its own process.

| training step | triplets/s | embedtune is |
|---|---:|---:|
| embedtune (EOS id, dynamic padding, body only) | {ours:.2f} | 1.00x |
| embedtune with LoRA dropout 0 (the CPU default recipe) | {results['ours-dropout0']['triplets_per_s']:.2f} | \
{results['ours-dropout0']['triplets_per_s'] / ours:.2f}x the speed of dropout 0.1 |
| paper protocol (pad to 150, LM head, output_hidden_states) | {results['paper']['triplets_per_s']:.2f} | \
{ours / results['paper']['triplets_per_s']:.2f}x faster (target >= 3x) |
| sentence-transformers MNRL + PEFT | {results['st']['triplets_per_s']:.2f} | \
{ours / results['st']['triplets_per_s']:.2f}x faster (target >= 1.2x) |

| one step | RSS after load | peak RSS | step time |
|---|---:|---:|---:|
| plain, 32 triplets | {mem['plain-32']['loaded_mib']:.0f} MiB | {mem['plain-32']['peak_mib']:.0f} MiB | \
{mem['plain-32']['seconds']:.1f} s |
| GradCache, 512 triplets in mini-batches of 32 | {mem['gradcache-512']['loaded_mib']:.0f} MiB | \
{mem['gradcache-512']['peak_mib']:.0f} MiB | {mem['gradcache-512']['seconds']:.1f} s |

Peak RSS of the 512-triplet GradCache step is {ratio_mem:.2f}x that of the plain 32-triplet step (target <= 1.5x).
"""
    print(text)
    if not args.no_write:
        _write_section(text)


if __name__ == "__main__":
    main()
