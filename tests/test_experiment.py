"""The experiment runner on a tiny model and a tiny data folder: cells, shared base eval, resume, report."""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings

import pytest
import yaml

from embedtune.experiment import cell_status, expand_cells, load_spec, run_experiment

SENTS = ["a man plays guitar", "a man plays piano", "the dog runs in the park", "a dog runs", "the cat sits",
         "a cat sits on the car", "two children eat food", "children are eating", "a woman is happy",
         "the woman is sad", "a red car", "the blue house"]


def _data_dir(root):
    for name, file in [("STSBenchmark", "test.tsv"), ("STSBenchmark", "dev.tsv")]:
        folder = root / "sts" / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / file, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["sentence1", "sentence2", "score"])
            for i in range(0, len(SENTS) - 1):
                w.writerow([SENTS[i], SENTS[i + 1], f"{(i * 7) % 5}.0"])
    nli = root / "nli.csv"
    with open(nli, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        for i in range(16):
            w.writerow([f"{SENTS[i % 12]} near the house", SENTS[i % 12], SENTS[(i + 5) % 12]])
    return root


def _spec(tmp_path, tiny_llama):
    data = _data_dir(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_llama)},
        "lora": {"r": 4},
        "data": {"train_files": [str(data / "nli.csv")], "data_dir": str(data), "decontaminate": False},
        "train": {"batch_size": 4, "max_steps": 3, "warmup_steps": 1, "save_every": 0},
        "eval": {"every": 2, "tasks": ["STSBenchmark"]},
    }))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "tiny", "base_config": str(recipe), "output_dir": str(tmp_path / "out"), "models": [str(tiny_llama)],
        "reference": {"lr": 1e-3}, "ablate": {"lr": [1e-2], "hard_negatives": [False]},
    }, sort_keys=False))
    return load_spec(exp), data


