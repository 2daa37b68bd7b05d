"""training/checkpoint.py and the trainer's best-checkpoint choice: which folders count, pruning, resume
resolution, refusing a checkpoint that does not fit the model, and ``best/`` holding the best dev step."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from test_training import make_examples, tiny_cfg
from torch import nn

from embedtune.evaluation import sts as sts_eval
from embedtune.models.embedder import Embedder
from embedtune.training import checkpoint as ckpt
from embedtune.training.trainer import build_embedder, train


def _save(run_dir, step, model=None):
    model = model or nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return ckpt.save_checkpoint(run_dir, step, model, opt, sched, {"note": step}, {}, keep=0)


def test_list_checkpoints_sorts_by_step_and_ignores_incomplete_folders(tmp_path):
    for step in (100, 20, 3):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "step-7").mkdir()  # a save interrupted before state.json
    (tmp_path / "checkpoints" / ".step-8.abc.tmp").mkdir()
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-3", "step-20", "step-100"]
    assert ckpt.list_checkpoints(tmp_path / "no-such-run") == []


def test_save_keeps_only_the_newest(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, opt, sched, {}, {}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-3", "step-4"]


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing saved yet: a fresh start
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    assert ckpt.resolve_resume("auto", tmp_path) == newest
    assert ckpt.resolve_resume(str(newest), tmp_path) == newest
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "checkpoints" / "step-9"), tmp_path)


def test_load_restores_weights_and_state(tmp_path):
    torch.manual_seed(0)
    saved_model = nn.Linear(3, 2)
    path = _save(tmp_path, 5, saved_model)
    fresh = nn.Linear(3, 2)
    state = ckpt.load_checkpoint(path, fresh)
    assert state == {"note": 5, "step": 5}
    torch.testing.assert_close(fresh.weight, saved_model.weight, rtol=0, atol=0)


class Two(nn.Module):
    def __init__(self, width=3, frozen_extra=False):
        super().__init__()
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 2)
        if frozen_extra:
            self.b.requires_grad_(False)


@pytest.mark.parametrize(
    ("saved", "loaded", "message"),
    [
        (Two(), nn.Linear(3, 3), r"has 4 parameter\(s\) this model lacks \(e.g. a.bias\)"),
        (Two(frozen_extra=True), Two(), r"lacks 2 trainable parameter\(s\) of this model \(e.g. b.bias\)"),
        (Two(width=3), Two(width=4), r"parameter a.bias has shape \(3,\) in the checkpoint, \(4,\) in this model"),
    ],
    ids=["extra", "missing", "shape"],
)
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_changes(tmp_path, saved, loaded,
                                                                                    message):
    path = _save(tmp_path, 1, saved)
    before = {n: p.detach().clone() for n, p in loaded.named_parameters()}
    with pytest.raises(ValueError, match=message) as err:
        ckpt.load_checkpoint(path, loaded)
    assert str(path) in str(err.value) and "lora.r" in str(err.value)
    for n, p in loaded.named_parameters():
        assert torch.equal(p, before[n])


def test_resume_with_another_lora_rank_names_the_mismatch(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=2, save_every=1)
    train(cfg, examples=make_examples(12), show_progress=False, stop_after=1)
    cfg.lora.r = 8
    cfg.train.resume = "auto"
    with pytest.raises(ValueError, match=r"step-1: parameter .*lora_A.* has shape \(4, \d+\) in the checkpoint, "
                                         r"\(8, \d+\) in this model"):
        train(cfg, examples=make_examples(12), show_progress=False)


def test_best_holds_the_adapter_of_the_best_dev_step(tiny_llama, tmp_path, monkeypatch):
    dev = tmp_path / "dev.tsv"
    with open(dev, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        for i, e in enumerate(make_examples(12, seed=5)):
            w.writerow([e.anchor, e.positive, f"{i % 5}"])
    # the dev scores the loop will see at steps 0..5: step 0 (the base model) is best but never chosen
    scripted = [0.9, 0.2, 0.6, 0.4, 0.6, 0.5]
    real = sts_eval.score_sts

    def scripted_scores(data, encode):
        assert scripted, "the loop scored the dev set more often than once per step"
        return dataclasses.replace(real(data, encode), cosine_spearman=scripted.pop(0))

    monkeypatch.setattr(sts_eval, "score_sts", scripted_scores)
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=5, save_every=1, keep_checkpoints=10)
    cfg.eval.every, cfg.eval.dev_task = 1, str(dev)
    result = train(cfg, examples=make_examples(20), show_progress=False)
    assert (result.best_step, result.best_score) == (2, 0.6)  # the first of equal scores is kept
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert (summary["best_step"], summary["best_score"]) == (2, 0.6)
    for when in ("started", "finished"):  # which code and machine produced the run
        assert {"git_commit", "machine", "embedtune_version"} <= set(summary[when])

    texts = ["a man plays the guitar", "the dog runs in the park"]
    best = Embedder.load(tmp_path / "run" / "best").encode(texts)
    at_step = {}
    for path in ckpt.list_checkpoints(tmp_path / "run"):  # steps 1-4 (the last step is the run itself)
        emb = build_embedder(cfg, torch.device("cpu"))
        ckpt.load_checkpoint(path, emb)
        at_step[path.name] = emb.eval().encode(texts)
    assert sorted(at_step) == ["step-1", "step-2", "step-3", "step-4"] and not scripted
    np.testing.assert_allclose(best, at_step["step-2"], rtol=0, atol=1e-6)
    final = Embedder.load(tmp_path / "run").encode(texts)
    assert not np.allclose(best, final, atol=1e-4)  # not simply the last adapter
    assert not np.allclose(best, at_step["step-4"], atol=1e-4)
