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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import get_cosine_schedule_with_warmup

from ..config import RunConfig
from ..io import write_text_atomic
from ..models.embedder import Embedder
from ..models.runtime import AUTOCAST_DTYPES
from ..provenance import environment_meta
from . import distributed as dist
from .batches import epoch_batches, examples_taken, steps_per_epoch_of
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .gradcache import ContrastiveBatch, contrastive_step
from .lora import apply_lora, enable_gradient_checkpointing, trainable_parameters
from .precision import hold_frozen_linears_in, make_autocast
from .run_files import MetricsLogger, prepare_examples, write_curve
from .teacher import TeacherScores, teacher_for_run

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
    # The shared prompt prefix with a graph: one dropout mask would serve every row, and checkpointed
    # layers drop the KV cache, so both keep every row whole.
    embedder.share_prefix_with_grad = (cfg.train.share_prefix and not cfg.lora.dropout
                                       and not cfg.train.gradient_checkpointing)
    return embedder


@dataclass
class LoopState:
    """What the loop carries from step to step; all but ``step`` and ``last_loss`` is checkpointed."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "fp32"
    last_loss: float = float("nan")

    def saved(self) -> dict[str, Any]:
        """The part a checkpoint stores (``save_checkpoint`` adds the step)."""
        return {"best_score": self.best_score, "best_step": self.best_step, "curve": self.curve,
                "precision": self.precision}


@dataclass
class TrainingSetup:
    """Everything the loop needs, built once by :func:`setup_training`."""

    cfg: RunConfig
    out: Path
    device: torch.device
    examples: list
    data_report: dict[str, Any]
    kinds: list[bool]  # per example: trained with its hard negative (True) or as a pair (False)
    lengths: list[int] | None  # for length-grouped batches
    steps_per_epoch: int
    total: int
    embedder: Embedder
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    dev_data: Any  # the dev StsData on rank 0 when evaluating, else None
    metrics: MetricsLogger | None = None
    teacher: TeacherScores | None = None  # the teacher's vectors of the run's texts (train.teacher)
    epoch_cache: dict[int, list[list[int]]] = field(default_factory=dict)  # the current epoch's batches
    started: dict[str, Any] = field(default_factory=dict)  # provenance (commit, machine, date) at the start

    @property
    def local_batch(self) -> int:
        return self.cfg.train.batch_size // dist.world_size()


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
        embedder: a prepared embedder (tests); default: built from ``cfg.model`` and ``cfg.lora``. Under
            bf16/fp16 training with ``train.frozen_half`` its frozen weights are cast to that type.
        show_progress: tqdm bar with loss, lr, triplets/s and ETA.
        stop_after: stop (as if interrupted) after this many steps of this call — for tests of resume.

    Returns:
        A :class:`TrainResult`; the run folder holds the adapter, embedtune.json, config, metrics and curves.

    Raises:
        TrainingDivergedError: NaN/inf loss or gradients.
    """
    from tqdm.auto import tqdm

    run = setup_training(cfg, examples, embedder, show_progress)
    state = resume_state(run)
    run.metrics = MetricsLogger(run.out, enabled=dist.is_main(), append=state.step > 0)
    evaluating = cfg.eval.every > 0
    if state.step == 0 and evaluating:
        evaluate_dev(run, state)

    run.embedder.train()
    total, end = run.total, run.total if stop_after is None else min(run.total, state.step + stop_after)
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step",
               disable=not (show_progress and dist.is_main()), dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    for step in range(state.step, end):
        loss, grad_norm, kl = training_step(run, state, step)
        state.step, state.last_loss, seen = step + 1, loss, seen + cfg.train.batch_size
        rate = seen / (time.perf_counter() - t0)
        lr = run.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", trip_s=f"{rate:.1f}")
        bar.update(1)
        if state.step % cfg.train.log_every == 0 or state.step == total:
            run.metrics.log({"step": state.step, "epoch": state.step / run.steps_per_epoch, "loss": loss, "lr": lr,
                             "grad_norm": grad_norm, "triplets_per_s": rate, "elapsed_s": time.perf_counter() - t0,
                             **({} if kl is None else {"kl": kl})})
        if evaluating and (state.step % cfg.eval.every == 0 or state.step == total):
            evaluate_dev(run, state)
        if cfg.train.save_every > 0 and state.step % cfg.train.save_every == 0 and state.step < total:
            save_training_checkpoint(run, state)
    bar.close()
    return finish_training(run, state, end, time.perf_counter() - t0)


