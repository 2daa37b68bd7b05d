"""LoRA per model family: the paper's q_proj/v_proj mapped to each architecture's own module names.

The family is read from ``config.model_type``, never from a checkpoint name.
"""

from __future__ import annotations

import logging
import warnings

from torch import nn

from ..config import LoraConfig

log = logging.getLogger(__name__)

PAPER_TARGETS = ["q_proj", "v_proj"]

# The paper adapts the query and value projections. PEFT's own per-family defaults
# (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) name them for most families (GPT-2's fused c_attn,
# GPT-NeoX's query_key_value ...); these entries are the families where PEFT's default is something else
# or missing, with the paper's choice spelt out.
QV_OVERRIDES: dict[str, list[str]] = {
    "phi": ["q_proj", "v_proj"],  # PEFT's default adds the MLP's fc1 and fc2
    "nemotron_h": ["q_proj", "v_proj"],  # PEFT's default adds k_proj and o_proj
    "btlm": ["c_attn"],  # PEFT's default adds the output projection c_proj
    "minicpm": ["q_proj", "v_proj"],  # not in PEFT's table
    "phi3": ["qkv_proj"],  # not in PEFT's table; Phi-3 fuses q, k and v into one projection
}


def qv_targets(model_type: str | None) -> list[str] | None:
    """The query/value projection names of a model family (``config.model_type``): :data:`QV_OVERRIDES`,
    else PEFT's default for the family when it is a list of names; None when neither knows the family."""
    if model_type in QV_OVERRIDES:
        return QV_OVERRIDES[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    targets = peft_defaults.get(model_type)
    return list(targets) if isinstance(targets, (list, tuple)) else None  # a few entries are regexes


def _linear_names(model: nn.Module) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return names


def resolve_targets(model: nn.Module, requested: list[str] | str) -> list[str] | str:
    """Module names to adapt. The paper's ``q_proj,v_proj`` is translated for families that name their
    projections differently (GPT-2's fused ``c_attn``, Phi-3's ``qkv_proj`` …); ``all-linear`` passes through.

    Raises:
        ValueError: a requested name matches no linear layer (the message lists the available ones).
    """
    if requested == "all-linear" or requested == ["all-linear"]:
        return "all-linear"
    requested = [requested] if isinstance(requested, str) else list(requested)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if sorted(requested) == sorted(PAPER_TARGETS):
        requested = qv_targets(model_type) or requested
    available = _linear_names(model)
    missing = [t for t in requested if t not in available]
    if missing:
        raise ValueError(
            f"LoRA target(s) {', '.join(missing)} match no linear layer of this {model_type or 'model'}; "
            f"available: {', '.join(sorted(available))} (or 'all-linear')"
        )
    return requested


def apply_lora(backbone: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap ``backbone`` in a PEFT LoRA model (or, with ``cfg.enabled = False``, make every weight trainable)."""
    if not cfg.enabled:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = resolve_targets(backbone, cfg.target_modules)
    fused_conv1d = getattr(backbone.config, "model_type", None) in ("gpt2", "gpt_bigcode")
    peft_cfg = PeftLoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
        fan_in_fan_out=fused_conv1d,  # GPT-2 stores Conv1D weights transposed
    )
    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 for the renamed `is_gradient_checkpointing`; nothing for users to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(backbone, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA on %s: %d trainable parameters of %d (%.3f%%)", targets, trainable, total, 100 * trainable / total)
    return model


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Non-reentrant checkpointing that works with frozen weights and LoRA: the reentrant variant drops the
    gradient of a block whose inputs do not require grad, which silently zeroes LoRA gradients."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()
    base.config.use_cache = False


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
