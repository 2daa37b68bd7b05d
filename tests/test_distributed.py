"""Two gloo processes on halves of a batch == one process on the joined batch (loss and LoRA gradients)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from embedtune.config import RunConfig
from embedtune.training import distributed as dist
from embedtune.training.gradcache import ContrastiveBatch, contrastive_step
from embedtune.training.teacher import TeacherScores
from embedtune.training.trainer import build_embedder

TEXTS = [
    ("a man plays guitar", "a man plays piano", "a dog runs"),
    ("the cat sits on the red car", "a cat sits", "the woman eats food"),
    ("two children in the park", "children playing in the park", "a man is sad"),
    ("the dog eats food", "a dog is eating", "a cat runs on the street"),
    ("a woman plays piano", "a woman is playing", "two dogs sit"),
    ("the big house is blue", "a blue house", "a small red car"),
    ("a happy child runs", "a child is running", "the man sits in the house"),
    ("the lazy dog sits", "a dog is sitting", "a quick fox jumps"),
]


def _embedder(model_dir: str):
    cfg = RunConfig()
    cfg.model.name_or_path = model_dir
    cfg.lora.r, cfg.lora.dropout = 4, 0.0
    torch.manual_seed(0)  # identical LoRA init on every rank, as the trainer does with one seed
    emb = build_embedder(cfg, torch.device("cpu"))
    with torch.no_grad():
        for n, p in emb.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return emb.train()


def _teacher_logits(local: int, scope: str = "anchors") -> torch.Tensor:
    """A teacher's scores of this rank's anchors (scope "batch": of all its texts) against the whole batch of
    TEXTS (fixed random vectors)."""
    g = torch.Generator().manual_seed(3)
    scores = TeacherScores(torch.randn(3 * len(TEXTS), 4, generator=g), torch.arange(3 * len(TEXTS)).view(-1, 3))
    if scope == "batch":
        return scores.batch_logits(range(len(TEXTS)), dist.rank() * local, local, negatives=True, temperature=0.05)
    return scores.logits(range(len(TEXTS)), dist.rank() * local, local, negatives=True, anchor_negatives=False,
                         temperature=0.05)


def _step(emb, rows, mini_batch_size, loss="info_nce"):
    tt = emb.text_tokenizer
    scope = "batch" if loss == "teacher-batch" else "anchors"
    teacher = _teacher_logits(len(rows), scope) if loss.startswith("teacher") else None
    batch = ContrastiveBatch(*(tt.ids([r[i] for r in rows]) for i in range(3)), teacher)
    loss = contrastive_step(emb, tt.pad, batch, mini_batch_size=mini_batch_size, symmetric=loss == "symmetric",
                            anchor_negatives=loss == "anchors", teacher_scope=scope)
    params = [p for p in emb.parameters() if p.requires_grad]
    dist.average_gradients(params)
    loss = dist.all_reduce_mean(loss)
    return loss, {n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, init_file: str, model_dir: str, mini_batch_size, loss, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        emb = _embedder(model_dir)
        local = len(TEXTS) // world
        value, grads = _step(emb, TEXTS[rank * local : (rank + 1) * local], mini_batch_size, loss)
        torch.save({"loss": value, "grads": grads}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(("mini_batch_size", "loss_name"),
                         [(None, "info_nce"), (2, "info_nce"), (2, "symmetric"), (2, "anchors"), (2, "teacher"),
                          (None, "teacher-batch")])
def test_two_process_gather_equals_one_process_on_joined_batch(tiny_llama, tmp_path, mini_batch_size, loss_name):
    args = (2, str(tmp_path / "init"), str(tiny_llama), mini_batch_size, loss_name, str(tmp_path))
    mp.spawn(_worker, args=args, nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    loss, grads = _step(_embedder(str(tiny_llama)), TEXTS, None, loss_name)
    for r in ranks:  # every rank holds the averaged gradient, like DDP
        assert r["loss"] == pytest.approx(loss, rel=1e-5)
        assert grads.keys() == r["grads"].keys()
        for n in grads:
            torch.testing.assert_close(r["grads"][n], grads[n], rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads.values())


def _late_group_worker(rank: int, world: int, init_file: str, model_dir: str, out: str) -> None:
    """Build the embedder and a tensor before the process group exists, then train a step once it does."""
    torch.set_num_threads(1)
    emb = _embedder(model_dir)  # built while rank()/world_size() still say 0/1
    before = (dist.is_distributed(), dist.rank(), dist.world_size())
    x = torch.full((2, 3), float(rank), requires_grad=True)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        after = (dist.is_distributed(), dist.rank(), dist.world_size())
        gathered = dist.gather_with_grad(x)
        local = len(TEXTS) // world
        loss, _ = _step(emb, TEXTS[rank * local : (rank + 1) * local], None)
        torch.save({"before": before, "after": after, "gathered": gathered.detach(), "loss": loss},
                   os.path.join(out, f"late{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_rank_and_world_size_are_read_at_call_time(tiny_llama, tmp_path):
    """Objects made before the process group starts (the embedder, its step) must not have cached rank 0 of 1."""
    mp.spawn(_late_group_worker, args=(2, str(tmp_path / "init"), str(tiny_llama), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"late{r}.pt") for r in range(2)]
    joined, _ = _step(_embedder(str(tiny_llama)), TEXTS, None)
    for r, got in enumerate(ranks):
        assert got["before"] == (False, 0, 1)
        assert got["after"] == (True, r, 2)
        torch.testing.assert_close(got["gathered"], torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))
        assert got["loss"] == pytest.approx(joined, rel=1e-5)  # the step gathered the other rank's half
    assert not dist.is_distributed() and (dist.rank(), dist.world_size()) == (0, 1)  # this process: none
    x = torch.randn(3, 4, requires_grad=True)
    assert dist.gather_with_grad(x) is x  # and one process gathers nothing
