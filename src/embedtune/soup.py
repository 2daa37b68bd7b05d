"""Average the LoRA updates of several runs of one recipe into one adapter (a uniform "model soup").

Runs that differ only by their seed (or a setting that leaves the model's shape alone) land at different
points of the same low-loss basin; the mean of their weight updates is often better than each run and less
dependent on the seed. The soup is exact and stays an ordinary adapter: for runs ``k = 1..K`` with LoRA
factors ``A_k`` (r x in) and ``B_k`` (out x r), scaling ``alpha / r`` and weights ``w_k`` summing to 1, the
mean update ``sum_k w_k (alpha / r) B_k A_k`` equals ``(alpha' / r') B' A'`` with ``A' = [A_1; ...; A_K]``
(K r x in), ``B' = [w_1 B_1, ..., w_K B_K]`` (out x K r), ``r' = K r`` and ``alpha' = K alpha`` (the same
scaling). So the soup loads, evaluates, exports and serves like any run; merged into the base weights
(``embedtune export``) it costs nothing at inference, unmerged it is a rank-K r adapter.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_dir, check_output_dir
from .models.embedder import CONFIG_NAME

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# embedtune.json fields that must agree: the soup is encoded exactly as each of its runs
SAME_ENCODING = ("base_model", "gguf_file", "num_layers", "pooling", "prompt", "max_length", "normalize",
                 "padding_side", "embedding_dim")
# adapter_config.json fields that must agree: the same modules, scaled the same way
SAME_ADAPTER = ("r", "lora_alpha", "use_rslora", "use_dora", "bias", "fan_in_fan_out", "alpha_pattern",
                "rank_pattern", "layers_to_transform", "modules_to_save")


class SoupError(ValueError):
    """The runs cannot be averaged into one adapter (the message names the run and the field)."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoupError(f"{path.parent} is not a LoRA run: {path.name} is missing (expected the output folder of "
                        "`embedtune train`, or its best/ folder)") from None
    except json.JSONDecodeError as e:
        raise SoupError(f"{path}: not valid JSON ({e})") from None


def _run_parts(run: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    meta = _read_json(run / CONFIG_NAME)
    if not meta.get("adapter"):
        raise SoupError(f"{run / CONFIG_NAME}: 'adapter' is {meta.get('adapter')!r}; only LoRA runs can be averaged "
                        "(a merged export holds full weights)")
    config = _read_json(run / ADAPTER_CONFIG)
    if not (run / ADAPTER_WEIGHTS).is_file():
        raise SoupError(f"{run} holds no {ADAPTER_WEIGHTS}")
    return meta, config, load_file(str(run / ADAPTER_WEIGHTS))


def _same(field: str, values: list[Any], runs: Sequence[Path], file: str) -> None:
    for run, value in zip(runs[1:], values[1:], strict=True):
        if value != values[0]:
            raise SoupError(f"{run / file}: {field} is {value!r}, but {runs[0] / file} has {values[0]!r}; "
                            "only runs of the same model shape and encoding can be averaged")


def soup_adapters(
    configs: Sequence[dict[str, Any]], weights: Sequence[dict[str, torch.Tensor]], mix: Sequence[float]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter whose update is ``sum_k mix[k] * update_k`` (see the module docstring).

    Args:
        configs: each run's adapter_config.json (checked to agree before this is called).
        weights: each run's adapter tensors, with the same keys and shapes.
        mix: one weight per run, summing to 1.

    Returns:
        The soup's adapter config (rank and alpha times K) and tensors.
    """
    k = len(weights)
    out: dict[str, torch.Tensor] = {}
    for key in weights[0]:
        parts = [w[key] for w in weights]
        if ".lora_A." in key:
            out[key] = torch.cat(parts, dim=0).contiguous()  # (K r, in)
        elif ".lora_B." in key:
            out[key] = torch.cat([p * m for p, m in zip(parts, mix, strict=True)], dim=1).contiguous()  # (out, K r)
        else:
            raise SoupError(f"adapter tensor {key!r} is neither a lora_A nor a lora_B factor; cannot average it")
    config = dict(configs[0])
    config["r"] = configs[0]["r"] * k
    config["lora_alpha"] = configs[0]["lora_alpha"] * k
    return config, out


def make_soup(runs: Sequence[str | Path], out_dir: str | Path, mix: Sequence[float] | None = None,
              overwrite: bool = False) -> Path:
    """Write a run folder whose adapter is the (weighted) mean of the runs' LoRA updates.

    Args:
        runs: two or more LoRA run folders (or their ``best/`` folders) of the same recipe shape.
        out_dir: the soup's folder; it loads like a run (``embedtune eval --run``, ``export``, ``serve``).
        mix: weights per run (normalized to sum to 1); default uniform.
        overwrite: replace a non-empty ``out_dir``.

    Raises:
        SoupError: fewer than two runs, a folder that is not a LoRA run, or runs that disagree on the base
            model, depth, encoding, LoRA rank, alpha or target modules.
    """
    paths = [Path(r).expanduser() for r in runs]
    if len(paths) < 2:
        raise SoupError(f"a soup needs at least two runs, got {len(paths)}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise SoupError("the same run is given twice; to weight a run more, use mix")
    mix = [1.0] * len(paths) if mix is None else list(mix)
    if len(mix) != len(paths) or any(m <= 0 for m in mix):
        raise SoupError(f"mix needs one positive weight per run ({len(paths)}), got {mix}")
    mix = [m / sum(mix) for m in mix]
    out = Path(out_dir).expanduser()
    if out.resolve() in {p.resolve() for p in paths}:
        raise SoupError(f"the soup folder {out} is one of its runs; choose another folder")
    check_output_dir(out, overwrite)

    metas, configs, tensors = zip(*(_run_parts(p) for p in paths), strict=True)
    for field in SAME_ENCODING:
        _same(field, [m.get(field) for m in metas], paths, CONFIG_NAME)
    for field in SAME_ADAPTER:
        _same(field, [c.get(field) for c in configs], paths, ADAPTER_CONFIG)
    _same("target_modules", [sorted(c.get("target_modules") or []) for c in configs], paths, ADAPTER_CONFIG)
    for run, t in zip(paths[1:], tensors[1:], strict=True):
        if t.keys() != tensors[0].keys():
            missing = sorted(set(tensors[0]) ^ set(t))[:3]
            raise SoupError(f"{run / ADAPTER_WEIGHTS}: its adapter tensors differ from {paths[0]}'s (e.g. {missing})")
        for key, value in t.items():
            if value.shape != tensors[0][key].shape:
                raise SoupError(f"{run / ADAPTER_WEIGHTS}: {key} has shape {tuple(value.shape)}, "
                                f"{paths[0]} has {tuple(tensors[0][key].shape)}")

    config, weights = soup_adapters(configs, tensors, mix)
    meta = dict(metas[0])
    meta["soup"] = [{"run": str(p.resolve()), "weight": round(m, 6)} for p, m in zip(paths, mix, strict=True)]
    with atomic_dir(out) as tmp:
        for f in paths[0].iterdir():  # the tokenizer files (and chat template) come from the first run
            if f.is_file() and f.name not in (CONFIG_NAME, ADAPTER_CONFIG, ADAPTER_WEIGHTS) and (
                    f.name.startswith("tokenizer") or f.suffix == ".jinja"):
                shutil.copy2(f, tmp / f.name)
        save_file(weights, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
