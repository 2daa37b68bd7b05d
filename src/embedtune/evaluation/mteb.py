"""Run the MTEB benchmark (``pip install 'embedtune[mteb]'``, mteb >= 2) with an embedtune model.

mteb 2.x calls ``model.encode(dataloader, *, task_metadata, hf_split, hf_subset, prompt_type, **kwargs)``
where each batch of the dataloader is a dict holding a ``"text"`` list, and expects an (N, D) array back;
it scores with the model's ``similarity``/``similarity_pairwise`` and reads ``mteb_model_meta``.
:class:`EmbedtuneEncoder` implements that protocol (``mteb.models.EncoderProtocol``) over an
:class:`~embedtune.Embedder`::

    import mteb
    from embedtune import Embedder
    from embedtune.evaluation.mteb import EmbedtuneEncoder

    model = EmbedtuneEncoder(Embedder.from_pretrained("default"))
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))

MTEB downloads its data sets from the Hugging Face hub; embedtune's own ``embedtune eval`` needs no network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import resolve_prompt

try:
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ScoringFunction
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError("embedtune.evaluation.mteb needs the 'mteb' package (>= 2.0): "
                      "pip install 'embedtune[mteb]'") from None

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import DataLoader

    from ..models.embedder import Embedder


class EmbedtuneEncoder(AbsEncoder):
    """An :class:`~embedtune.Embedder` behind MTEB's encoder protocol.

    Args:
        embedder: the model (its prompt, pooling and normalization are used as configured).
        name: model name for MTEB's result folders, ``org/name`` form (default: derived from the source).
        batch_size: encode batch size when MTEB passes none.
        prompts: optional templates with ``{}`` keyed by MTEB task name, task type (``STS``, ``Retrieval`` …)
            or prompt type (``query``, ``document``); the most specific match replaces the embedder's
            own prompt for that call.
    """

    def __init__(
        self,
        embedder: Embedder,
        name: str | None = None,
        batch_size: int = 64,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.model = embedder
        self.batch_size = batch_size
        self.prompts = {key: resolve_prompt(template) for key, template in (prompts or {}).items()}
        source = getattr(embedder, "source", None)
        if name is None:
            spec = source.spec if source is not None else "model"
            name = spec if spec.count("/") == 1 and not spec.startswith((".", "/")) else f"embedtune/{spec}"
            name = name if name.count("/") == 1 else "embedtune/" + name.strip("/").replace("/", "__")
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name,
            "embed_dim": embedder.dim,
            "max_tokens": embedder.max_length,
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"],
            "use_instructions": bool(self.prompts),
        })

    def _prompt_for(self, task_metadata: Any, prompt_type: Any) -> str | None:
        kind = getattr(prompt_type, "value", prompt_type)
        task = getattr(task_metadata, "name", None)
        task_type = getattr(task_metadata, "type", None)
        for key in (f"{task}-{kind}", task, f"{task_type}-{kind}", task_type, kind):
            if key in self.prompts:
                return self.prompts[key]
        return None

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of MTEB's dataloader; returns float32 (N, D) in dataloader order.

        Args:
            inputs: batches (dicts) whose ``"text"`` entry is a list of strings.
            task_metadata: the MTEB task's metadata (selects a prompt from ``prompts``).
            hf_split: split name (unused; part of the protocol).
            hf_subset: subset name (unused; part of the protocol).
            prompt_type: ``query`` / ``document`` or None.
            kwargs: ``batch_size`` and ``show_progress_bar`` are honoured.
        """
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"EmbedtuneEncoder encodes text only; got a batch with keys {sorted(batch)}")
            texts.extend(batch["text"])
        template = self._prompt_for(task_metadata, prompt_type)
        tok = self.model.text_tokenizer
        saved = tok.prompt
        if template is not None:
            tok.prompt = template
        try:
            return self.model.encode(
                texts,
                batch_size=int(kwargs.get("batch_size") or self.batch_size),
                show_progress=bool(kwargs.get("show_progress_bar", False)),
            )
        finally:
            tok.prompt = saved