def test_experiment_runs_cells_shares_base_eval_and_resumes(tmp_path, tiny_llama, monkeypatch):
    spec, data = _spec(tmp_path, tiny_llama)
    cells = expand_cells(spec)
    assert [c.varied for c in cells] == ["reference", "train.lr", "data.hard_negatives"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny benchmark files have fewer rows than the real ones
        report = run_experiment(spec, data_dir=str(data), max_cells=2)
        text = (report / "README.md").read_text()
        assert "Cells finished: 2 of 3" in text and "Learning rate ablation" in text
        assert (report / f"ablation_lr__{cells[0].model_key}" / "comparison.png").is_file()
        assert len(list((tmp_path / "out" / "base").iterdir())) == 1  # one base eval shared by the cells

        calls = []
        import embedtune.training.trainer as trainer_mod  # run_cell imports train from here at call time

        original = trainer_mod.train

        def counting(cfg, **kw):
            calls.append(cfg.train.output_dir)
            return original(cfg, **kw)

        monkeypatch.setattr(trainer_mod, "train", counting)
        report = run_experiment(spec, data_dir=str(data))
    assert len(calls) == 1 and "hn-0" in calls[0]  # finished cells were skipped
    everything = json.loads((report / "experiment.json").read_text())
    assert len(everything["cells"]) == 3
    assert all("mean" in c["final"] for c in everything["cells"])
    assert (report / "curve.png").is_file()

    # Changing the recipe or the evaluation between calls must not mix results of different settings.
    changed = dataclasses.replace(spec, overrides=["train.max_steps=5"])
    assert [cell_status(c, spec, str(data)) for c in cells] == [("done", [])] * 3
    # --list tells which finished cells such a change would stop at, before a run fails on them
    assert cell_status(cells[0], changed, str(data)) == ("stale", ["config.train.max_steps: 3 -> 5"])
    msg = r"cell \S+/cells/\S+ was run with other settings \(config.train.max_steps: 3 -> 5\)"
    with pytest.raises(ValueError, match=msg):
        run_experiment(changed, data_dir=str(data))
    # A recipe field added after a cell ran is recorded nowhere: at its default it computes what the cell
    # computed, at any other value the cell is stale.
    recorded = next((tmp_path / "out" / "cells").glob("*/settings.json"))
    settings = json.loads(recorded.read_text())
    del settings["config"]["train"]["loss"]
    recorded.write_text(json.dumps(settings))
    cell = next(c for c in cells if c.name == recorded.parent.name)
    assert cell_status(cell, spec, str(data)) == ("done", [])
    symmetric = dataclasses.replace(spec, overrides=[*spec.overrides, "train.loss=symmetric"])
    assert cell_status(cell, symmetric, str(data)) == ("stale", ["config.train.loss: None -> 'symmetric'"])
    changed = dataclasses.replace(spec, overrides=[*spec.overrides, "eval.autocast=bf16"])
    status, what = cell_status(cells[1], changed, str(data))
    assert status == "stale"
    assert what == ["eval.autocast: None -> 'bf16'", "base eval.autocast: None -> 'bf16'"]
    msg = r"base evaluation \S+/base/\S+ was run with other settings \(eval.autocast: None -> 'bf16'\)"
    with pytest.raises(ValueError, match=msg):
        run_experiment(changed, data_dir=str(data))


def test_experiment_spec_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nablate: {temperature: [0.1]}\n")
    with pytest.raises(ValueError, match="ablate.temperature: unknown config key 'temperature'.*a factor is one of"):
        load_spec(bad)
    bad.write_text("name: x\nablate: {train.temperature: 0.1}\n")
    with pytest.raises(ValueError, match=r"ablate.train.temperature: expected a list of values, got 0.1"):
        load_spec(bad)
    bad.write_text("name: x\nreference: {model.num_layers: many}\n")
    with pytest.raises(ValueError, match="reference.model.num_layers: model.num_layers: expected an integer"):
        load_spec(bad)
    bad.write_text("name: x\noverrides: [eval.autocast=int8]\n")
    with pytest.raises(ValueError, match="bad.yaml: eval.autocast: expected bf16, fp16 or none, got 'int8'"):
        load_spec(bad)
    bad.write_text("name: x\neval_autocast: bf16\n")  # the key of earlier versions names its new home
    with pytest.raises(ValueError, match="eval_autocast moved into the recipe's eval section: write "
                                         "eval.autocast=VALUE under overrides"):
        load_spec(bad)
    bad.write_text("name: x\nmodles: [default]\n")
    with pytest.raises(ValueError, match="unknown key.*modles"):
        load_spec(bad)


def test_reference_defaults_to_the_recipe_and_overrides_only_the_ablated_factor(tmp_path, tiny_llama):
    """Without ``reference:``, the reference cell trains exactly the base recipe (lr, prompt, ... as the file
    says), and an ablation cell differs from the recipe in its own factor only."""
    from embedtune.config import load_config
    from embedtune.experiment import _cell_setup

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_llama), "prompt": "p1", "pooling": "last"},
        "data": {"train_files": ["x.csv"], "hard_negatives": True},
        "train": {"lr": 5e-4, "max_steps": 3},
    }))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "no-reference", "base_config": str(recipe),
                                   "output_dir": str(tmp_path / "out"), "overrides": ["train.max_steps=2"],
                                   "ablate": {"pooling": ["mean"]}}))
    spec = load_spec(exp)
    reference, ablated = expand_cells(spec)

    def trained(cell) -> dict:
        d = _cell_setup(cell, spec, tmp_path / "out", None)[0].to_dict()
        for section, key in (("train", "output_dir"), ("train", "resume")):
            d[section].pop(key)
        return d

    recipe_cfg = load_config(recipe, ["train.max_steps=2"]).to_dict()
    for section, key in (("train", "output_dir"), ("train", "resume")):
        recipe_cfg[section].pop(key)
    assert trained(reference) == recipe_cfg  # lr 5e-4 and prompt p1, not hard-coded 5e-5 and no prompt
    expected = {**recipe_cfg, "model": {**recipe_cfg["model"], "pooling": "mean"}}
    assert trained(ablated) == expected
    assert (reference.varied, ablated.varied) == ("reference", "model.pooling")
