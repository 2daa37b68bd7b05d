"""Pooling: pure functions ``(hidden, mask) -> (B, D)``, correct for left and right padding.

Every pooler reads the attention mask instead of assuming where padding sits; padded positions are
excluded with ``torch.where`` rather than multiplication so that a NaN in a padded row (fully masked
attention rows can produce them) never leaks into an embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Pooler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real token of each row (the appended EOS in embedtune).

    Args:
        hidden: (B, L, D) last-layer hidden states.
        mask: (B, L) attention mask, 1 for real tokens; padding may be on either side.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    # The largest position with mask == 1 is the last real token for both padding sides.
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # (B,)
    if (last < 0).any():
        raise ValueError("a row of the batch has no real token (all-zero attention mask)")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' hidden states. hidden (B, L, D), mask (B, L) -> (B, D)."""
    keep = mask.bool().unsqueeze(-1)  # (B, L, 1)
    summed = torch.where(keep, hidden, 0.0).sum(dim=1)  # (B, D)
    count = keep.sum(dim=1).clamp(min=1).to(hidden.dtype)  # (B, 1)
    return summed / count


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean (SGPT): the i-th real token gets weight i, so later tokens, which have
    seen more of the text through causal attention, count more. Weights start at the first real token,
    so left padding gives the same result as right padding. hidden (B, L, D), mask (B, L) -> (B, D)."""
    m = mask.to(torch.long)
    weights = (torch.cumsum(m, dim=1) * m).to(hidden.dtype).unsqueeze(-1)  # (B, L, 1): 1..n on real tokens
    summed = torch.where(weights > 0, hidden * weights, 0.0).sum(dim=1)  # (B, D)
    return summed / weights.sum(dim=1).clamp(min=1)


POOLERS: dict[str, Pooler] = {"last": last_token, "mean": mean, "weighted_mean": weighted_mean}


def get_pooler(name: str) -> Pooler:
    """Look a pooler up by name (``last``, ``mean``, ``weighted_mean``)."""
    try:
        return POOLERS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLERS)}") from None
