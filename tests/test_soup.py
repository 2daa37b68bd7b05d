from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_lora_run

from embedtune.cli import main
from embedtune.export import merged_backbone
from embedtune.models.embedder import Embedder
from embedtune.soup import SoupError, make_soup

TEXTS = ["a man plays guitar", "the dog", "two children are playing in the park near the red house"]


def lora_run(base: Path, folder: Path, seed: int, **options) -> Path:
    """A run folder with a seed-dependent adapter on q/v/up (A and B factors both differ between seeds)."""
    make_lora_run(base, folder, targets=("q_proj", "v_proj", "up_proj"), b_std=0.3, seed=seed, **options)
    return folder


def merged_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in merged_backbone(Embedder.load(folder, device="cpu")).state_dict().items()}


@pytest.mark.parametrize("mix", [None, [1.0, 3.0]])
def test_soup_update_is_the_weighted_mean_of_the_runs_updates(tiny_llama, tmp_path, mix):
    runs = [lora_run(tiny_llama, tmp_path / f"run{s}", seed=s, prompt="p1") for s in (1, 2)]
    out = make_soup(runs, tmp_path / "soup", mix=mix)
    w = [0.5, 0.5] if mix is None else [0.25, 0.75]
    first, second, soup = merged_weights(runs[0]), merged_weights(runs[1]), merged_weights(out)
    assert first.keys() == soup.keys()
    changed = 0
    for key in soup:  # merged = base + update, so the mean of merged weights is base + the mean update
        torch.testing.assert_close(soup[key], w[0] * first[key] + w[1] * second[key], rtol=1e-5, atol=1e-6)
        changed += not torch.equal(first[key], second[key])
    assert changed >= 3  # the runs really differ, so the check above is not trivially met
    emb = Embedder.load(out, device="cpu")
    assert emb.has_adapter() and emb.prompt == Embedder.load(runs[0], device="cpu").prompt
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)  # two rank-4, alpha-8 runs: scaling alpha / r unchanged
    meta = json.loads((out / "embedtune.json").read_text())
    assert [s["weight"] for s in meta["soup"]] == w
    vectors = emb.encode(TEXTS)
    assert np.isfinite(vectors).all() and not np.allclose(vectors, Embedder.load(runs[0], device="cpu").encode(TEXTS))


def test_soup_refuses_runs_that_encode_differently_and_leaves_nothing(tiny_llama, tmp_path):
    a = lora_run(tiny_llama, tmp_path / "a", seed=1, prompt="p1")
    b = lora_run(tiny_llama, tmp_path / "b", seed=2, prompt="p2")
    with pytest.raises(SoupError, match=r"b/embedtune.json: prompt is .* but .*a/embedtune.json has"):
        make_soup([a, b], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
    with pytest.raises(SoupError, match="at least two runs"):
        make_soup([a], tmp_path / "soup")
    with pytest.raises(SoupError, match="given twice"):
        make_soup([a, a], tmp_path / "soup")
    with pytest.raises(SoupError, match="one positive weight per run"):
        make_soup([a, lora_run(tiny_llama, tmp_path / "c", seed=3, prompt="p1")], tmp_path / "soup", mix=[1.0])
    (tmp_path / "plain").mkdir()
    with pytest.raises(SoupError, match=r"plain is not a LoRA run: embedtune.json is missing"):
        make_soup([a, tmp_path / "plain"], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_soup_command_writes_a_run_and_reports_bad_mix(tiny_llama, tmp_path, capsys):
    runs = [str(lora_run(tiny_llama, tmp_path / f"run{s}", seed=s)) for s in (1, 2)]
    assert main(["soup", *runs, "--out", str(tmp_path / "soup")]) == 0
    assert (tmp_path / "soup" / "adapter_model.safetensors").is_file()
    assert main(["soup", *runs, "--out", str(tmp_path / "soup")]) == 2  # exists: refuses without --overwrite
    assert "not empty" in capsys.readouterr().err
    assert main(["soup", *runs, "--out", str(tmp_path / "soup2"), "--mix", "1,x"]) == 2
    assert "--mix: expected a comma list of numbers" in capsys.readouterr().err
    assert not (tmp_path / "soup2").exists()
    (tmp_path / "file").write_text("x")
    assert main(["soup", *runs, "--out", str(tmp_path / "file"), "--overwrite"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"
