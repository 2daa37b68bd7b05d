"""Training: loss, GradCache equivalence, LoRA, checkpoints, resume, divergence (tiny models, CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from embedtune.config import RunConfig, load_config
from embedtune.models.embedder import Embedder
from embedtune.training import checkpoint as ckpt
from embedtune.training.batches import epoch_batches, epoch_order, examples_taken, steps_per_epoch_of
from embedtune.training.gradcache import (
    ContrastiveBatch,
    contrastive_step,
    global_info_nce,
    mini_batch_token_budget,
    token_budget_chunks,
)
from embedtune.training.lora import apply_lora, enable_gradient_checkpointing, resolve_targets
from embedtune.training.loss import info_nce
from embedtune.training.trainer import TrainingDivergedError, build_embedder, train

WORDS = "a man woman dog cat plays sits on in the park street guitar piano runs eats food red blue big small".split()


@dataclass(frozen=True)
class Ex:
    anchor: str
    positive: str
    negative: str | None


def make_examples(n: int, seed: int = 0) -> list[Ex]:
    g = torch.Generator().manual_seed(seed)

    def sent() -> str:
        k = int(torch.randint(2, 8, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return [Ex(sent(), sent(), sent()) for _ in range(n)]


def tiny_cfg(model_dir, out, **train) -> RunConfig:
    cfg = load_config(None, [f"model.name_or_path={model_dir}", f"train.output_dir={out}",
                             "data.decontaminate=false", "lora.r=4", "eval.every=0", "train.warmup_steps=2",
                             "train.lr=1e-2", "train.batch_size=4", "train.log_every=1"])
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_info_nce_matches_hand_computed_cross_entropy():
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    cos = lambda x, y: (x @ y.T) / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None])  # noqa: E731
    logits = torch.cat([cos(a, p), cos(a, n)], dim=1) / 0.05
    expected = -torch.stack([torch.log_softmax(logits[i], 0)[i] for i in range(3)]).mean()
    torch.testing.assert_close(info_nce(a, p, n, 0.05), expected)
    no_neg = F.cross_entropy(cos(a, p) / 0.1, torch.arange(3))
    torch.testing.assert_close(info_nce(a, p, None, 0.1), no_neg)
    # label offset: anchors 0..1 of rank 1 own positives 2..3 of the gathered candidates
    big_p = torch.randn(4, 5)
    torch.testing.assert_close(info_nce(a[:2], big_p, None, 0.05, label_offset=2),
                               F.cross_entropy(cos(a[:2], big_p) / 0.05, torch.tensor([2, 3])))


def test_anchor_negatives_add_the_other_anchors_but_not_the_anchor_itself():
    torch.manual_seed(0)
    a, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    cos = lambda x, y: F.normalize(x, dim=1) @ F.normalize(y, dim=1).T  # noqa: E731
    others = cos(a, a) / 0.05
    rows = [torch.cat([cos(a, p)[i] / 0.05, cos(a, n)[i] / 0.05, others[i][torch.arange(4) != i]]) for i in range(4)]
    expected = F.cross_entropy(torch.stack(rows), torch.arange(4))
    torch.testing.assert_close(global_info_nce(a, p, n, 0.05, anchor_negatives=True), expected)
    assert global_info_nce(a, p, n, 0.05, anchor_negatives=True) > global_info_nce(a, p, n, 0.05)  # more negatives
    # rank 1's anchors (gathered rows 2..3) each mask their own row, not rank 0's
    big_p, big_a = torch.randn(4, 5), torch.cat([torch.randn(2, 5), a[:2]])
    rows = [torch.cat([cos(a, big_p)[i], cos(a, big_a)[i][torch.arange(4) != 2 + i]]) / 0.05 for i in range(2)]
    torch.testing.assert_close(info_nce(a[:2], big_p, None, 0.05, label_offset=2, anchor_candidates=big_a),
                               F.cross_entropy(torch.stack(rows), torch.tensor([2, 3])))
    with pytest.raises(ValueError, match="anchor candidates"):
        info_nce(a[:2], p, None, 0.05, label_offset=2, anchor_candidates=a[:3])


def test_symmetric_loss_adds_the_positive_to_anchor_direction():
    torch.manual_seed(0)
    a, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    cos = lambda x, y: F.normalize(x, dim=1) @ F.normalize(y, dim=1).T  # noqa: E731
    forward = F.cross_entropy(torch.cat([cos(a, p), cos(a, n)], dim=1) / 0.05, torch.arange(4))
    backward = F.cross_entropy(cos(p, a) / 0.05, torch.arange(4))  # hard negatives play no part here
    torch.testing.assert_close(global_info_nce(a, p, n, 0.05, symmetric=True), (forward + backward) / 2)
    torch.testing.assert_close(global_info_nce(a, p, n, 0.05), forward)
    assert not torch.allclose(forward, backward)  # the two directions differ, so the average is a new loss


def _lora_embedder(model_dir, dropout=0.0):
    cfg = RunConfig()
    cfg.model.name_or_path = str(model_dir)
    cfg.lora.r, cfg.lora.dropout = 4, dropout
    torch.manual_seed(1)  # LoRA's A factors too: the same weights whatever ran before
    emb = build_embedder(cfg, torch.device("cpu"))
    with torch.no_grad():
        for n, p in emb.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return emb.train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_shared_prompt_prefix_in_training_gives_the_gradients_of_whole_rows(tiny_llama):
    emb = _lora_embedder(tiny_llama)  # LoRA dropout 0, no checkpointing: the trainer lets it share
    assert emb.share_prefix_with_grad
    emb.text_tokenizer.prompt = "this sentence {} means one word"
    exs = make_examples(8)
    tt = emb.text_tokenizer
    batch = ContrastiveBatch(tt.ids([e.anchor for e in exs]), tt.ids([e.positive for e in exs]),
                             tt.ids([e.negative for e in exs]))
    enc = tt.pad(batch.anchors)
    assert emb.training and emb.shared_prefix_length(enc["input_ids"], enc["attention_mask"]) == 3
    shared_loss = contrastive_step(emb, tt.pad, batch)
    shared = _grads(emb)
    emb.zero_grad(set_to_none=True)
    cached_loss = contrastive_step(emb, tt.pad, batch, mini_batch_size=3)  # GradCache shares in both passes
    cached = _grads(emb)
    emb.zero_grad(set_to_none=True)
    emb.share_prefix_with_grad = False
    assert emb.shared_prefix_length(enc["input_ids"], enc["attention_mask"]) == 0
    whole_loss = contrastive_step(emb, tt.pad, batch)
    whole = _grads(emb)
    assert shared_loss == pytest.approx(whole_loss, rel=1e-5) and cached_loss == pytest.approx(whole_loss, rel=1e-5)
    for n in whole:
        torch.testing.assert_close(shared[n], whole[n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cached[n], whole[n], rtol=1e-4, atol=1e-5)


def test_the_trainer_shares_the_prefix_in_training_only_where_it_is_exact(tiny_llama):
    def shares(dropout=0.0, **train):
        cfg = RunConfig()
        cfg.model.name_or_path, cfg.lora.r, cfg.lora.dropout = str(tiny_llama), 4, dropout
        for k, v in train.items():
            setattr(cfg.train, k, v)
        return build_embedder(cfg, torch.device("cpu")).share_prefix_with_grad

    assert shares() is True
    assert shares(dropout=0.1) is False  # one dropout mask would serve every row
    assert shares(gradient_checkpointing=True) is False  # checkpointed layers drop the KV cache
    assert shares(share_prefix=False) is False
    emb = _lora_embedder(tiny_llama, dropout=0.1)
    emb.text_tokenizer.prompt = "this sentence {} means one word"
    enc = emb.text_tokenizer(["a man plays guitar", "the dog"])
    with torch.no_grad():  # GradCache's first pass in train mode must match its re-forward: no sharing
        assert emb.shared_prefix_length(enc["input_ids"], enc["attention_mask"]) == 0
        assert emb.eval().shared_prefix_length(enc["input_ids"], enc["attention_mask"]) == 3


@pytest.mark.parametrize("with_negatives", [True, False])
def test_cached_gradients_equal_plain_gradients(tiny_llama, with_negatives):
    emb = _lora_embedder(tiny_llama)
    exs = make_examples(8)
    tt = emb.text_tokenizer
    batch = ContrastiveBatch(tt.ids([e.anchor for e in exs]), tt.ids([e.positive for e in exs]),
                             tt.ids([e.negative for e in exs]) if with_negatives else None)
    plain_loss = contrastive_step(emb, tt.pad, batch)
    plain = _grads(emb)
    emb.zero_grad(set_to_none=True)
    cached_loss = contrastive_step(emb, tt.pad, batch, mini_batch_size=3)
    cached = _grads(emb)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain and all(g.abs().sum() > 0 for g in plain.values())
    for n in plain:
        torch.testing.assert_close(cached[n], plain[n], rtol=1e-4, atol=1e-6)


def test_token_budget_chunks_bound_padded_tokens_and_cover_every_row_once():
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(3, 90, (300,), generator=g)] + [700]  # one row over the budget
    chunks = token_budget_chunks(lengths, 600)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert len(c) == 1 or len(c) * max(lengths[i] for i in c) <= 600
    assert chunks[0] == [300]  # the over-long row alone, first
    # fixed-count chunks sorted longest first would put 10x the tokens of the last chunk in the first
    assert token_budget_chunks([10] * 7, 20) == [[0, 1], [2, 3], [4, 5], [6]]
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_chunks([1], 0)
    # the budget is that of mini_batch_size average triplets of the batch
    assert mini_batch_token_budget([[1] * 4, [1] * 6], mini_batch_size=2, roles=3) == 30


def test_cached_step_replays_dropout_masks(tiny_llama):
    """With LoRA dropout on, the graph re-forward must see the same masks as the cached forward."""
    emb = _lora_embedder(tiny_llama, dropout=0.5)
    calls = []

    def model(ids, mask):
        out = emb(ids, mask)
        calls.append(out.detach().clone())
        return out

    exs = make_examples(4)
    tt = emb.text_tokenizer
    batch = ContrastiveBatch(tt.ids([e.anchor for e in exs]), tt.ids([e.positive for e in exs]))
    contrastive_step(model, tt.pad, batch, mini_batch_size=2)
    half = len(calls) // 2
    assert len(calls) % 2 == 0 and half >= 2  # at least two chunks, each embedded twice
    for first, second in zip(calls[:half], calls[half:]):
        torch.testing.assert_close(first, second)


def test_lora_targets_per_family(tiny_models):
    for family, expected in [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"]), ("phi", ["q_proj", "v_proj"])]:
        emb = Embedder.from_pretrained(str(tiny_models[family]), device="cpu")
        assert resolve_targets(emb.backbone, ["q_proj", "v_proj"]) == expected
    with pytest.raises(ValueError, match="match no linear layer.*available"):
        resolve_targets(emb.backbone, ["nope_proj"])


def test_only_lora_parameters_change(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=3)
    emb = build_embedder(cfg, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in emb.backbone.named_parameters()}
    train(cfg, examples=make_examples(16), embedder=emb, show_progress=False)
    changed = {n for n, p in emb.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    again = Embedder.load(tmp_path / "run", device="cpu")
    assert again.has_adapter()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3


def test_lora_gets_gradients_with_gradient_checkpointing(tiny_llama):
    def lora_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        emb = Embedder.from_pretrained(str(tiny_llama), device="cpu")
        for p in emb.backbone.parameters():
            p.requires_grad_(False)
        if checkpointing:
            enable_gradient_checkpointing(emb.backbone)
        cfg = RunConfig().lora
        cfg.r, cfg.dropout = 4, 0.0
        torch.manual_seed(0)
        emb.backbone = apply_lora(emb.backbone, cfg)
        with torch.no_grad():  # B starts at zero, which zeroes A's gradient; make both matter
            for n, p in emb.backbone.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        emb.train()
        base = emb.backbone.get_base_model()
        assert getattr(base, "is_activation_checkpointing", None) is checkpointing or base.is_gradient_checkpointing
        tt = emb.text_tokenizer
        exs = make_examples(4)
        batch = ContrastiveBatch(tt.ids([e.anchor for e in exs]), tt.ids([e.positive for e in exs]))
        contrastive_step(emb, tt.pad, batch)
        return {n: p.grad for n, p in emb.named_parameters() if "lora_" in n}

    with_ckpt, without = lora_grads(True), lora_grads(False)
    assert len(with_ckpt) == 8 and all(g is not None and g.abs().sum() > 0 for g in with_ckpt.values())
    for n in without:
        torch.testing.assert_close(with_ckpt[n], without[n])


def _adapter(run):
    return load_file(str(run / "adapter_model.safetensors"))


@pytest.mark.parametrize("mini_batch_size", [None, 2])
def test_resume_equals_uninterrupted_run(tiny_llama, tmp_path, mini_batch_size):
    exs = make_examples(20)
    cfg_full = tiny_cfg(tiny_llama, tmp_path / "full", max_steps=7, mini_batch_size=mini_batch_size)
    cfg_full.lora.dropout = 0.1
    train(cfg_full, examples=exs, show_progress=False)
    cfg_int = tiny_cfg(tiny_llama, tmp_path / "int", max_steps=7, mini_batch_size=mini_batch_size, save_every=2)
    cfg_int.lora.dropout = 0.1
    train(cfg_int, examples=exs, show_progress=False, stop_after=5)  # crosses an epoch boundary (5 steps/epoch)
    assert not (tmp_path / "int" / "adapter_model.safetensors").exists()
    cfg_int.train.resume = "auto"
    train(cfg_int, examples=exs, show_progress=False)
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "int")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grouped", [False, True])
def test_epoch_batches_hold_one_kind_each(grouped):
    kinds = [True] * 23 + [False] * 14  # 23 triplets, 14 pairs
    lengths = [(7 * i) % 31 + 1 for i in range(len(kinds))] if grouped else None
    batches = epoch_batches(kinds, 0, seed=3, lengths=lengths, batch=4)
    assert len(batches) == steps_per_epoch_of(kinds, 4) == 5 + 3
    assert all(len(b) == 4 and len({kinds[i] for i in b}) == 1 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    assert [kinds[b[0]] for b in batches].count(False) == 3
    assert batches == epoch_batches(kinds, 0, seed=3, lengths=lengths, batch=4)  # deterministic (resume)
    assert batches != epoch_batches(kinds, 1, seed=3, lengths=lengths, batch=4)  # reshuffled every epoch
    # one kind: the plain epoch order cut into full batches (runs made before pairs could mix are unchanged)
    order = epoch_order(10, 2, 5, None, 3)
    assert epoch_batches([True] * 10, 2, 5, None, 3) == [order[0:3], order[3:6], order[6:9]]


def test_mixed_triplets_and_pairs_train_with_negatives_only_in_triplet_batches(tiny_llama, tmp_path, monkeypatch):
    from embedtune.training import trainer as trainer_mod

    seen = []

    def spy(model, pad, batch, **kw):
        seen.append((len(batch), batch.negatives is None))
        return contrastive_step(model, pad, batch, **kw)

    monkeypatch.setattr(trainer_mod, "contrastive_step", spy)
    exs = make_examples(8) + [Ex(e.anchor, e.positive, None) for e in make_examples(8, seed=1)]
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=None, epochs=1.0)
    train(cfg, examples=exs, show_progress=False)
    assert sorted(seen) == [(4, False), (4, False), (4, True), (4, True)]  # 2 triplet batches, 2 pair batches
    cfg = tiny_cfg(tiny_llama, tmp_path / "off", max_steps=1)
    cfg.data.hard_negatives = False
    seen.clear()
    train(cfg, examples=exs, show_progress=False)
    assert seen == [(4, True)]  # hard negatives off: every batch is pairs, kinds no longer matter


def test_crash_during_checkpoint_save_keeps_previous(tiny_llama, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=4, save_every=1, keep_checkpoints=3)
    exs = make_examples(16)
    train(cfg, examples=exs, show_progress=False, stop_after=2)
    good = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in good] == ["step-1", "step-2"]

    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    cfg.train.resume = "auto"
    with pytest.raises(OSError, match="disk full"):
        train(cfg, examples=exs, show_progress=False)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-1", "step-2"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    emb = build_embedder(cfg, torch.device("cpu"))
    state = ckpt.load_checkpoint(good[-1], emb)
    assert state["step"] == 2


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_llama, tmp_path, monkeypatch):
    import embedtune.training.trainer as trainer_mod

    real = trainer_mod.contrastive_step
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_mod, "contrastive_step", poisoned)
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=6, save_every=0)
    with pytest.raises(TrainingDivergedError, match="diverged at step 2"):
        train(cfg, examples=make_examples(16), show_progress=False)
    kept = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-2"]
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_train_rejects_bad_settings(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=1, batch_size=64)
    with pytest.raises(ValueError, match="cannot fill one batch of 64"):
        train(cfg, examples=make_examples(8), show_progress=False)


def test_frozen_weights_held_in_bf16_give_the_autocast_step_exactly(tiny_llama, tmp_path):
    """Holding the frozen base weights in bf16 is a speed-up only: under bf16 autocast the loss and the
    LoRA gradients are those of float32 weights that autocast casts itself."""
    from embedtune.training.trainer import hold_frozen_linears_in

    batch = ContrastiveBatch(*([[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 2]] for _ in range(3)))
    results = []
    for half in (False, True):
        torch.manual_seed(0)
        emb = _lora_embedder(tiny_llama)
        if half:
            assert hold_frozen_linears_in(emb, torch.bfloat16) == 2 * 7  # q,k,v,o,gate,up,down per layer
            assert all(p.dtype == torch.float32 for p in emb.parameters() if p.requires_grad)
        emb.train()
        loss = contrastive_step(emb, emb.text_tokenizer.pad, batch,
                                autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        results.append((loss, {n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad}))
    (loss32, grads32), (loss16, grads16) = results
    assert loss32 == loss16
    assert grads32.keys() == grads16.keys() and grads32
    for name in grads32:
        torch.testing.assert_close(grads16[name], grads32[name], atol=0, rtol=0)


def test_training_with_frozen_half_weights_saves_an_adapter_that_loads_in_float32(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", max_steps=2, precision="bf16")
    train(cfg, examples=make_examples(8), show_progress=False)
    again = Embedder.load(tmp_path / "run", device="cpu")
    assert all(p.dtype == torch.float32 for p in again.parameters())
    assert again.encode(["a man plays guitar"]).shape == (1, again.dim)


def test_examples_taken_are_those_of_the_runs_steps_across_epochs():
    kinds = [True] * 10 + [False] * 7  # 2 + 1 batches of 4 per epoch; 1 triplet and 3 pairs wait each epoch
    steps = [b for e in range(3) for b in epoch_batches(kinds, e, 5, None, 4)][:7]  # 2 epochs and a third's step
    assert examples_taken(kinds, 5, None, 4, 7) == {i for b in steps for i in b}
    assert examples_taken(kinds, 5, None, 4, 2) == set(steps[0]) | set(steps[1])
    assert len(examples_taken(kinds, 5, None, 4, 3)) == 12  # one epoch leaves five examples out
