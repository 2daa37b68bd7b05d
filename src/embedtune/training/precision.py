"""Mixed precision of a training run: which autocast it trains under, and its frozen weights held in that type."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from ..models.runtime import AUTOCAST_DTYPES


def make_autocast(precision: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """Autocast factory and the precision actually used. ``auto``: bf16 on GPUs that support it, else fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext, precision
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU; use bf16 (fast on CPUs with AVX512-BF16/AMX) or fp32")
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), precision


def hold_frozen_linears_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights of frozen linear layers to ``dtype`` (the autocast type); returns how many.

    Autocast casts a linear layer's float32 weight to its compute type on every forward and caches the
    copy only for weights that require grad, so a frozen base model is re-cast at every step. Cast once
    instead: autocast then finds the weight already in its type, and computes exactly the same numbers
    (the same rounding, done once). Biases, embeddings, norms and LoRA weights keep their type. Outside
    autocast such a model needs its inputs in ``dtype``, so the trainer evaluates it under autocast.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad \
                and module.weight.dtype != dtype and module.weight.is_floating_point():
            module.weight.data = module.weight.data.to(dtype)
            count += 1
    return count
