"""The training loop: data -> LoRA embedder -> contrastive steps -> checkpoints, dev curve, run folder.

Reproducibility: the data order of epoch ``e`` is a pure function of (seed, e), and the dropout RNG of step
``s`` on rank ``r`` is seeded from (seed, r, s); so a run resumed from a checkpoint takes exactly the steps
an uninterrupted run takes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import RunConfig
from ..io import write_text_atomic
from ..models.embedder import AUTOCAST_DTYPES, Embedder
from . import distributed as dist
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .gradcache import ContrastiveBatch, contrastive_step
from .lora import apply_lora, enable_gradient_checkpointing, trainable_parameters
from .run_files import MetricsLogger, prepare_examples, write_curve

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN/inf; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    final_loss: float
    best_step: int | None
    best_score: float | None
    seconds: float
    examples: int


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_autocast(precision: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """Autocast factory and the precision actually used. ``auto``: bf16 on GPUs that support it, else fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext, precision
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU; use bf16 (fast on CPUs with AVX512-BF16/AMX) or fp32")
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), precision


def epoch_order(n: int, epoch: int, seed: int, lengths: list[int] | None, batch: int) -> list[int]:
    """The example order of one epoch: a seeded shuffle, or length-grouped batches when ``lengths`` is given."""
    if lengths is not None:
        from ..data.collate import length_grouped_order

        return length_grouped_order(lengths, batch, seed=seed * 1000 + epoch)
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


def epoch_batches(kinds: list[bool], epoch: int, seed: int, lengths: list[int] | None, batch: int) -> list[list[int]]:
    """The full batches of one epoch, each holding examples of one kind only.

    ``kinds[i]`` says whether example ``i`` is trained with a hard negative. Triplets and pairs can share a
    run (NLI triplets plus paraphrase pairs, say) but not a batch: a batch is one InfoNCE problem, and
    across processes every rank must gather the same roles. Each kind is ordered on its own (seeded
    shuffle or length groups), cut into full batches, and the batches of all kinds are shuffled together,
    so kinds mix over the epoch in proportion to their size. With one kind this is ``epoch_order`` cut into
    batches. Up to ``batch - 1`` examples per kind do not fill a batch and wait for a later epoch (the
    shuffle differs each epoch, so different ones).
    """
    groups: dict[bool, list[int]] = {}
    for i, k in enumerate(kinds):
        groups.setdefault(k, []).append(i)
    batches: list[list[int]] = []
    for k, members in sorted(groups.items()):
        sub_lengths = [lengths[i] for i in members] if lengths is not None else None
        sub_seed = seed if len(groups) == 1 else seed * 7 + int(k)
        order = [members[i] for i in epoch_order(len(members), epoch, sub_seed, sub_lengths, batch)]
        batches.extend(order[j : j + batch] for j in range(0, len(order) - batch + 1, batch))
    if len(groups) > 1:
        random.Random(seed * 1000 + epoch).shuffle(batches)
    return batches


