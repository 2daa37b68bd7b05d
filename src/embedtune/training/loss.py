"""InfoNCE on embeddings: a pure function, so every encoding strategy (plain, cached, distributed) shares it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    label_offset: int = 0,
    anchor_candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss of the paper (SimCSE's supervised objective).

    Each anchor is scored by cosine similarity / temperature against every positive and every hard negative
    of the (global) batch; the target is its own positive. Row ``i`` of ``anchor`` owns row
    ``label_offset + i`` of ``positive`` (in a multi-process run the candidates are gathered from all ranks
    and ``label_offset = rank * local_batch``).

    Args:
        anchor: (B, D) anchor embeddings.
        positive: (P, D) positive embeddings, P >= label_offset + B.
        negative: (N, D) hard-negative embeddings, or None for in-batch negatives only.
        temperature: softmax temperature (0.05 in the paper).
        label_offset: index of this process's first positive among the candidates.
        anchor_candidates: (A, D) the batch's anchors as further negatives (GTE's anchor-anchor term), with
            this process's anchors at rows ``label_offset .. label_offset + B``; each anchor's own row is
            masked out. None (the paper): anchors are never candidates.

    Returns:
        Scalar mean cross-entropy over the anchors.
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
    return F.cross_entropy(logits, labels)
