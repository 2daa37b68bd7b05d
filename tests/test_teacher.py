"""Distillation from a teacher (train.teacher): the KL term, the teacher's scores laid out as the student's,
the same gradients through GradCache, and a tiny run taught by a tiny sentence-transformers model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_training import _grads, _lora_embedder, make_examples, tiny_cfg

from embedtune.training.gradcache import ContrastiveBatch, contrastive_step, global_info_nce
from embedtune.training.loss import batch_similarity_logits, contrastive_logits, distillation_kl
from embedtune.training.teacher import TeacherScores, teacher_scores
from embedtune.training.trainer import train


def test_distillation_kl_is_the_mean_kl_of_the_rows_softmaxes():
    torch.manual_seed(0)
    s, t = torch.randn(3, 6), torch.randn(3, 6)
    p, q = torch.softmax(t, 1), torch.softmax(s, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(distillation_kl(s, t), expected)
    assert float(distillation_kl(s, s)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(s, t)) > 0
    with pytest.raises(ValueError, match="same shape"):
        distillation_kl(s, t[:, :5])


def test_distillation_kl_ignores_masked_columns_and_keeps_gradients_finite():
    torch.manual_seed(0)
    s = torch.randn(2, 5, requires_grad=True)
    t = torch.randn(2, 5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3], mask[1, 4] = True, True  # an anchor's own column among anchor candidates
    s_masked, t_masked = s.masked_fill(mask, float("-inf")), t.masked_fill(mask, float("-inf"))
    loss = distillation_kl(s_masked, t_masked)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert s.grad[0, 3] == 0 and s.grad[1, 4] == 0
    # the same as the KL over the unmasked columns only
    rows = [distillation_kl(s[i][~mask[i]][None], t[i][~mask[i]][None]) for i in range(2)]
    torch.testing.assert_close(loss, torch.stack(rows).mean())


@pytest.mark.parametrize("anchor_negatives", [False, True])
def test_global_loss_with_a_teacher_adds_the_weighted_kl_to_info_nce(anchor_negatives):
    torch.manual_seed(0)
    a, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    teacher, _ = contrastive_logits(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), 0.05,
                                    anchor_candidates=torch.randn(4, 3) if anchor_negatives else None)
    student, labels = contrastive_logits(a, p, n, 0.05, anchor_candidates=a if anchor_negatives else None)
    expected = F.cross_entropy(student, labels) + 0.5 * distillation_kl(student, teacher)
    got = global_info_nce(a, p, n, 0.05, anchor_negatives=anchor_negatives, teacher_logits=teacher, teacher_weight=0.5)
    torch.testing.assert_close(got, expected)
    assert got > global_info_nce(a, p, n, 0.05, anchor_negatives=anchor_negatives)


@pytest.mark.parametrize("scope", ["anchors", "batch"])
def test_the_distillation_temperature_softens_both_softmaxes_and_keeps_the_gradient_scale(scope):
    torch.manual_seed(2)
    a, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    texts = torch.cat([a, p, n])
    if scope == "anchors":
        teacher_cos, _ = contrastive_logits(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), 1.0)
        student_cos, _ = contrastive_logits(a, p, n, 1.0)
    else:
        teacher_cos = batch_similarity_logits(torch.randn(12, 3), torch.randn(12, 3), 1.0)
        student_cos = batch_similarity_logits(texts, texts, 1.0)
    student, labels = contrastive_logits(a, p, n, 0.05)
    kl_at_01 = distillation_kl(student_cos / 0.1, teacher_cos / 0.1)
    expected = F.cross_entropy(student, labels) + 0.5 * (0.1 / 0.05) ** 2 * kl_at_01  # Hinton's T^2 correction
    parts: dict[str, float] = {}
    got = global_info_nce(a, p, n, 0.05, teacher_logits=teacher_cos / 0.1, teacher_weight=0.5, teacher_scope=scope,
                          parts=parts, teacher_temperature=0.1)
    torch.testing.assert_close(got, expected)
    assert parts["kl"] == pytest.approx(float(kl_at_01))
    # at the InfoNCE temperature (or unset) the term is the plain KL of the two softmaxes at 0.05
    same = global_info_nce(a, p, n, 0.05, teacher_logits=teacher_cos / 0.05, teacher_weight=0.5,
                           teacher_scope=scope, teacher_temperature=0.05)
    torch.testing.assert_close(same, global_info_nce(a, p, n, 0.05, teacher_logits=teacher_cos / 0.05,
                                                     teacher_weight=0.5, teacher_scope=scope))
    torch.testing.assert_close(same, F.cross_entropy(student, labels)
                               + 0.5 * distillation_kl(student_cos / 0.05, teacher_cos / 0.05))


def test_batch_scope_takes_the_kl_over_every_text_against_every_other():
    torch.manual_seed(1)
    a, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    texts = torch.cat([a, p, n])
    sims = batch_similarity_logits(texts, texts, 0.05)
    assert sims.shape == (12, 12) and torch.isinf(sims.diagonal()).all() and torch.isfinite(sims[0, 1:]).all()
    torch.testing.assert_close(sims[2, 5], F.cosine_similarity(a[2], p[1], dim=0) / 0.05)
    teacher = batch_similarity_logits(torch.randn(12, 3), torch.randn(12, 3), 0.05)
    teacher.fill_diagonal_(float("-inf"))
    student, labels = contrastive_logits(a, p, n, 0.05)
    expected = F.cross_entropy(student, labels) + 0.5 * distillation_kl(sims, teacher)
    parts: dict[str, float] = {}
    got = global_info_nce(a, p, n, 0.05, teacher_logits=teacher, teacher_weight=0.5, teacher_scope="batch",
                          parts=parts)
    torch.testing.assert_close(got, expected)
    assert parts["contrastive"] == pytest.approx(float(F.cross_entropy(student, labels)))
    assert parts["kl"] == pytest.approx(float(distillation_kl(sims, teacher)))
    with pytest.raises(ValueError, match="teacher_scope must be"):
        global_info_nce(a, p, n, 0.05, teacher_logits=teacher, teacher_scope="rows")


def test_teacher_batch_logits_lay_out_texts_as_the_students_gather():
    vectors = F.normalize(torch.randn(18, 4), dim=-1)
    scores = TeacherScores(vectors, torch.arange(18).view(6, 3))
    batch = [4, 0, 2, 1]  # two processes of two; rank 1 holds examples 2 and 1
    got = scores.batch_logits(batch, 2, 2, negatives=True, temperature=0.1)

    def texts(share):  # a process's texts in the student's order: anchors, positives, negatives
        return torch.cat([vectors[[3 * i + role for i in share]] for role in range(3)])

    expected = batch_similarity_logits(texts([2, 1]), torch.cat([texts([4, 0]), texts([2, 1])]), 0.1, offset=6)
    torch.testing.assert_close(got, expected)
    assert got.shape == (6, 12) and all(torch.isinf(got[i, 6 + i]) for i in range(6))
    assert scores.batch_logits(batch, 0, 4, negatives=False, temperature=0.1).shape == (8, 8)
    with pytest.raises(ValueError, match="cannot be split"):
        scores.batch_logits(batch, 1, 3, negatives=True, temperature=0.1)


def test_teacher_scores_embed_each_distinct_text_once_and_lay_out_the_students_columns():
    exs = make_examples(6, seed=3)
    exs[1] = type(exs[1])(exs[0].anchor, exs[1].positive, exs[1].negative)  # a premise shared by two triplets
    seen: list[list[str]] = []

    class Encoder:
        def encode(self, texts, batch_size=32, show_progress=False):
            seen.append(list(texts))
            rng = np.random.default_rng(len(texts))
            return rng.normal(size=(len(texts), 4)).astype(np.float32) * 3  # not unit length on purpose

    scores = teacher_scores(Encoder(), exs, used=[0, 1, 2, 4], show_progress=False)
    distinct = {t for i in (0, 1, 2, 4) for t in (exs[i].anchor, exs[i].positive, exs[i].negative)}
    assert len(seen) == 1 and sorted(seen[0]) == sorted(distinct)  # one call, each text once
    assert (scores.rows[3] == -1).all() and (scores.rows[5] == -1).all()  # unused examples are not embedded
    assert scores.rows[0, 0] == scores.rows[1, 0]
    torch.testing.assert_close(scores.vectors.norm(dim=1), torch.ones(len(distinct)))

    def vec(i, role):
        return scores.vectors[scores.rows[i, ("anchor", "positive", "negative").index(role)]]

    batch = [4, 0, 2, 1]  # a global batch of two processes; rank 1 holds examples 2 and 1
    got = scores.logits(batch, 2, 2, negatives=True, anchor_negatives=True, temperature=0.1)
    a = torch.stack([vec(i, "anchor") for i in batch])
    pos, neg = torch.stack([vec(i, "positive") for i in batch]), torch.stack([vec(i, "negative") for i in batch])
    expected, _ = contrastive_logits(a[2:], pos, neg, 0.1, label_offset=2, anchor_candidates=a)
    torch.testing.assert_close(got, expected)
    assert got.shape == (2, 12) and torch.isinf(got[0, 10]) and torch.isinf(got[1, 11])
    assert scores.logits(batch, 0, 4, negatives=False, anchor_negatives=False, temperature=0.1).shape == (4, 4)
    with pytest.raises(RuntimeError, match="no vectors for example 3"):
        scores.logits([0, 3], 0, 2, negatives=True, anchor_negatives=False, temperature=0.1)


def test_cached_gradients_equal_plain_gradients_with_a_teacher(tiny_llama):
    emb = _lora_embedder(tiny_llama)
    exs = make_examples(8)
    tt = emb.text_tokenizer
    torch.manual_seed(5)
    teacher, _ = contrastive_logits(torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4), 0.05)
    batch = ContrastiveBatch(tt.ids([e.anchor for e in exs]), tt.ids([e.positive for e in exs]),
                             tt.ids([e.negative for e in exs]), teacher)
    texts = torch.randn(24, 4)
    for scope, logits in (("anchors", teacher), ("batch", batch_similarity_logits(texts, texts, 0.05))):
        batch.teacher_logits = logits
        kw = {"teacher_weight": 2.0, "teacher_scope": scope, "teacher_temperature": 0.1 if scope == "batch" else None}
        plain_loss = contrastive_step(emb, tt.pad, batch, **kw)
        plain = _grads(emb)
        emb.zero_grad(set_to_none=True)
        cached_loss = contrastive_step(emb, tt.pad, batch, mini_batch_size=3, **kw)
        cached = _grads(emb)
        emb.zero_grad(set_to_none=True)
        without = contrastive_step(emb, tt.pad, ContrastiveBatch(batch.anchors, batch.positives, batch.negatives))
        emb.zero_grad(set_to_none=True)
        assert cached_loss == pytest.approx(plain_loss, rel=1e-5) and plain_loss > without
        for n in plain:
            torch.testing.assert_close(cached[n], plain[n], rtol=1e-4, atol=1e-5)  # float32 sums in another order


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from test_peer import make_tiny_st_folder

    return make_tiny_st_folder(tmp_path_factory.mktemp("teacher"))


def test_a_run_taught_by_a_sentence_transformers_model(tiny_llama, tiny_teacher, tmp_path):
    exs = make_examples(12)

    def run(name, **train_settings):
        cfg = tiny_cfg(tiny_llama, tmp_path / name, max_steps=4, **train_settings)
        train(cfg, examples=exs, show_progress=False)
        return tmp_path / name

    plain = run("plain")
    silent = run("silent", teacher=str(tiny_teacher), teacher_weight=0.0)
    taught = run("taught", teacher=str(tiny_teacher), teacher_weight=1.0)
    whole = run("whole", teacher=str(tiny_teacher), teacher_weight=1.0, teacher_scope="batch")
    soft = run("soft", teacher=str(tiny_teacher), teacher_weight=1.0, teacher_temperature=0.2)
    a, b, c, d, e = (load_file(str(r / "adapter_model.safetensors")) for r in (plain, silent, taught, whole, soft))
    for k in a:  # weight 0: the teacher changes nothing; weight 1: it changes the updates, so do its scope
        torch.testing.assert_close(b[k], a[k])  # and its temperature
    assert any(not torch.allclose(a[k], c[k]) for k in a) and any(not torch.allclose(c[k], d[k]) for k in a)
    assert any(not torch.allclose(c[k], e[k]) for k in a)
    assert json.loads((whole / "train_summary.json").read_text())["teacher"]["scope"] == "batch"

    def logged(run_dir):  # the training records of metrics.jsonl (not the dev evaluations)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "loss" in r]

    assert all(r["kl"] > 0 for r in logged(taught)) and logged(taught)  # the KL term is logged on its own
    assert all("kl" not in r for r in logged(plain)) and logged(plain)
    summary = json.loads((taught / "train_summary.json").read_text())
    # 4 steps of 4 cover all 12 examples (3 per epoch); each has three distinct texts unless two coincide
    distinct = {t for e in exs for t in (e.anchor, e.positive, e.negative)}
    assert summary["teacher"]["model"] == str(tiny_teacher) and summary["teacher"]["texts"] == len(distinct)
    assert json.loads((plain / "train_summary.json").read_text())["teacher"] is None


def test_the_trainer_hands_the_distillation_temperature_to_the_loss(tiny_llama, tiny_teacher, tmp_path,
                                                                    monkeypatch):
    from embedtune.training import trainer as trainer_mod

    seen = []

    def spy(model, pad, batch, **kw):
        seen.append((kw["teacher_temperature"], float(batch.teacher_logits.max())))
        return contrastive_step(model, pad, batch, **kw)

    monkeypatch.setattr(trainer_mod, "contrastive_step", spy)
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=2, teacher=str(tiny_teacher), teacher_temperature=0.2)
    train(cfg, examples=make_examples(8), show_progress=False)
    # the teacher's logits are cosines / 0.2 (at most 5) and the loss is told the same temperature
    assert [t for t, _ in seen] == [0.2, 0.2] and all(m <= 5.0 + 1e-4 for _, m in seen)


def test_a_teacher_that_is_no_model_is_refused_by_name(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=1, teacher=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="train.teacher=.*nowhere.*sentence-transformers folder"):
        train(cfg, examples=make_examples(8), show_progress=False)
    cfg = tiny_cfg(tiny_llama, tmp_path / "run2", max_steps=1, teacher="x", teacher_temperature=0.0)
    with pytest.raises(ValueError, match="teacher_temperature must be > 0"):
        train(cfg, examples=make_examples(8), show_progress=False)
