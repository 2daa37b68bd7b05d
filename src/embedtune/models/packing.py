"""Packed inference: several id rows in one sequence, no padding (used by the server's micro-batches).

:class:`PackedEncoder` wraps an :class:`~embedtune.models.embedder.Embedder` with what packing needs: the
packed forward pass, the probe that decides whether the model may pack, and the attention cost that
:func:`~embedtune.batching.plan_passes` weighs. The Embedder itself knows nothing of packing.

The rows are laid end to end as one (1, T) sequence with positions restarting at 0 for each row; given
position ids and no attention mask, transformers' mask builder (4.56+, ``masking_utils``) reads the
restarts as packed sequences and gives each row a causal mask of its own, so no token sees another row
and no compute goes to padding. Models whose custom code ignores this are caught by :func:`probe`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .runtime import eval_mode

if TYPE_CHECKING:
    from .embedder import Embedder

log = logging.getLogger(__name__)

PROBE_TEXTS = ["A man is playing a guitar on the stage tonight.", "Two dogs run.", "The woman slices a tomato."]


def forward_packed(backbone: nn.Module, pool: Callable, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Id rows -> pooled (N, D) embeddings, not normalized, in one pass of ``backbone`` over the packed
    rows. Each row's hidden states are laid out as a padded batch for ``pool`` (hidden, mask) -> (N, D)."""
    device = next(backbone.parameters()).device
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)  # (N,)
    if len(rows) == 0 or int(lengths.min()) < 1:
        raise ValueError("forward_packed needs at least one row and no empty row")
    segment = torch.repeat_interleave(torch.arange(len(rows)), lengths)  # (T,) row of each token
    starts = torch.cumsum(lengths, 0) - lengths  # (N,)
    positions = torch.arange(int(lengths.sum())) - starts[segment]  # (T,) restart at 0 per row
    segment, positions = segment.to(device), positions.to(device)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=device)  # (T,)
    hidden = backbone(input_ids=ids.unsqueeze(0), position_ids=positions.unsqueeze(0), use_cache=False
                      ).last_hidden_state[0]  # (T, D)
    width = int(lengths.max())
    padded = hidden.new_zeros(len(rows), width, hidden.shape[-1])  # (N, W, D)
    padded[segment, positions] = hidden
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # (N, W)
    mask[segment, positions] = 1
    return pool(padded, mask)  # (N, D)


def probe(embedder: Embedder) -> bool:
    """Whether ``embedder`` gives its padded-batch vectors when packed: on three texts of different lengths,
    each packed vector within a relative error of 1e-3 (fp32 weights; 2e-2 for half-precision weights) of
    the padded one. Raw (unnormalized) hidden states of different texts already point in similar
    directions, so a cosine would hide a partial leak; the relative error does not. Custom model code that
    ignores packing (a plain causal mask over the whole sequence, or an all-ones mask that turns
    transformers' packing detection off) lets rows see each other and fails."""
    rows = embedder.text_tokenizer.ids(PROBE_TEXTS)
    try:
        with eval_mode(embedder), torch.inference_mode():
            batch = embedder.text_tokenizer.pad(rows)
            device = embedder.device
            padded = embedder(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float()
            packed = forward_packed(embedder.backbone, embedder.pool, rows).float()
        error = ((packed - padded).norm(dim=-1) / padded.norm(dim=-1).clamp(min=1e-12)).max().item()
        half = next(embedder.backbone.parameters()).dtype in (torch.float16, torch.bfloat16)
        ok = error <= (2e-2 if half else 1e-3)
        if not ok:
            log.warning("packed sequences change this model's embeddings (relative error %.2g); "
                        "embedding server batches as padded passes instead", error)
        return ok
    except Exception as exc:  # noqa: BLE001 - any failure means: do not pack
        log.warning("packed sequences do not work with this model (%s: %s); embedding server batches as "
                    "padded passes instead", type(exc).__name__, exc)
        return False


def attention_tokens(backbone: nn.Module) -> float:
    """Sequence length at which a token's attention costs as many FLOPs as its linear layers (the quadratic
    term of :func:`~embedtune.batching.plan_passes`' cost model), from the parameter count and attention
    width; about 3,073 for SmolLM2-135M."""
    config = backbone.config
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    embeddings = backbone.get_input_embeddings()
    body = sum(p.numel() for p in backbone.parameters()) - (embeddings.weight.numel() if embeddings else 0)
    # Per token and layer: linear 2 x params FLOPs; attention 2 x 2 x heads x head_dim per key.
    return max(2.0 * body / layers / (4.0 * heads * head_dim), 1.0)


class PackedEncoder:
    """Embeds groups of id rows (as made by ``embedder.text_tokenizer.ids``) in packed passes with ``embedder``.

    The probe (:attr:`supported`) and :attr:`attention_tokens` are computed on first use and kept; make a
    new PackedEncoder after swapping the embedder's backbone.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._supported: bool | None = None
        self._attention_tokens: float | None = None

    @property
    def supported(self) -> bool:
        """Whether packed passes give this model's padded-batch vectors (:func:`probe`)."""
        if self._supported is None:
            self._supported = probe(self.embedder)
        return self._supported

    @property
    def attention_tokens(self) -> float:
        """:func:`attention_tokens` of the embedder's backbone."""
        if self._attention_tokens is None:
            self._attention_tokens = attention_tokens(self.embedder.backbone)
        return self._attention_tokens

    def forward(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Id rows -> pooled (N, D) embeddings, not normalized, in one pass over a single packed sequence."""
        return forward_packed(self.embedder.backbone, self.embedder.pool, rows)

    def encode(self, rows: Sequence[Sequence[int]], normalize: bool | None = None) -> np.ndarray:
        """Embed id rows in one packed pass, under the embedder's autocast. Returns float32 (N, D) in input
        order. For groups of texts that arrived together (a server batch); a corpus is faster through
        ``Embedder.encode_ids``, whose length-sorted batches carry no padding either.

        Raises:
            ValueError: this model does not give the padded vectors when packed (:attr:`supported`).
        """
        if not self.supported:
            raise ValueError("this model does not give the same embeddings for packed sequences; use encode_ids")
        embedder = self.embedder
        normalize = embedder.normalize if normalize is None else normalize
        if not rows:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        with eval_mode(embedder), torch.inference_mode(), embedder.autocast_context():
            emb = self.forward(rows).float()  # (N, D)
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            return emb.cpu().numpy()
