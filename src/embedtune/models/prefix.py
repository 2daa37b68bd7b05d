"""A batch's shared opening tokens run once: the prompt prefix's KV cache, repeated for the rows.

Every row that P1 formats starts with the same tokens (``This sentence: "``, a sixth of an STSBenchmark
row). A causal model's states there do not depend on what follows, so one pass over them, as a batch of
one, gives keys and values that serve every row; the rest of the rows then run with that cache in front.
The result equals running every row whole up to float rounding. :class:`~embedtune.models.embedder.Embedder`
decides when this applies (its ``shared_prefix_length``); this module does the running.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from ..data.collate import position_ids

#: Prefix KV caches (batch of one) by their token ids.
PrefixMemo = dict[tuple[int, ...], Any]


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Leading tokens that every row of ``input_ids`` (B, L) shares as real tokens, capped so that each
    row keeps at least one token after them (0 when a row starts with padding)."""
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)  # (L,)
    p = int(torch.cumprod(same.to(torch.int32), dim=0).sum())
    return max(0, min(p, int(attention_mask.sum(dim=1).min()) - 1))


def cache_argument(backbone: nn.Module) -> str:
    """The keyword ``backbone`` (a transformers model, or a PEFT model around one) takes a KV cache by:
    ``cache`` (transformers 5.x since the rename), else ``past_key_values``."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def run_after_prefix(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int,
                     memo: PrefixMemo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` over right-padded rows (B, L) whose first ``p`` tokens are the same in every row:
    those once, as one row (or taken from ``memo``, which receives them when given), their KV cache
    repeated for the batch, then the rest of the rows.

    Returns:
        The last hidden states of the rest (B, L - p, D) and its attention mask (B, L - p).
    """
    key = tuple(input_ids[0, :p].tolist())
    if memo is not None and key in memo:
        cache = copy.deepcopy(memo[key])  # the pass below appends the rows' keys to it
    else:
        head = backbone(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p],
                        position_ids=torch.arange(p, device=input_ids.device)[None], use_cache=True)
        cache = head.cache if getattr(head, "cache", None) is not None else head.past_key_values
        if memo is not None:
            memo[key] = copy.deepcopy(cache)
    cache.batch_repeat_interleave(input_ids.shape[0])
    rest = attention_mask[:, p:]  # (B, L - p)
    out = backbone(
        input_ids=input_ids[:, p:],
        attention_mask=attention_mask,  # (B, L): the prefix's columns are all real tokens
        position_ids=p + position_ids(rest),
        use_cache=True,
        **{cache_argument(backbone): cache},
    )
    return out.last_hidden_state, rest
