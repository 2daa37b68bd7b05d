"""How a model runs, apart from what it is: the weights' dtype, the autocast type, and eval mode.

One home for the name -> ``torch.dtype`` tables and the mode switch that loading, the Embedder, the peer
encoder, packed inference and the trainer share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

# Weight dtypes by every name a recipe or the command line may use.
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

# Autocast types (matrix products in that type; weights keep theirs).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_NO_AUTOCAST = ("none", "fp32", "off", "")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The weights' dtype for a name or dtype; ``auto`` (or None) is float32 on CPU and bfloat16 on GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16") from None


def parse_autocast(value: str | None) -> str | None:
    """An inference autocast setting checked: ``bf16`` or ``fp16``, or None for none (also spelt
    ``none``, ``fp32``, ``off`` or an empty string, in any case).

    Raises:
        ValueError: any other value.
    """
    if isinstance(value, str) and value.lower() in _NO_AUTOCAST:
        value = None
    if value not in AUTOCAST_DTYPES and value is not None:
        raise ValueError(f"autocast must be bf16, fp16 or none, got {value!r}")
    return value


def autocast_context(autocast: str | None, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` to ``autocast`` (``bf16``/``fp16``) on ``device``'s type; a no-op for None.

    Raises:
        ValueError: fp16 on a device other than a GPU.
    """
    if autocast is None:
        return nullcontext()
    if autocast == "fp16" and device.type != "cuda":
        raise ValueError("autocast fp16 needs a GPU; use bf16 on CPUs")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and give it back in the mode it had (training or not),
    also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
