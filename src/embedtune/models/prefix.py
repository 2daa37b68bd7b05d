"""A batch's shared opening tokens run once: the prompt prefix's KV cache, repeated for the rows.

Every row that P1 formats starts with the same tokens (``This sentence: "``, a sixth of an STSBenchmark
row). A causal model's states there do not depend on what follows, so one pass over them, as a batch of
one, gives keys and values that serve every row; the rest of the rows then run with that cache in front.
The result equals running every row whole up to float rounding. :class:`PrefixSharing`, which the
:class:`~embedtune.models.embedder.Embedder` inherits, decides when this applies and how long a prefix's
cache is kept; :func:`run_after_prefix` does the running.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
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


class PrefixSharing:
    """When an :class:`~embedtune.models.embedder.Embedder`'s forward runs its batch's shared opening once,
    and for how long the prefix's cache is kept. Mixed into the Embedder, whose ``pooling``, ``backbone``,
    ``training`` and ``pool`` it reads."""

    #: Run a batch's shared opening tokens once (see :meth:`shared_prefix_length`); False: every row whole.
    share_prefix: bool = True
    #: Share it with a graph too (training); the trainer turns this on where it is exact (``train.share_prefix``).
    share_prefix_with_grad: bool = False
    #: Shorter shared openings are not worth the extra forward.
    MIN_SHARED_PREFIX = 2
    #: Prefix KV caches (batch of one) by token ids, kept inside :meth:`prefix_cache` (weights and autocast
    #: fixed; each :meth:`encode_ids` call opens one), so the prefix runs once per call rather than once per
    #: batch; None elsewhere, where every forward runs its own.
    _prefix_memo: PrefixMemo | None = None

    def shared_prefix_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """How many leading tokens :meth:`forward` runs once for the whole batch: 0, or the length of the
        token prefix that every row starts with, when

        - the model is in eval mode and no graph is being recorded (inference), or
          :attr:`share_prefix_with_grad` is set (the trainer sets it unless
          LoRA dropout or gradient checkpointing is on; the prefix's states then take the gradients of every
          row);
        - the pooling is ``last`` (the prefix's states take no part in the vector);
        - attention is ``eager`` or ``sdpa`` (the two checked to give the same vectors; others run whole);
        - the batch has two or more rows and no row starts with padding;
        - every row keeps at least one token after it, and the prefix is at least
          :attr:`MIN_SHARED_PREFIX` tokens.
        """
        if not self.share_prefix or self.pooling != "last" or input_ids.shape[0] < 2:
            return 0
        if (torch.is_grad_enabled() or self.training) and not self.share_prefix_with_grad:
            return 0  # in train mode GradCache's no-grad pass must match its re-forward with a graph
        if getattr(self.backbone.config, "_attn_implementation", None) not in ("eager", "sdpa"):
            return 0
        p = common_prefix_length(input_ids, attention_mask)
        return p if p >= self.MIN_SHARED_PREFIX else 0

    def _forward_after_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int) -> torch.Tensor:
        """:meth:`forward` with the first ``p`` tokens (the same in every row) run once
        (:func:`~embedtune.models.prefix.run_after_prefix`)."""
        memo = None if torch.is_grad_enabled() else self._prefix_memo  # with a graph the prefix must run
        hidden, rest = run_after_prefix(self.backbone, input_ids, attention_mask, p, memo)
        return self.pool(hidden, rest)  # (B, D)

    @contextmanager
    def prefix_cache(self) -> Iterator[None]:
        """Within this block the shared prompt prefix's keys and values (:meth:`shared_prefix_length`) are
        computed once and reused by every inference forward, across :meth:`encode_ids` calls; on leaving it
        they are dropped. Weights and autocast must not change inside: the HTTP server's batching worker,
        which owns a fixed model, holds one for its whole life. Nested blocks share the outer one's cache;
        each :meth:`encode_ids` call opens one of its own otherwise."""
        if self._prefix_memo is not None:
            yield
            return
        self._prefix_memo = {}
        try:
            yield
        finally:
            self._prefix_memo = None