def steps_per_epoch_of(kinds: list[bool], batch: int) -> int:
    """Full batches per epoch when each batch holds one kind (see :func:`epoch_batches`)."""
    return sum(n // batch for n in (kinds.count(True), kinds.count(False)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_embedder(cfg: RunConfig, device: torch.device) -> Embedder:
    embedder = Embedder.from_config(cfg.model, device=str(device))
    for p in embedder.backbone.parameters():
        p.requires_grad_(False)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(embedder.backbone)
    embedder.backbone = apply_lora(embedder.backbone, cfg.lora)
    return embedder


def hold_frozen_linears_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights of frozen linear layers to ``dtype`` (the autocast type); returns how many.

    Autocast casts a linear layer's float32 weight to its compute type on every forward and caches the
    copy only for weights that require grad, so a frozen base model is re-cast at every step. Cast once
    instead: autocast then finds the weight already in its type, and computes exactly the same numbers
    (the same rounding, done once). Biases, embeddings, norms and LoRA weights keep their type. Outside
    autocast such a model needs its inputs in ``dtype``, so the trainer evaluates it under autocast.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad \
                and module.weight.dtype != dtype and module.weight.is_floating_point():
            module.weight.data = module.weight.data.to(dtype)
            count += 1
    return count


def train(
    cfg: RunConfig,
    *,
    examples: list | None = None,
    embedder: Embedder | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune a causal LM into an embedder by contrastive learning, as configured.

    Args:
        cfg: the run's configuration (see :mod:`embedtune.config`).
        examples: training examples (anchor/positive/negative); default: read ``cfg.data`` files.
        embedder: a prepared embedder (tests); default: built from ``cfg.model`` and ``cfg.lora``.
        show_progress: tqdm bar with loss, lr, triplets/s and ETA.
        stop_after: stop (as if interrupted) after this many steps of this call — for tests of resume.

    Returns:
        A :class:`TrainResult`; the run folder holds the adapter, embedtune.json, config, metrics and curves.

    Raises:
        TrainingDivergedError: NaN/inf loss or gradients.
    """
    from tqdm.auto import tqdm

    tc = cfg.train
    out = Path(tc.output_dir)
    device = torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    dist.init_from_env(device.type)
    world, rank = dist.world_size(), dist.rank()
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the number of processes ({world})")
    local_b = tc.batch_size // world
    if tc.mini_batch_size is not None and tc.mini_batch_size < 1:
        raise ValueError(f"train.mini_batch_size must be >= 1 or null, got {tc.mini_batch_size}")
    _seed_everything(tc.seed)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)

    examples, data_report = prepare_examples(cfg, examples, out if dist.is_main() else None)
    # Triplets train with their hard negative, pairs with in-batch negatives only; batches hold one kind.
    kinds = [cfg.data.hard_negatives and e.negative is not None for e in examples]
    steps_per_epoch = steps_per_epoch_of(kinds, tc.batch_size)  # the last incomplete batch of a kind waits
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} training examples (triplets: {kinds.count(True)}, pairs: "
                         f"{kinds.count(False)}; a batch holds one kind) cannot fill one batch of {tc.batch_size}")
    if len(set(kinds)) > 1:
        log.info("%d triplets and %d pairs: %d batches of triplets and %d of pairs per epoch, shuffled together",
                 kinds.count(True), kinds.count(False), kinds.count(True) // tc.batch_size,
                 kinds.count(False) // tc.batch_size)
    total = tc.max_steps if tc.max_steps is not None else max(1, int(tc.epochs * steps_per_epoch))

    if embedder is None:
        embedder = build_embedder(cfg, device)
    embedder.to(device)
    params = trainable_parameters(embedder)
    if not params:
        raise ValueError("the model has no trainable parameters (LoRA disabled and weights frozen?)")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = cosine_schedule(optimizer, tc.warmup_steps, total)
    autocast, precision = make_autocast(tc.precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    if tc.frozen_half and precision in ("bf16", "fp16"):
        if hold_frozen_linears_in(embedder, AUTOCAST_DTYPES[precision]):
            embedder.autocast = precision  # dev evaluation: the frozen weights are in that type now
    lengths = [len(e.anchor) + len(e.positive) + len(e.negative or "") for e in examples] \
        if cfg.data.group_by_length else None

    state: dict[str, Any] = {"best_score": None, "best_step": None, "curve": [], "precision": precision}
    start = 0
    resume = resolve_resume(tc.resume, out)
    if resume is not None:
        state.update(load_checkpoint(resume, embedder, optimizer, scheduler))
        start = state["step"]
        log.info("resumed from %s at step %d", resume, start)
    if dist.is_main():
        write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    metrics = MetricsLogger(out, enabled=dist.is_main(), append=start > 0)
    tt = embedder.text_tokenizer
    dev_eval = _dev_evaluator(cfg, embedder)
    evaluating = tc.eval_every > 0
    if start == 0 and evaluating:
        _evaluate(0, dev_eval, embedder, state, out, metrics, cfg.eval.batch_size)

    embedder.train()
    order_cache: dict[int, list[list[int]]] = {}
    last_loss, t0, seen = float("nan"), time.perf_counter(), 0
    end = total if stop_after is None else min(total, start + stop_after)
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (show_progress and dist.is_main()),
               dynamic_ncols=True)
    for step in range(start, end):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache = {epoch: epoch_batches(kinds, epoch, tc.seed, lengths, tc.batch_size)}
        idx = order_cache[epoch][k][rank * local_b : (rank + 1) * local_b]
        rows = [examples[i] for i in idx]
        batch = ContrastiveBatch(
            tt.ids([e.anchor for e in rows]),
            tt.ids([e.positive for e in rows]),
            tt.ids([e.negative for e in rows]) if kinds[idx[0]] else None,
        )
        torch.manual_seed(tc.seed * 1_000_003 + rank * 10_007 + step)  # dropout RNG of this step and rank
        loss = contrastive_step(
            embedder, tt.pad, batch, temperature=tc.temperature, mini_batch_size=tc.mini_batch_size,
            autocast=autocast, device=device, loss_scale=scaler.get_scale() if scaler else 1.0,
        )
        dist.average_gradients(params)
        loss = dist.all_reduce_mean(loss, device)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm or float("inf"))
        if not math.isfinite(loss) or (scaler is None and not torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            kept = _keep_last_good(out, step, embedder, optimizer, scheduler, state, cfg)
            bar.close()
            raise TrainingDivergedError(
                f"training diverged at step {step}: loss {loss}, gradient norm {float(grad_norm)}; "
                f"the last good state is kept in {kept}. Lower train.lr or use train.precision=fp32."
            )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss, seen = loss, seen + tc.batch_size
        done = step + 1
        rate = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", trip_s=f"{rate:.1f}")
        bar.update(1)
        if done % tc.log_every == 0 or done == total:
            metrics.log({"step": done, "epoch": done / steps_per_epoch, "loss": loss,
                         "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                         "triplets_per_s": rate, "elapsed_s": time.perf_counter() - t0})
        if evaluating and (done % tc.eval_every == 0 or done == total):
            _evaluate(done, dev_eval, embedder, state, out, metrics, cfg.eval.batch_size)
        if tc.save_every > 0 and done % tc.save_every == 0 and done < total:
            _checkpoint(out, done, embedder, optimizer, scheduler, state, cfg)
    bar.close()
    seconds = time.perf_counter() - t0
    if end < total:  # interrupted on purpose (stop_after): leave a checkpoint to resume from
        _checkpoint(out, end, embedder, optimizer, scheduler, state, cfg)
    elif dist.is_main():
        embedder.eval()
        embedder.save(out)
        summary = {"steps": total, "examples": len(examples), "final_loss": last_loss, "seconds_this_call": seconds,
                   "world_size": world, "precision": precision, "data": data_report,
                   "best_step": state["best_step"], "best_score": state["best_score"]}
        write_text_atomic(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    metrics.close()
    dist.barrier()
    return TrainResult(str(out), end, last_loss, state["best_step"], state["best_score"], seconds, len(examples))


def _checkpoint(out, step, embedder, optimizer, scheduler, state, cfg) -> Path | None:
    if not dist.is_main():
        dist.barrier()
        return None
    path = save_checkpoint(out, step, embedder, optimizer, scheduler, _public(state), cfg.to_dict(),
                           keep=cfg.train.keep_checkpoints)
    dist.barrier()
    return path


def _keep_last_good(out, step, embedder, optimizer, scheduler, state, cfg) -> Path | None:
    """On divergence the parameters are still those before the bad step: save them unless already saved."""
    from .checkpoint import list_checkpoints

    existing = [p for p in list_checkpoints(out) if p.name == f"step-{step}"]
    if existing:
        return existing[0]
    return _checkpoint(out, step, embedder, optimizer, scheduler, state, cfg) if step > 0 else None


def _public(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "step"}


def _dev_evaluator(cfg: RunConfig, embedder: Embedder):
    """Load the dev set once (rank 0 only); None when evaluation is off."""
    if cfg.train.eval_every <= 0 or not dist.is_main():
        return None
    from ..data.sts import load_sts_file_or_task

    data = load_sts_file_or_task(cfg.train.eval_task, cfg.data.data_dir, cfg.eval.variant)
    if cfg.train.eval_max_pairs is not None:
        n = cfg.train.eval_max_pairs
        data = type(data)(data.name, data.sentences1[:n], data.sentences2[:n], data.scores[:n], data.source)
    return data


def _evaluate(step: int, data, embedder: Embedder, state: dict, out: Path, metrics: MetricsLogger,
              batch_size: int) -> None:
    """Score the dev set (rank 0; ``data`` is None elsewhere), keep the best adapter, update the curve."""
    from ..evaluation.sts import score_sts

    if data is not None:
        scores = score_sts(data, lambda texts: embedder.encode(texts, batch_size=batch_size))
        point = {"step": step, **{k: v for k, v in asdict(scores).items() if k != "task"}, "task": data.name}
        state["curve"].append(point)
        metrics.log({"step": step, "dev_" + data.name: scores.cosine_spearman})
        if step > 0 and (state["best_score"] is None or scores.cosine_spearman > state["best_score"]):
            state["best_score"], state["best_step"] = scores.cosine_spearman, step
            embedder.save(out / "best")
        write_curve(out, state["curve"])
    dist.barrier()
