"""embedtune: turn small decoder language models into text-embedding models with LoRA contrastive fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

__all__ = [
    "Embedder",
    "create_app",
    "evaluate_sts",
    "export_merged",
    "export_sentence_transformers",
    "load_config",
    "load_sts",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from .config import load_config
    from .data.sts import load_sts
    from .evaluation.sts import evaluate_sts
    from .export import export_merged, export_sentence_transformers
    from .models.embedder import Embedder
    from .serving import create_app

_LAZY = {
    "Embedder": ".models.embedder",
    "create_app": ".serving",
    "export_merged": ".export",
    "export_sentence_transformers": ".export",
    "evaluate_sts": ".evaluation.sts",
    "load_config": ".config",
    "load_sts": ".data.sts",
}


def __getattr__(name: str):
    # Lazy imports keep `import embedtune` (and the CLI's --help) fast: torch loads only when needed.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'embedtune' has no attribute {name!r}")
