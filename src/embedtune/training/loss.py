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

    Returns:
        Scalar mean cross-entropy over the anchors.
    """
    if anchor.ndim != 2 or positive.ndim != 2:
        raise ValueError(f"anchor and positive must be (B, D); got {tuple(anchor.shape)} and {tuple(positive.shape)}")
    if positive.shape[0] < label_offset + anchor.shape[0]:
        last = label_offset + anchor.shape[0] - 1
        raise ValueError(f"{positive.shape[0]} positives cannot hold labels {label_offset}..{last}")
    candidates = positive if negative is None else torch.cat([positive, negative], dim=0)  # (P + N, D)
    a = F.normalize(anchor.float(), dim=-1)  # (B, D); float32 for a stable softmax under autocast
    c = F.normalize(candidates.float(), dim=-1)  # (P + N, D)
    logits = a @ c.T / temperature  # (B, P + N)
    labels = torch.arange(anchor.shape[0], device=anchor.device) + label_offset  # (B,)
    return F.cross_entropy(logits, labels)
