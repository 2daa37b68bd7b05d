"""One contrastive optimization step, plain or cached (GradCache, Gao et al. 2021).

Cached: embed the whole batch without a graph in mini-batches, compute the loss and the gradient of the
loss with respect to every embedding on the whole (global) batch, then re-embed each mini-batch with a
graph and back-propagate its slice of those gradients. Memory is that of one mini-batch; the gradients
are those of the full batch, and so are the negatives — which gradient accumulation cannot give.

Texts of a step are embedded in length-sorted chunks regardless of role (anchor, positive, negative):
each text's embedding is independent of its chunk mates, so grouping by length only removes padding.
Cached chunks are cut by a token budget, not a row count: activation memory follows padded tokens, and
a fixed row count sorted longest-first would put the longest texts of a 512-triplet batch into one chunk
several times the size of an average mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.collate import batches_by_length, longest_first
from .distributed import gather_with_grad, rank
from .loss import batch_similarity_logits, contrastive_logits, distillation_kl, info_nce


@dataclass
class ContrastiveBatch:
    """Token ids (each row ends in EOS) of one process's share of a global batch, and, when a teacher
    guides the run, the teacher's scores of these anchors against the global batch's candidates (the
    columns of :func:`~embedtune.training.loss.contrastive_logits`) or, with ``train.teacher_scope=batch``,
    of all these texts against all the global batch's (:func:`global_info_nce`)."""

    anchors: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]] | None = None
    teacher_logits: torch.Tensor | None = None  # (B, candidates), or (texts, global texts)

    def __len__(self) -> int:
        return len(self.anchors)

    def rows(self) -> list[list[int]]:
        return self.anchors + self.positives + (self.negatives or [])


def global_info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    temperature: float,
    symmetric: bool = False,
    anchor_negatives: bool = False,
    teacher_logits: torch.Tensor | None = None,
    teacher_weight: float = 1.0,
    teacher_scope: str = "anchors",
    parts: dict[str, float] | None = None,
    teacher_temperature: float | None = None,
) -> torch.Tensor:
    """InfoNCE over the global batch: candidates gathered from all ranks with gradient, anchors local,
    labels offset by rank x local batch.

    ``symmetric`` averages it with the reverse direction: each positive scored against every anchor of the
    global batch, its own anchor the target (hard negatives belong to anchors and take no part there). Both
    directions use the same embeddings, so the second costs one (B, W x B) product, not another forward.
    ``anchor_negatives`` adds the other anchors of the global batch to each anchor's candidates.
    ``teacher_logits`` (B, candidates) adds ``teacher_weight`` x the KL divergence of the student's softmax
    over the same candidates from the teacher's (:func:`~embedtune.training.loss.distillation_kl`). With
    ``teacher_scope="batch"`` the KL is taken instead over the rows of
    :func:`~embedtune.training.loss.batch_similarity_logits`: each of this process's texts (anchors, then
    positives, then hard negatives) against every text of the global batch, gathered rank by rank in that
    order; ``teacher_logits`` is then (3B, W x 3B) or, without negatives, (2B, W x 2B).
    ``teacher_temperature`` (None: ``temperature``) is the temperature of the distillation term: the
    teacher's logits come with it, the student's similarities are divided by it too, and the KL is
    multiplied by (``teacher_temperature`` / ``temperature``)^2 (Hinton et al.'s correction, which keeps the
    term's gradients about the same size at any temperature, so the weight means the same).
    ``parts``, when given, receives the terms as floats: ``contrastive`` and, with a teacher, ``kl``
    (unweighted).
    """
    offset = rank() * anchor.shape[0]
    pos = gather_with_grad(positive)  # (W * B, D)
    neg = gather_with_grad(negative) if negative is not None else None  # (W * B, D)
    anchors = gather_with_grad(anchor) if anchor_negatives else None  # (W * B, D)
    logits, labels = contrastive_logits(anchor, pos, neg, temperature, label_offset=offset, anchor_candidates=anchors)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + info_nce(positive, gather_with_grad(anchor), None, temperature, label_offset=offset)) / 2
    if parts is not None:
        parts["contrastive"] = float(loss.detach())
    if teacher_logits is not None:
        if teacher_scope == "batch":
            texts = torch.cat([t for t in (anchor, positive, negative) if t is not None])  # (3B or 2B, D)
            logits = batch_similarity_logits(texts, gather_with_grad(texts), temperature, rank() * texts.shape[0])
        elif teacher_scope != "anchors":
            raise ValueError(f"teacher_scope must be 'anchors' or 'batch', got {teacher_scope!r}")
        kd_temperature = teacher_temperature or temperature
        kl = distillation_kl(logits * (temperature / kd_temperature), teacher_logits)
        if parts is not None:
            parts["kl"] = float(kl.detach())
        loss = loss + teacher_weight * (kd_temperature / temperature) ** 2 * kl
    return loss


