"""Branches of embedtune that only run on CUDA, checked on a CPU-only machine where that is honest.

What runs here: each branch's decisions (device, process-group backend, dtype, attention kernel, autocast
type, GradScaler use, the GPU random state in checkpoints), with torch.cuda's answers mocked, and the
trainer's fp16 path with the CPU's fp16 kernels standing in for CUDA's. What cannot run without a GPU is in
tests marked ``needs_cuda``, which say why and run on a GPU machine; benchmarks/gpu_check.py part (a)
runs the same paths there. embedtune makes no pinned-memory or non_blocking transfers (batches move with a
plain ``.to(device)``), so there is no such branch.
"""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from embedtune.config import load_config
from embedtune.models.embedder import Embedder
from embedtune.training import checkpoint as ckpt
from embedtune.training import trainer
from embedtune.training.trainer import build_embedder, make_autocast, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (see the test's docstring)")
WORDS = "a man woman dog cat plays sits on in the park street guitar piano runs eats food red blue big".split()


@dataclass(frozen=True)
class Ex:
    anchor: str
    positive: str
    negative: str


def examples(n: int) -> list[Ex]:
    g = torch.Generator().manual_seed(0)

    def sent() -> str:
        k = int(torch.randint(2, 7, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return [Ex(sent(), sent(), sent()) for _ in range(n)]


def cfg_for(model_dir, out, *overrides: str):
    return load_config(None, [f"model.name_or_path={model_dir}", f"train.output_dir={out}", "data.decontaminate=false",
                              "lora.r=4", "eval.every=0", "train.save_every=0", "train.warmup_steps=1",
                              "train.lr=1e-2", "train.batch_size=4", *overrides])


def quiet_autocast(factory):
    """Enter nothing, just build the autocast object: a CPU-only torch warns that it disables CUDA autocast."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory()


# ---- device placement and process group ------------------------------------------------------------------
class _Stop(Exception):
    pass


def test_train_builds_its_model_on_the_local_rank_gpu(tiny_llama, tmp_path, monkeypatch):
    """With CUDA present, torchrun's process LOCAL_RANK=1 trains on cuda:1 and starts the process group for
    CUDA (NCCL); the model is never built here, the test stops the trainer when it asks for it."""
    seen = {}

    def init_from_env(device_type):
        seen["process_group_for"] = device_type
        return False

    def build(cfg, device):
        seen["device"] = device
        raise _Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(trainer.dist, "init_from_env", init_from_env)
    monkeypatch.setattr(trainer, "build_embedder", build)
    with pytest.raises(_Stop):
        train(cfg_for(tiny_llama, tmp_path / "run", "train.max_steps=1"), examples=examples(8), show_progress=False)
    assert seen == {"process_group_for": "cuda", "device": torch.device("cuda", 1)}


@pytest.mark.parametrize(("device_type", "backend"), [("cuda", "nccl"), ("cpu", "gloo")])
def test_a_torchrun_job_uses_nccl_on_gpus_and_gloo_on_cpus(monkeypatch, device_type, backend):
    from embedtune.training import distributed

    started = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout: started.append(backend))
    assert distributed.init_from_env(device_type) is True
    assert started == [backend]


# ---- precision: autocast type and the GradScaler -------------------------------------------------------
@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_precision_auto_is_bf16_on_gpus_that_have_it(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    factory, precision = make_autocast("auto", torch.device("cuda", 0))
    assert precision == expected
    if expected == "fp32":  # a GPU without bf16 (V100, T4) trains in fp32, not in a type it lacks
        assert factory is nullcontext
    else:
        ctx = quiet_autocast(factory)
        assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)
    assert make_autocast("auto", torch.device("cpu"))[1] == "fp32"


def test_fp16_autocast_is_cuda_autocast_and_refused_on_cpus(tiny_llama):
    ctx = quiet_autocast(make_autocast("fp16", torch.device("cuda", 0))[0])
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.float16)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        make_autocast("fp16", torch.device("cpu"))
    from embedtune.models.runtime import autocast_context

    emb = Embedder.from_pretrained(str(tiny_llama), device="cpu", autocast="fp16")  # the same for encode()
    ctx = quiet_autocast(lambda: autocast_context(emb.autocast, torch.device("cuda", 0)))  # as on a GPU model
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.float16)


class SpyScaler(torch.amp.GradScaler):
    """A CPU GradScaler that records the device the trainer asked for and counts its calls."""

    made: list[SpyScaler] = []

    def __init__(self, device: str = "cuda", init_scale: float = 2.0**16) -> None:
        super().__init__("cpu", init_scale=init_scale)
        self.asked_for, self.calls = device, {"unscale_": 0, "step": 0, "update": 0}
        SpyScaler.made.append(self)

    def unscale_(self, optimizer):
        self.calls["unscale_"] += 1
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls["step"] += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls["update"] += 1
        return super().update(new_scale)


def fp16_on_cpu(monkeypatch, init_scale: float = 2.0**16) -> list[SpyScaler]:
    """The trainer's fp16 branch with CPU fp16 autocast in place of CUDA's and a spying CPU GradScaler."""
    SpyScaler.made = []
    monkeypatch.setattr(trainer, "make_autocast",
                        lambda precision, device: (lambda: torch.autocast("cpu", dtype=torch.float16), "fp16"))
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: SpyScaler(device, init_scale))
    return SpyScaler.made


def lora_weights(emb: Embedder) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in emb.named_parameters() if p.requires_grad}


def test_fp16_training_scales_the_loss_and_holds_frozen_weights_in_fp16(tiny_llama, tmp_path, monkeypatch):
    made = fp16_on_cpu(monkeypatch, init_scale=2.0**8)  # a scale that fits: 2^16 overflows at temperature 0.05
    cfg = cfg_for(tiny_llama, tmp_path / "run", "train.max_steps=3", "train.precision=fp16")
    emb = build_embedder(cfg, torch.device("cpu"))
    before = lora_weights(emb)
    train(cfg, examples=examples(12), embedder=emb, show_progress=False)
    (scaler,) = made
    assert scaler.asked_for == "cuda"
    assert scaler.calls == {"unscale_": 3, "step": 3, "update": 3}
    assert scaler.get_scale() == 2.0**8  # no step overflowed, none was skipped
    frozen = [m.weight for m in emb.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]
    assert frozen and all(w.dtype == torch.float16 for w in frozen)  # train.frozen_half under fp16
    after = lora_weights(emb)
    assert all(p.dtype == torch.float32 for p in after.values())  # LoRA weights stay float32 for the optimizer
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["precision"] == "fp16"
    again = Embedder.load(tmp_path / "run", device="cpu")
    assert next(again.parameters()).dtype == torch.float32 and again.encode(["a dog"]).shape == (1, again.dim)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale_instead_of_stopping(tiny_llama, tmp_path, monkeypatch):
    """An fp16 gradient overflow is routine: the scaler skips that step and halves its scale; only a
    non-finite loss means divergence."""
    made = fp16_on_cpu(monkeypatch, init_scale=2.0**100)  # loss x 2^100 overflows fp16 in the backward pass
    cfg = cfg_for(tiny_llama, tmp_path / "run", "train.max_steps=2", "train.precision=fp16")
    emb = build_embedder(cfg, torch.device("cpu"))
    before = lora_weights(emb)
    train(cfg, examples=examples(8), embedder=emb, show_progress=False)
    (scaler,) = made
    assert scaler.get_scale() == 2.0**98
    after = lora_weights(emb)
    assert all(torch.equal(before[n], after[n]) for n in before)  # both steps skipped


# ---- loading for a GPU ----------------------------------------------------------------------------------
def test_loading_for_a_gpu_asks_for_bf16_and_leaves_attention_to_transformers(tiny_llama, monkeypatch):
    """What load_backbone asks transformers for on a GPU; only the final move to the device is mocked."""
    import transformers

    from embedtune.models.loading import default_device, resolve_dtype

    real = transformers.AutoModel.from_pretrained
    asked, moved = [], []

    def spy(location, **kwargs):
        asked.append(kwargs)
        model = real(location, **kwargs)
        model.to = lambda *args, **kw: (moved.append(args), model)[1]
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    emb = Embedder.from_pretrained(str(tiny_llama), device="cuda")
    assert moved == [("cuda",)]
    assert asked[0]["dtype"] == torch.bfloat16 and "attn_implementation" not in asked[0]
    assert emb.backbone.config._attn_implementation == "sdpa"  # transformers' own choice for this family
    assert next(emb.backbone.parameters()).dtype == torch.bfloat16
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"  # every command's --device default


# ---- the GPU random state in checkpoints ----------------------------------------------------------------
def test_checkpoints_keep_the_gpu_random_state_and_restore_it_only_on_a_gpu(tmp_path, monkeypatch):
    gpu_state = [torch.arange(8, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched, {}, {})
    ckpt.load_checkpoint(path, model, opt, sched)
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on a machine without a GPU
    ckpt.load_checkpoint(path, model, opt, sched)
    assert len(restored) == 1


# ---- what needs a GPU -----------------------------------------------------------------------------------
@needs_cuda
def test_cached_step_replays_gpu_dropout_masks(tiny_llama):
    """GradCache saves each chunk's CUDA generator state and restores it (fork_rng over the CUDA device)
    before the chunk's re-forward. Without a GPU there is no CUDA generator: a mock would test the mock.
    On CPU, test_training.py checks the CPU generator's replay."""
    from embedtune.training.gradcache import ContrastiveBatch, contrastive_step

    cfg = cfg_for(tiny_llama, "unused", "lora.dropout=0.5", "model.dtype=float32")
    emb = build_embedder(cfg, torch.device("cuda")).train()
    outputs = []

    def recorded(ids, mask):
        out = emb(ids, mask)
        outputs.append(out.detach().clone())
        return out

    tt = emb.text_tokenizer
    rows = examples(4)
    batch = ContrastiveBatch(tt.ids([e.anchor for e in rows]), tt.ids([e.positive for e in rows]))
    contrastive_step(recorded, tt.pad, batch, mini_batch_size=2, device="cuda")
    half = len(outputs) // 2
    assert len(outputs) % 2 == 0 and half >= 2
    for first, second in zip(outputs[:half], outputs[half:]):
        torch.testing.assert_close(first, second, rtol=1e-4, atol=1e-5)


@needs_cuda
def test_fp16_training_on_a_gpu(tiny_llama, tmp_path):
    """CUDA's fp16 kernels and torch.amp.GradScaler('cuda') need a GPU; the tests above run the same trainer
    branch with CPU fp16."""
    cfg = cfg_for(tiny_llama, tmp_path / "run", "train.max_steps=3", "train.precision=fp16", "model.dtype=float32")
    result = train(cfg, examples=examples(12), show_progress=False)
    assert torch.isfinite(torch.tensor(result.final_loss))
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["precision"] == "fp16"
