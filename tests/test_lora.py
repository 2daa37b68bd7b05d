"""LoRA targets: the paper's q_proj/v_proj named per model family, from PEFT's defaults or our overrides."""

from __future__ import annotations

import pytest

from embedtune.training.lora import qv_targets

# The query/value projections of each family as embedtune has always adapted them.
EXPECTED = {
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"], "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"], "minicpm": ["q_proj", "v_proj"], "phi": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"], "opt": ["q_proj", "v_proj"], "phi3": ["qkv_proj"], "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"], "falcon": ["query_key_value"], "bloom": ["query_key_value"],
    "gpt_bigcode": ["c_attn"], "mpt": ["Wqkv"],
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_qv_targets_name_the_query_and_value_projections(model_type):
    assert qv_targets(model_type) == EXPECTED[model_type]


def test_unknown_families_and_regex_defaults_give_none():
    assert qv_targets("no-such-family") is None
    assert qv_targets(None) is None
    assert qv_targets("gemma4") is None  # PEFT's default there is a regex, not a list of names
