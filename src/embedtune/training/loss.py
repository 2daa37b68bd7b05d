"""InfoNCE on embeddings, and the distillation term that a teacher adds to it: pure functions, so every
encoding strategy (plain, cached, distributed) shares them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_logits(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    label_offset: int = 0,
    anchor_candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores InfoNCE takes the softmax of, and each anchor's target column.

    Each anchor is scored by cosine similarity / temperature against every positive and every hard negative
    of the (global) batch, in that order of columns, then (when given) every anchor. Row ``i`` of ``anchor``
    owns row ``label_offset + i`` of ``positive`` (in a multi-process run the candidates are gathered from
    all ranks and ``label_offset = rank * local_batch``).

    Args:
        anchor: (B, D) anchor embeddings.
        positive: (P, D) positive embeddings, P >= label_offset + B.
        negative: (N, D) hard-negative embeddings, or None for in-batch negatives only.
        temperature: softmax temperature (0.05 in the paper).
        label_offset: index of this process's first positive among the candidates.
        anchor_candidates: (A, D) the batch's anchors as further negatives (GTE's anchor-anchor term), with
            this process's anchors at rows ``label_offset .. label_offset + B``; each anchor's own column is
            set to -inf. None (the paper): anchors are never candidates.

    Returns:
        ``(logits, labels)``: (B, P + N [+ A]) float32 scores and (B,) target columns.
    """
    if anchor.ndim != 2 or positive.ndim != 2:
        raise ValueError(f"anchor and positive must be (B, D); got {tuple(anchor.shape)} and {tuple(positive.shape)}")
    if positive.shape[0] < label_offset + anchor.shape[0]:
        last = label_offset + anchor.shape[0] - 1
        raise ValueError(f"{positive.shape[0]} positives cannot hold labels {label_offset}..{last}")
    if anchor_candidates is not None and anchor_candidates.shape[0] < label_offset + anchor.shape[0]:
        raise ValueError(f"{anchor_candidates.shape[0]} anchor candidates cannot hold this process's anchors")
    parts = [positive] + [t for t in (negative, anchor_candidates) if t is not None]
    candidates = torch.cat(parts, dim=0) if len(parts) > 1 else positive  # (P + N [+ A], D)
    a = F.normalize(anchor.float(), dim=-1)  # (B, D); float32 for a stable softmax under autocast
    c = F.normalize(candidates.float(), dim=-1)  # (P + N [+ A], D)
    logits = a @ c.T / temperature  # (B, P + N [+ A])
    labels = torch.arange(anchor.shape[0], device=anchor.device) + label_offset  # (B,)
    if anchor_candidates is not None:  # an anchor is no negative of itself
        own = candidates.shape[0] - anchor_candidates.shape[0] + labels  # (B,) column of each anchor's own row
        logits = logits.index_put((torch.arange(anchor.shape[0], device=anchor.device), own),
                                  torch.tensor(float("-inf"), device=anchor.device))
    return logits, labels


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    label_offset: int = 0,
    anchor_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss of the paper (SimCSE's supervised objective): the mean cross-entropy of each anchor's
    softmax over the candidates of :func:`contrastive_logits` (same arguments), its own positive the target."""
    logits, labels = contrastive_logits(anchor, positive, negative, temperature, label_offset, anchor_candidates)
    return F.cross_entropy(logits, labels)


def batch_similarity_logits(
    texts: torch.Tensor, candidates: torch.Tensor, temperature: float, offset: int = 0
) -> torch.Tensor:
    """Every text of a batch scored against every text of the (global) batch but itself.

    The rows of ``train.teacher_scope=batch``'s distillation: anchors, positives and hard negatives all
    ask which other texts are near, so one step carries three times the teacher's judgements of the
    anchor rows alone, and the anchor-anchor, positive-positive and negative-negative ones besides.

    Args:
        texts: (R, D) this process's texts, rows ``offset .. offset + R`` of ``candidates``.
        candidates: (C, D) the global batch's texts, C >= offset + R.
        temperature: softmax temperature.
        offset: index of this process's first text among the candidates.

    Returns:
        (R, C) float32 cosine similarities / temperature, each text's own column -inf.
    """
    if candidates.shape[0] < offset + texts.shape[0]:
        raise ValueError(f"{candidates.shape[0]} candidates cannot hold texts {offset}..{offset + texts.shape[0] - 1}")
    t = F.normalize(texts.float(), dim=-1)  # (R, D)
    c = F.normalize(candidates.float(), dim=-1)  # (C, D)
    logits = t @ c.T / temperature  # (R, C)
    rows = torch.arange(texts.shape[0], device=texts.device)
    return logits.index_put((rows, rows + offset), torch.tensor(float("-inf"), device=texts.device))


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) of each row's softmax over the same candidates.

    The student learns how the teacher spreads an anchor's probability over the batch (which in-batch
    texts it finds near, which hard negatives it finds far), not only which candidate is the positive.
    Columns the teacher gives -inf (an anchor's own row among anchor candidates) carry no probability and
    take no part; the student must mask the same columns.

    Args:
        student_logits: (B, C) the student's scores (with its temperature applied).
        teacher_logits: (B, C) the teacher's scores of the same anchors and candidates.

    Returns:
        Scalar mean over rows; zero when the two softmaxes agree.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    teacher_logits = teacher_logits.to(student_logits.device, torch.float32)
    p = torch.softmax(teacher_logits, dim=-1)  # (B, C)
    log_p, log_q = torch.log_softmax(teacher_logits, dim=-1), torch.log_softmax(student_logits.float(), dim=-1)
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))  # 0 log 0 = 0, masked columns drop out
    return terms.sum(dim=-1).mean()