def setup_training(cfg: RunConfig, examples: list | None, embedder: Embedder | None,
                   show_progress: bool = True) -> TrainingSetup:
    """Process group, data, model with LoRA, optimizer, schedule and precision of a run (and, with
    ``train.teacher``, the teacher's vectors of its texts, with a progress bar when ``show_progress``)."""
    tc = cfg.train
    out = Path(tc.output_dir)
    device = torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    dist.init_from_env(device.type)
    if tc.batch_size % dist.world_size():
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the number of processes "
                         f"({dist.world_size()})")
    if tc.mini_batch_size is not None and tc.mini_batch_size < 1:
        raise ValueError(f"train.mini_batch_size must be >= 1 or null, got {tc.mini_batch_size}")
    _seed_everything(tc.seed)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)

    examples, data_report = prepare_examples(cfg, examples, out if dist.is_main() else None, str(device),
                                             show_progress and dist.is_main())
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
    lengths = ([len(e.anchor) + len(e.positive) + len(e.negative or "") for e in examples]
               if cfg.data.group_by_length else None)

    embedder = (embedder or build_embedder(cfg, device)).to(device)
    params = trainable_parameters(embedder)
    if not params:
        raise ValueError("the model has no trainable parameters (LoRA disabled and weights frozen?)")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, total)
    autocast, precision = make_autocast(tc.precision, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    if tc.frozen_half and precision in ("bf16", "fp16"):
        if hold_frozen_linears_in(embedder, AUTOCAST_DTYPES[precision]):
            embedder.autocast = precision  # dev evaluation: the frozen weights are in that type now
    run = TrainingSetup(cfg, out, device, examples, data_report, kinds, lengths, steps_per_epoch, total, embedder,
                        params, optimizer, scheduler, autocast, scaler, dev_data(cfg), started=environment_meta())
    if tc.teacher:
        used = examples_taken(kinds, tc.seed, lengths, tc.batch_size, total)
        run.teacher = teacher_for_run(tc, examples, used, str(device), cfg.eval.batch_size,
                                      show_progress and dist.is_main())
    return run


def resume_state(run: TrainingSetup) -> LoopState:
    """A fresh loop state, or the one of the checkpoint ``train.resume`` names (weights, optimizer, schedule
    and RNG restored); writes the run's config.yaml."""
    state = LoopState(precision=make_autocast(run.cfg.train.precision, run.device)[1])
    resume = resolve_resume(run.cfg.train.resume, run.out)
    if resume is not None:
        saved = load_checkpoint(resume, run.embedder, run.optimizer, run.scheduler)
        state = LoopState(**{k: v for k, v in saved.items() if k in LoopState.__dataclass_fields__})
        log.info("resumed from %s at step %d", resume, state.step)
    if dist.is_main():
        write_text_atomic(run.out / "config.yaml", yaml.safe_dump(run.cfg.to_dict(), sort_keys=False))
    return state


def training_step(run: TrainingSetup, state: LoopState, step: int) -> tuple[float, float, float | None]:
    """One optimizer step on the batch of ``step``; returns the global loss, the gradient norm, and with a
    teacher the global mean of its (unweighted) KL term, which the loss includes (else None).

    Raises:
        TrainingDivergedError: the loss or the gradient is not finite (the last good state is saved first).
    """
    tc = run.cfg.train
    batch = batch_of_step(run, step)
    torch.manual_seed(tc.seed * 1_000_003 + dist.rank() * 10_007 + step)  # dropout RNG of this step and rank
    parts: dict[str, float] = {}
    loss = contrastive_step(
        run.embedder, run.embedder.text_tokenizer.pad, batch, temperature=tc.temperature,
        mini_batch_size=tc.mini_batch_size, autocast=run.autocast, device=run.device,
        # scaler.scale, not get_scale: it also creates the scaler's state, without which unscale_ fails
        loss_scale=float(run.scaler.scale(torch.ones((), device=run.device))) if run.scaler else 1.0,
        symmetric=tc.loss == "symmetric", anchor_negatives=tc.loss == "anchors", teacher_weight=tc.teacher_weight,
        teacher_scope=tc.teacher_scope, parts=parts, teacher_temperature=tc.teacher_temperature,
    )
    dist.average_gradients(run.params)
    loss = dist.all_reduce_mean(loss, run.device)
    kl = dist.all_reduce_mean(parts["kl"], run.device) if "kl" in parts else None
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, tc.max_grad_norm or float("inf"))
    if not math.isfinite(loss) or (run.scaler is None and not torch.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        kept = _keep_last_good(run, state, step)
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {loss}, gradient norm {float(grad_norm)}; "
            f"the last good state is kept in {kept}. Lower train.lr or use train.precision=fp32."
        )
    if run.scaler is not None:  # fp16: skips the step when the scaled gradients overflowed
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, float(grad_norm), kl


