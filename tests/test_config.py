"""Recipes: YAML files, ``base:`` inheritance, dotted overrides and their error messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from embedtune.config import (
    ConfigError,
    ModelConfig,
    coerce_value,
    field_type,
    get_value,
    load_config,
    parse_override,
    resolve_prompt,
    set_values,
)


def test_overrides_are_typed_and_applied_after_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"lr": 1e-3, "batch_size": 8}, "lora": {"r": 4}}))
    cfg = load_config(recipe, ["train.lr=5e-4", "lora.target_modules=[q_proj, k_proj]", "model.prompt=null",
                               "data.train_files=[{data}/a.csv,{data}/b.csv]", "train.max_steps=null"])
    assert cfg.train.lr == 5e-4 and cfg.train.batch_size == 8 and cfg.lora.r == 4
    assert cfg.lora.target_modules == ["q_proj", "k_proj"] and cfg.model.prompt is None
    assert cfg.data.train_files == ["{data}/a.csv", "{data}/b.csv"] and cfg.train.max_steps is None
    assert parse_override("train.lr=0.1") == (["train", "lr"], 0.1)


@pytest.mark.parametrize("unset", ["null", "none", "None", "~"])
def test_the_teacher_is_unset_by_null_or_none(unset):
    assert load_config(None, ["train.teacher=all-MiniLM-L6-v2", f"train.teacher={unset}"]).train.teacher is None
    assert load_config(None, ["train.teacher=none-such"]).train.teacher == "none-such"  # only the word itself


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("train.batch_size=3.5", "train.batch_size: expected an integer, got 3.5"),
    ("data.decontaminate=maybe", "data.decontaminate: expected true or false, got 'maybe'"),
    ("train.lrr=1", "unknown config key 'train.lrr'; known: .*lr"),
    ("trainer.lr=1", "unknown config key 'trainer'; known: data, eval, lora, model, train"),
    ("train=1", "train: expected a section"),
    ("train.lr", "must look like section.key=value"),
    ("train.eval_every=5", "train.eval_every has moved to eval.every"),  # a key of earlier recipes
    ("eval.autocast=int8", "eval.autocast: expected bf16, fp16 or none, got 'int8'"),
    ("train.precision=fp8", "train.precision: expected auto, fp32, bf16 or fp16, got 'fp8'"),
    ("model.pooling=max", "model.pooling: expected last, mean or weighted_mean, got 'max'"),
    ("model.padding_side=top", "model.padding_side: expected right or left, got 'top'"),
    ("train.loss=triplet", "train.loss: expected info_nce, symmetric or anchors, got 'triplet'"),
    ("train.teacher_scope=all", "train.teacher_scope: expected anchors or batch, got 'all'"),
])
def test_override_errors_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_every_evaluation_setting_is_in_the_eval_section():
    cfg = load_config(None, ["eval.every=5", "eval.dev_task=dev.tsv", "eval.dev_max_pairs=100",
                             "eval.tasks=[STS12, BIOSSES]", "eval.autocast=none"])
    assert (cfg.eval.every, cfg.eval.dev_task, cfg.eval.dev_max_pairs) == (5, "dev.tsv", 100)
    assert cfg.eval.tasks == ["STS12", "BIOSSES"] and cfg.eval.autocast is None
    assert load_config(None, ["eval.autocast=bf16"]).eval.autocast == "bf16"
    assert not any(name.startswith("eval") for name in vars(cfg.train))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping of sections"):
        load_config(bad)
    bad.write_text("train: {lr: high}\n")
    with pytest.raises(ConfigError, match="bad.yaml: train.lr: expected a number"):
        load_config(bad)


def test_a_recipe_starts_from_its_base_and_replaces_fields_one_by_one(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(yaml.safe_dump(
        {"model": {"prompt": "p1", "max_length": 150}, "train": {"lr": 5e-5, "batch_size": 28}}))
    child = tmp_path / "child.yaml"
    child.write_text("base: shared/base.yaml\nmodel: {name_or_path: org/model}\ntrain: {lr: 1.0e-4}\n")
    cfg = load_config(child)
    assert (cfg.model.name_or_path, cfg.model.prompt, cfg.model.max_length) == ("org/model", "p1", 150)
    assert (cfg.train.lr, cfg.train.batch_size) == (1e-4, 28)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back to itself"):
        load_config(loop)
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml does not exist \(the base of .*orphan.yaml\)"):
        load_config(orphan)


def test_the_paper_recipes_differ_only_in_their_model():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    loaded = {m: load_config(configs / f"{m}.yaml").to_dict() for m in ("minicpm-2b", "phi-2", "gemma-2b")}
    for d in loaded.values():
        assert (d["train"]["lr"], d["train"]["batch_size"], d["lora"]["target_modules"]) == (5e-5, 28,
                                                                                             ["q_proj", "v_proj"])
        d["model"].pop("name_or_path"), d["model"].pop("trust_remote_code"), d["train"].pop("output_dir")
    assert loaded["minicpm-2b"] == loaded["phi-2"] == loaded["gemma-2b"]


def test_dotted_key_helpers():
    cfg = load_config(None)
    assert field_type("train.lr") is float
    assert coerce_value("model.num_layers", "24") == 24
    set_values(cfg, {"model.num_layers": 20, "lora.target_modules": "all-linear"})
    assert get_value(cfg, "model.num_layers") == 20 and cfg.lora.target_modules == ["all-linear"]
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        field_type("model.depth")
    with pytest.raises(ConfigError, match="is a section"):
        field_type("train")


def test_prompts_by_name_or_template():
    assert resolve_prompt("P1") == 'This sentence: "{}" means in one word: '
    assert resolve_prompt("query: {}") == "query: {}" and resolve_prompt(None) is None
    with pytest.raises(ValueError, match="neither a known name"):
        resolve_prompt("no placeholder")


def test_the_pooling_choices_are_the_poolers():
    """config (a foundation) cannot import the models layer, so it lists the poolers' names itself."""
    from embedtune.models.pooling import POOLERS

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(ModelConfig)}["pooling"]
    assert set(choices) == set(POOLERS)


def test_experiments_measured_before_the_synthetic_pairs_keep_them_off():
    """The default recipe writes synthetic pairs; the grids measured before it did pin them off, so that
    their recorded numbers (docs/results.md) still come from what they run."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "configs" / "default-cpu.yaml").data.synthetic.pairs > 0
    for name in ("cpu", "depth", "levers-24"):
        spec = yaml.safe_load((root / "configs" / "experiments" / f"{name}.yaml").read_text())
        assert spec["base_config"] == "configs/default-cpu.yaml"
        assert load_config(root / spec["base_config"], spec["overrides"]).data.synthetic.pairs == 0, name