def token_budget_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Rows, longest first, cut into chunks whose padded size (rows x longest row) is at most
    ``max_tokens``; a single row longer than the budget forms a chunk of its own."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    chunks: list[list[int]] = []
    for i in longest_first(lengths):
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def mini_batch_token_budget(rows: Sequence[Sequence[int]], mini_batch_size: int, roles: int) -> int:
    """The tokens of ``mini_batch_size`` average tuples of this batch: what a plain step of that many
    triplets embeds, so a cached chunk needs about the memory of such a step."""
    mean = sum(len(r) for r in rows) / max(len(rows), 1)
    return max(1, math.ceil(mini_batch_size * roles * mean))


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def contrastive_step(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pad: Callable[[list[list[int]]], dict[str, torch.Tensor]],
    batch: ContrastiveBatch,
    *,
    temperature: float = 0.05,
    mini_batch_size: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    device: torch.device | str = "cpu",
    loss_scale: float = 1.0,
    symmetric: bool = False,
    anchor_negatives: bool = False,
    teacher_weight: float = 1.0,
    teacher_scope: str = "anchors",
    parts: dict[str, float] | None = None,
    teacher_temperature: float | None = None,
) -> float:
    """Forward and backward for one batch; gradients accumulate in the model's parameters.

    Args:
        model: ``(input_ids, attention_mask) -> (n, D)`` embeddings (an :class:`Embedder`).
        pad: pads a list of id rows into ``input_ids``/``attention_mask`` tensors.
        batch: this process's triplets (or pairs).
        temperature: InfoNCE temperature.
        mini_batch_size: None for a plain step (the whole local batch keeps its graph); else GradCache
            with chunks of about the padded tokens of this many of the batch's triplets (see
            :func:`mini_batch_token_budget`).
        autocast: context factory for mixed precision.
        device: where the model lives.
        loss_scale: multiplies the loss before backward (fp16 loss scaling); the returned loss is unscaled.
        symmetric: also score each positive against the anchors (see :func:`global_info_nce`).
        anchor_negatives: also score each anchor against the batch's other anchors.
        teacher_weight: weight of the distillation term when ``batch.teacher_logits`` is given.
        teacher_scope: which rows the teacher's scores cover (see :func:`global_info_nce`).
        parts: when given, receives the loss's terms (``contrastive``, ``kl``) as :func:`global_info_nce` does.
        teacher_temperature: temperature of the distillation term (see :func:`global_info_nce`).

    Returns:
        The loss of this process's anchors (float).
    """
    # One piece on purpose: the plain and the cached step share embed() and loss_of(), and reading them
    # side by side shows that the cached step computes the same loss and gradients.
    device = torch.device(device)
    rows = batch.rows()
    n, b = len(rows), len(batch)
    roles = n // b

    def embed(idx: list[int]) -> torch.Tensor:
        enc = pad([rows[i] for i in idx])
        with autocast():
            return model(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float()  # (c, D)

    def loss_of(emb: torch.Tensor) -> torch.Tensor:
        neg = emb[2 * b :] if batch.negatives is not None else None
        return global_info_nce(emb[:b], emb[b : 2 * b], neg, temperature, symmetric, anchor_negatives,
                               batch.teacher_logits, teacher_weight, teacher_scope, parts, teacher_temperature)

    if mini_batch_size is None:
        # `roles` forwards of B texts each, like one per role but with less padding
        chunks = list(batches_by_length([len(r) for r in rows], b))
        order = torch.tensor([i for c in chunks for i in c], device=device)  # (n,) row of each chunk output
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=device)
        emb = torch.cat([embed(idx) for idx in chunks])[inverse]  # (n, D) back in batch order
        loss = loss_of(emb)
        (loss * loss_scale).backward()
        return float(loss.detach())

    chunks = token_budget_chunks([len(r) for r in rows], mini_batch_token_budget(rows, mini_batch_size, roles))
    states, pieces = [], []
    with torch.no_grad():
        for idx in chunks:
            states.append(_rng_state(device))  # replayed below, so dropout masks match the re-forward
            pieces.append(embed(idx))
    cache = torch.empty(n, pieces[0].shape[1], device=device)  # (n, D)
    for idx, part in zip(chunks, pieces):
        cache[idx] = part
    cache.requires_grad_(True)
    loss = loss_of(cache)
    (loss * loss_scale).backward()  # gradients w.r.t. the cached embeddings only (and, across ranks, via the gather)
    grads = cache.grad  # (n, D)
    devices = [device] if device.type == "cuda" else []
    for idx, (cpu_state, cuda_state) in zip(chunks, states):
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, device)
            part = embed(idx)  # (c, D), with a graph this time
        # d(loss)/d(params) = sum over rows of d(loss)/d(emb_row) . d(emb_row)/d(params)
        torch.autograd.backward(part, grad_tensors=grads[idx])
    return float(loss.detach())