def batch_of_step(run: TrainingSetup, step: int) -> ContrastiveBatch:
    """This process's share of the global batch of ``step`` (a pure function of seed, epoch and step)."""
    epoch, k = divmod(step, run.steps_per_epoch)
    batches = _epoch_batches_cached(run, epoch)
    b, r = run.local_batch, dist.rank()
    idx = batches[k][r * b : (r + 1) * b]
    rows = [run.examples[i] for i in idx]
    tt = run.embedder.text_tokenizer
    with_negatives = run.kinds[idx[0]]
    teacher = None
    if run.teacher is not None:
        tc = run.cfg.train
        if tc.teacher_scope == "batch":
            teacher = run.teacher.batch_logits(batches[k], r * b, b, negatives=with_negatives,
                                               temperature=tc.teacher_temperature)
        else:
            teacher = run.teacher.logits(batches[k], r * b, b, negatives=with_negatives,
                                         anchor_negatives=tc.loss == "anchors", temperature=tc.teacher_temperature)
    return ContrastiveBatch(
        tt.ids([e.anchor for e in rows]),
        tt.ids([e.positive for e in rows]),
        tt.ids([e.negative for e in rows]) if with_negatives else None,
        teacher,
    )


def _epoch_batches_cached(run: TrainingSetup, epoch: int) -> list[list[int]]:
    cache = run.epoch_cache
    if epoch not in cache:
        cache.clear()
        cache[epoch] = epoch_batches(run.kinds, epoch, run.cfg.train.seed, run.lengths, run.cfg.train.batch_size)
    return cache[epoch]


def finish_training(run: TrainingSetup, state: LoopState, end: int, seconds: float) -> TrainResult:
    """Save the adapter and train_summary.json (or, when stopped early on purpose, a checkpoint)."""
    if end < run.total:  # interrupted on purpose (stop_after): leave a checkpoint to resume from
        save_training_checkpoint(run, state)
    elif dist.is_main():
        run.embedder.eval()
        run.embedder.save(run.out)
        summary = {"steps": run.total, "examples": len(run.examples), "final_loss": state.last_loss,
                   "seconds_this_call": seconds, "world_size": dist.world_size(), "precision": state.precision,
                   "data": run.data_report, "best_step": state.best_step, "best_score": state.best_score,
                   "teacher": None if run.teacher is None else {"model": run.teacher.source,
                                                                "scope": run.cfg.train.teacher_scope,
                                                                "texts": int(run.teacher.vectors.shape[0]),
                                                                "seconds": run.teacher.seconds},
                   "started": run.started, "finished": environment_meta()}
        write_text_atomic(run.out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    run.metrics.close()
    dist.barrier()
    return TrainResult(str(run.out), end, state.last_loss, state.best_step, state.best_score, seconds,
                       len(run.examples))


def save_training_checkpoint(run: TrainingSetup, state: LoopState) -> Path | None:
    """``checkpoints/step-N`` of the current state (rank 0 writes; every rank waits for it)."""
    if not dist.is_main():
        dist.barrier()
        return None
    path = save_checkpoint(run.out, state.step, run.embedder, run.optimizer, run.scheduler, state.saved(),
                           run.cfg.to_dict(), keep=run.cfg.train.keep_checkpoints)
    dist.barrier()
    return path


def _keep_last_good(run: TrainingSetup, state: LoopState, step: int) -> Path | None:
    """On divergence the parameters are still those before the bad step: save them unless already saved."""
    from .checkpoint import list_checkpoints

    existing = [p for p in list_checkpoints(run.out) if p.name == f"step-{step}"]
    if existing:
        return existing[0]
    return save_training_checkpoint(run, state) if step > 0 else None


def dev_data(cfg: RunConfig):
    """The dev set the loop scores (rank 0 only, cut to ``eval.dev_max_pairs``); None when evaluation is off."""
    if cfg.eval.every <= 0 or not dist.is_main():
        return None
    from ..data.sts import load_sts_file_or_task

    data = load_sts_file_or_task(cfg.eval.dev_task, cfg.data.data_dir, cfg.eval.variant)
    return data.head(cfg.eval.dev_max_pairs)


def evaluate_dev(run: TrainingSetup, state: LoopState) -> None:
    """Score the dev set (rank 0), keep the best adapter in ``best/``, update the curve; every rank waits."""
    from ..evaluation.sts import score_sts

    data = run.dev_data
    if data is not None:
        batch_size = run.cfg.eval.batch_size
        scores = score_sts(data, lambda texts: run.embedder.encode(texts, batch_size=batch_size))
        point = {"step": state.step, **{k: v for k, v in asdict(scores).items() if k != "task"}, "task": data.name}
        state.curve.append(point)
        run.metrics.log({"step": state.step, "dev_" + data.name: scores.cosine_spearman})
        if state.step > 0 and (state.best_score is None or scores.cosine_spearman > state.best_score):
            state.best_score, state.best_step = scores.cosine_spearman, state.step
            run.embedder.save(run.out / "best")
        write_curve(run.out, state.curve)
    dist.barrier()
