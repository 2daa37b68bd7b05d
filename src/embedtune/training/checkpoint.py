"""Atomic checkpoints and exact resume.

A checkpoint folder holds the trainable weights, optimizer, scheduler, every RNG state, the trainer's
position (step; the data order is a pure function of seed and epoch) and the config. It is written to a
temporary folder and renamed into place, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_dir

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune all but the newest ``keep``."""
    target = Path(run_dir) / CHECKPOINT_DIR / f"step-{step}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "optim.pt",
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        # state.json last: its presence marks a complete checkpoint.
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2), encoding="utf-8")
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
) -> dict[str, Any]:
    """Restore weights (and optimizer, scheduler, RNG) from a checkpoint; returns its trainer state."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete embedtune checkpoint (no state.json)")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    check_matches(path, weights, {n: p for n, p in params.items() if p.requires_grad})
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    extra = torch.load(path / "optim.pt", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(extra["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def check_matches(path: Path, weights: dict[str, torch.Tensor], trainable: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless the checkpoint holds exactly the model's trainable parameters, shape for shape.

    A checkpoint of another model, LoRA rank or target set must not half-load: parameters it lacks would keep
    their fresh initialisation and training would go on from a state that never existed.
    """
    hint = "was it made with another model, model.num_layers or LoRA config (lora.r, lora.target_modules)?"
    unknown = sorted(set(weights) - set(trainable))
    if unknown:
        raise ValueError(f"{path}: the checkpoint has {len(unknown)} parameter(s) this model lacks "
                         f"(e.g. {unknown[0]}); {hint}")
    missing = sorted(set(trainable) - set(weights))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} trainable parameter(s) of this model "
                         f"(e.g. {missing[0]}); {hint}")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(trainable[name].shape):
            raise ValueError(f"{path}: parameter {name} has shape {tuple(tensor.shape)} in the checkpoint, "
                             f"{tuple(trainable[name].shape)} in this model; {hint}")


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``auto``: the newest checkpoint of ``run_dir`` (None if there is none); else the given path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no state.json)")
    return path
