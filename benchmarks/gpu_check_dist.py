"""Part (d) of benchmarks/gpu_check.py, one process of a torchrun job: the gathered InfoNCE loss and the
averaged LoRA gradients equal those of one process on the joined batch.

gpu_check.py launches it as
  python -m torch.distributed.run --standalone --nproc-per-node N benchmarks/gpu_check_dist.py --out DIR --device cuda
and each rank writes ``DIR/rank<r>.json``. NCCL on GPUs (one GPU per rank), gloo on CPU.

Every rank builds the same tiny LoRA model (a collective check needs no large one), embeds the whole global
batch itself for the reference (the pure loss, no gather), then takes its own slice the way the trainer does.
With one process embedtune's gather is the identity (world size 1: there is nothing to gather), so the
gather's autograd function is also called directly, which runs the backend's all_gather forward and
all_reduce backward even on one rank.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

import torch

WORDS = "a man woman dog cat child plays sits runs eats on in the park street guitar piano red blue big small".split()
PER_RANK = 4


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def _embedder(device: torch.device) -> Any:
    """The same tiny Llama + LoRA on every rank: drawn on the CPU generator from one seed, then moved."""
    import transformers as tf
    from gpu_check_models import word_tokenizer

    from embedtune.config import LoraConfig
    from embedtune.models.embedder import Embedder
    from embedtune.training.lora import apply_lora

    tok = word_tokenizer(WORDS)
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=len(tok), eos_token_id=2, pad_token_id=3)
    body = tf.AutoModel.from_config(config, attn_implementation="sdpa")
    body.requires_grad_(False)
    body = apply_lora(body, LoraConfig(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in body.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at zero, which would leave A without gradient
    return Embedder(body, tok).to(device).train()


def _take_grads(emb: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in emb.named_parameters() if p.requires_grad}
    emb.zero_grad(set_to_none=True)
    return grads


def _embed(emb: Any, rows: list[list[int]], device: torch.device) -> torch.Tensor:
    enc = emb.text_tokenizer.pad(rows)
    return emb(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float()  # (n, D)


def reference(emb: Any, batch: Any, device: torch.device) -> tuple[float, dict[str, torch.Tensor]]:
    """One process, the joined batch, no gather: the pure loss of all anchors."""
    from embedtune.training.loss import info_nce

    g = len(batch)
    e = _embed(emb, batch.rows(), device)  # (3G, D)
    loss = info_nce(e[:g], e[g : 2 * g], e[2 * g :], 0.05)
    loss.backward()
    return float(loss.detach()), _take_grads(emb)


def trainer_path(emb: Any, local: Any, device: torch.device, mini: int | None) -> tuple[float, dict]:
    """What the trainer does each step: contrastive_step (which gathers when W > 1), then the mean
    gradient and loss over ranks."""
    from embedtune.training import distributed as dist
    from embedtune.training.gradcache import contrastive_step

    loss = contrastive_step(emb, emb.text_tokenizer.pad, local, mini_batch_size=mini, device=device)
    dist.average_gradients([p for p in emb.parameters() if p.requires_grad])
    return dist.all_reduce_mean(loss, device), _take_grads(emb)


def through_collectives(emb: Any, local: Any, device: torch.device) -> tuple[float, dict]:
    """The gather's autograd function called directly, and the mean over ranks by all_reduce: the backend's
    collectives run whatever the world size."""
    import torch.distributed as td

    from embedtune.training import distributed as dist
    from embedtune.training.loss import info_nce

    b, world = len(local), td.get_world_size()
    e = _embed(emb, local.rows(), device)  # (3b, D)
    pos = dist._GatherWithGrad.apply(e[b : 2 * b])  # (W*b, D)
    neg = dist._GatherWithGrad.apply(e[2 * b :])  # (W*b, D)
    loss = info_nce(e[:b], pos, neg, 0.05, label_offset=td.get_rank() * b)
    loss.backward()
    for p in emb.parameters():
        if p.requires_grad:
            td.all_reduce(p.grad)
            p.grad /= world
    total = loss.detach().reshape(1).clone()
    td.all_reduce(total)
    return float(total) / world, _take_grads(emb)


def compare(result: tuple[float, dict], ref: tuple[float, dict]) -> dict[str, Any]:
    """Loss within 1e-5 (relative), gradients within 1e-4 of the largest reference gradient."""
    (loss, grads), (ref_loss, ref_grads) = result, ref
    diff = max(float((grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    equal = abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)) and diff <= 1e-4 * scale and scale > 0
    return {"loss": loss, "single_process_loss": ref_loss, "max_grad_diff": diff, "max_grad": scale, "equal": equal}


def check(device: torch.device) -> dict[str, Any]:
    """Every case of this rank against the single-process reference."""
    import torch.distributed as td

    from embedtune.training.gradcache import ContrastiveBatch

    world, rank = td.get_world_size(), td.get_rank()
    emb = _embedder(device)
    tt = emb.text_tokenizer
    g = PER_RANK * world
    texts = _texts(3 * g, seed=1)
    batch = ContrastiveBatch(tt.ids(texts[:g]), tt.ids(texts[g : 2 * g]), tt.ids(texts[2 * g :]))
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    local = ContrastiveBatch(batch.anchors[mine], batch.positives[mine], batch.negatives[mine])
    ref = reference(emb, batch, device)
    cases = {
        "trainer step, plain": compare(trainer_path(emb, local, device, None), ref),
        "trainer step, GradCache (chunks of 2)": compare(trainer_path(emb, local, device, 2), ref),
        "gather autograd function + all_reduce": compare(through_collectives(emb, local, device), ref),
    }
    return {"rank": rank, "world_size": world, "global_batch": g, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for rank<r>.json")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    import torch.distributed as td

    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # a tiny model: threads only wait for each other
    backend = "nccl" if device.type == "cuda" else "gloo"
    # embedtune's init_from_env leaves a one-process run without a process group (it has nothing to
    # gather); this check exists to run the collectives, so it starts one whatever the world size.
    td.init_process_group(backend)
    try:
        result = {**check(device), "backend": backend, "device": str(device)}
        Path(args.out, f"rank{td.get_rank()}.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        td.destroy_process_group()


if __name__ == "__main__":
    main()
