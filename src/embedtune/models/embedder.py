"""The Embedder: tokenizer + transformer body (+ LoRA adapter) + prompt + EOS + pooling.

``Embedder.forward`` maps token ids to (B, D) embeddings with a graph (training); ``Embedder.encode``
maps texts to a float32 numpy array (inference). Both share :class:`~embedtune.data.collate.TextTokenizer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_MODEL, ModelConfig, resolve_prompt
from ..data.collate import TextTokenizer, batches_by_length, position_ids
from .loading import ModelSource, default_device, load_backbone, load_tokenizer, resolve_source
from .pooling import get_pooler
from .prefix import PrefixSharing
from .runtime import autocast_context, eval_mode, parse_autocast, resolve_dtype

CONFIG_NAME = "embedtune.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbedderOptions:
    """How an Embedder turns a text into a vector besides its weights; saved in ``embedtune.json``, read
    from a recipe's ``model`` section, and carried over by exports."""

    pooling: str = "last"
    prompt: str | None = None
    max_length: int = 128
    normalize: bool = True
    padding_side: str = "right"

    @classmethod
    def from_mapping(cls, values: Any, **overrides: Any) -> EmbedderOptions:
        """The options found in ``values`` (a dict such as embedtune.json, or an object such as a
        ``ModelConfig``), then ``overrides``."""
        get = values.get if isinstance(values, dict) else lambda k, d: getattr(values, k, d)
        found = {f.name: get(f.name, f.default) for f in fields(cls)}
        return cls(**{**found, **overrides})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_texts(texts: Any) -> list[str]:
    """Check that ``texts`` is a sequence of non-empty strings; the error names the first bad index."""
    if isinstance(texts, str):
        raise ValueError("encode() takes a list of strings, not a single string; wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"text at index {i} is a {type(t).__name__}, expected a non-empty string")
        if not t.strip():
            raise ValueError(f"text at index {i} is empty or whitespace-only; expected a non-empty string")
    return texts


class Embedder(PrefixSharing, nn.Module):
    """A causal LM turned into a text embedder.

    Args:
        backbone: transformer body returning ``last_hidden_state`` (``AutoModel``, optionally a PEFT model).
        tokenizer: its tokenizer.
        pooling: ``last`` (EOS state, the paper's), ``mean`` or ``weighted_mean``.
        prompt: template with ``{}``, a prompt name (``p1``..``p3``) or None.
        max_length: token cap per text, EOS included.
        normalize: L2-normalize the vectors that :meth:`encode` returns.
        padding_side: ``right`` or ``left``.
        source: where the base model came from (recorded by :meth:`save`).
        autocast: ``bf16`` or ``fp16`` runs :meth:`encode` under ``torch.autocast`` (matrix products in that
            type; weights and the residual stream keep the load dtype); None (default) does not. Its speed
            and its effect on scores are measured in docs/results.md. A runtime choice: not saved.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "last",
        prompt: str | None = None,
        max_length: int = 128,
        normalize: bool = True,
        padding_side: str = "right",
        source: ModelSource | None = None,
        autocast: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.autocast = autocast
        self.pooling = pooling
        self._pool = get_pooler(pooling)
        self.normalize = normalize
        self.source = source
        self.text_tokenizer = TextTokenizer.from_tokenizer(
            tokenizer,
            getattr(backbone, "config", None),
            prompt=resolve_prompt(prompt),
            max_length=max_length,
            padding_side=padding_side,
        )

    @property
    def autocast(self) -> str | None:
        """Inference autocast type (``bf16``, ``fp16``) or None."""
        return self._autocast

    @autocast.setter
    def autocast(self, value: str | None) -> None:
        self._autocast = parse_autocast(value)

    def autocast_context(self):
        """The context inference runs under: ``torch.autocast`` to :attr:`autocast` on this model's device,
        or a no-op (ValueError for fp16 off a GPU)."""
        return autocast_context(self._autocast, self.device)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        adapter: str | Path | None = None,
        gguf_file: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = "auto",
        num_layers: int | None = None,
        **options: Any,
    ) -> Embedder:
        """Load a base model (hub id, folder, ``.gguf``, or ``default``) and optionally a LoRA adapter.

        ``attn_implementation``: ``auto`` (eager on CPU, transformers' choice on GPU), ``eager``, ``sdpa``
        or ``flash_attention_2``. ``num_layers``: keep only the first N decoder layers (None: all).
        ``options`` are the constructor's keyword arguments (pooling, prompt, max_length, normalize,
        padding_side).
        """
        source = resolve_source(model or DEFAULT_MODEL, gguf_file)
        device = device or default_device()
        backbone = load_backbone(source, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                 attn_implementation=attn_implementation, num_layers=num_layers)
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        if adapter is not None:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(adapter)).to(device).eval()
        return cls(backbone, tokenizer, source=source, **options)

    @classmethod
    def from_config(cls, m: ModelConfig, device: str | None = None) -> Embedder:
        """Build from a recipe's ``model`` section (what training and experiments share)."""
        return cls.from_pretrained(
            m.name_or_path, gguf_file=m.gguf_file, dtype=m.dtype, device=device, trust_remote_code=m.trust_remote_code,
            attn_implementation=m.attn_implementation, num_layers=m.num_layers,
            **EmbedderOptions.from_mapping(m).as_dict(),
        )

    @property
    def tokenizer(self) -> Any:
        return self.text_tokenizer.tokenizer

    @property
    def options(self) -> EmbedderOptions:
        """This embedder's options (prompt as its template)."""
        return EmbedderOptions(self.pooling, self.prompt, self.max_length, self.normalize,
                               self.text_tokenizer.padding_side)

    @property
    def prompt(self) -> str | None:
        return self.text_tokenizer.prompt

    @property
    def max_length(self) -> int:
        return self.text_tokenizer.max_length

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def num_layers(self) -> int | None:
        """Decoder layers the backbone runs (None when its config does not say)."""
        return getattr(self.backbone.config, "num_hidden_layers", None)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and mask (B, L) -> pooled embeddings (B, D), not normalized.

        The tokens that open every row of the batch alike (P1's ``This sentence: "``) run once and their
        keys and values serve every row (:meth:`shared_prefix_length`): always without a graph, in training
        where the trainer allows it; the result is the same up to float rounding.
        """
        p = self.shared_prefix_length(input_ids, attention_mask)
        if p:
            return self._forward_after_prefix(input_ids, attention_mask, p)
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            # Positions from each row's first real token: left padding then equals right padding.
            position_ids=position_ids(attention_mask),
            use_cache=False,
        )
        return self.pool(out.last_hidden_state, attention_mask)  # (B, D)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, D) and mask (B, L) -> (B, D) by this embedder's pooling."""
        return self._pool(hidden, attention_mask)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.text_tokenizer(texts, max_length)

    # ---- inference --------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts. Returns float32 (N, D) in input order.

        Batches are formed from texts of similar token length, so little compute goes to padding.

        Raises:
            ValueError: a text is not a non-empty string (the message names its index).
        """
        texts = validate_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self.text_tokenizer.ids(texts, max_length)
        return self.encode_ids(rows, batch_size=batch_size, normalize=normalize, show_progress=show_progress)

    def encode_ids(
        self,
        rows: Sequence[Sequence[int]],
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed rows already made by ``self.text_tokenizer.ids`` (prompt applied, EOS last). Returns
        float32 (N, D) in input order. :meth:`encode` and the HTTP server (which must count tokens and
        check limits before embedding) both end here."""
        normalize = self.normalize if normalize is None else normalize
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        if not rows:
            return out
        device = self.device
        from tqdm.auto import tqdm

        with self.prefix_cache(), eval_mode(self), torch.inference_mode(), self.autocast_context(), tqdm(
            total=len(rows), desc="encode", unit="text", disable=not show_progress, dynamic_ncols=True
        ) as bar:
            for idx in batches_by_length([len(r) for r in rows], batch_size):
                batch = self.text_tokenizer.pad([rows[i] for i in idx])
                emb = self(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float()  # (b, D)
                if normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out[idx] = emb.cpu().numpy()
                bar.update(len(idx))
        return out

    # ---- persistence ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What :meth:`save` writes to ``embedtune.json`` (besides weights)."""
        return {
            "format_version": FORMAT_VERSION,
            **self.options.as_dict(),
            "num_layers": self.num_layers,
            "eos": {"token_id": self.text_tokenizer.eos_id, "appended": "always, after truncation, never doubled"},
            "embedding_dim": self.dim,
        }

    def has_adapter(self) -> bool:
        from peft import PeftModel

        return isinstance(self.backbone, PeftModel)

    def save(self, directory: str | Path) -> Path:
        """Save so that :meth:`load` reproduces the same embeddings.

        With a LoRA adapter, writes the adapter (PEFT format) and records the base model; without one,
        writes the full weights and tokenizer (a merged or fully fine-tuned model).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = self.settings()
        if self.has_adapter():
            self.backbone.save_pretrained(str(directory))
            meta["base_model"] = self.source.spec if self.source else None
            meta["gguf_file"] = self.source.gguf_file if self.source and self.source.kind == "gguf" else None
            meta["adapter"] = True
        else:
            self.backbone.save_pretrained(str(directory))
            meta["base_model"] = "."
            meta["adapter"] = False
        self.tokenizer.save_pretrained(str(directory))
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        trust_remote_code: bool = False,
        base_model: str | None = None,
        **overrides: Any,
    ) -> Embedder:
        """Load what :meth:`save` (or a training run, or ``embedtune export``) wrote.

        Args:
            directory: folder holding ``embedtune.json``.
            base_model: override the recorded base model (e.g. a local copy of a hub model).
            overrides: change a recorded option (:class:`EmbedderOptions`), or set a runtime one (autocast).
        """
        directory = Path(directory)
        meta_path = directory / CONFIG_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {directory} was not written by embedtune")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        names = {f.name for f in fields(EmbedderOptions)}
        options = {**EmbedderOptions.from_mapping(meta, **{k: v for k, v in overrides.items() if k in names}).as_dict(),
                   **{k: v for k, v in overrides.items() if k not in names}}  # e.g. autocast
        if meta.get("adapter"):
            return cls.from_pretrained(
                base_model or meta["base_model"],
                adapter=directory,
                gguf_file=meta.get("gguf_file"),
                num_layers=meta.get("num_layers"),  # the adapter was trained on the base cut to this depth
                device=device,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                **options,
            )
        device = device or default_device()
        source = ModelSource("local", str(directory), spec=str(directory))
        backbone = load_backbone(source, dtype=resolve_dtype(dtype, device), device=device,
                                 trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        return cls(backbone, tokenizer, source=source, **options)
