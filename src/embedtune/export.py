"""Export a run: LoRA merged into the base weights, or a folder that sentence-transformers loads.

Both exports are written atomically (:func:`embedtune.io.atomic_dir`): an error leaves no partial folder.

The sentence-transformers folder must give the same vectors as :class:`~embedtune.models.embedder.Embedder`
without any embedtune code at load time, so the *saved tokenizer* does embedtune's preprocessing itself:

* the prompt template (``prefix{}suffix``) becomes a normalizer that prepends the prefix and appends the
  suffix before the model's own normalizer runs, so the text is tokenized exactly like ``prompt.format(text)``
  (sentence-transformers' own prompts can only prepend, and the paper's templates have suffixes);
* the EOS id becomes part of the post-processor template (after the model's own leading special tokens),
  so it is appended exactly once and the tokenizer's truncation keeps it (truncation makes room for the
  template's special tokens first); a prompt's suffix is text, not template, so for a text over the max
  length the tokenizer cuts the suffix where embedtune keeps it: such texts (only those) differ, and the
  export says so;
* padding is on the right: sentence-transformers does not derive position ids from the attention mask,
  and right padding gives the positions embedtune uses for either padding side.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .io import atomic_dir, check_output_dir
from .models.embedder import CONFIG_NAME, Embedder

log = logging.getLogger(__name__)

ST_POOLING = {"last": "lasttoken", "mean": "mean", "weighted_mean": "weightedmean"}
ST_INSTALL_HINT = "pip install 'embedtune[st]' (or: pip install sentence-transformers)"


class NotARunError(ValueError):
    """The folder given to an export is not an embedtune run or export (no ``embedtune.json``)."""


# ---- loading the source ---------------------------------------------------------------------------------
def load_source(source: str | Path | Embedder, *, device: str = "cpu", dtype: str = "float32",
                base_model: str | None = None, trust_remote_code: bool = False) -> tuple[Embedder, bool]:
    """Return ``(embedder, owned)``: an Embedder as given (``owned`` False: never modify it) or loaded
    from a run folder (``owned`` True).

    Raises:
        NotARunError: ``source`` is a folder without ``embedtune.json`` (the message says what it looks like).
        FileNotFoundError: ``source`` does not exist.
    """
    if isinstance(source, Embedder):
        return source, False
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if not path.is_dir() or not (path / CONFIG_NAME).is_file():
        hint = ""
        if path.is_dir() and (path / "adapter_config.json").is_file():
            hint = (" It holds a bare PEFT adapter: load it with Embedder.from_pretrained(BASE, adapter=FOLDER) "
                    "and pass that Embedder to the export function.")
        elif path.is_dir() and (path / "config.json").is_file():
            hint = " It holds a plain transformers checkpoint, which has nothing to merge."
        raise NotARunError(f"{path} is not an embedtune run: it holds no {CONFIG_NAME} (expected the output "
                           f"folder of `embedtune train` or `embedtune export`).{hint}")
    emb = Embedder.load(path, device=device, dtype=dtype, base_model=base_model, trust_remote_code=trust_remote_code)
    return emb, True


def merged_backbone(embedder: Embedder, in_place: bool = False) -> Any:
    """The backbone with its LoRA adapter merged into the base weights (a plain transformers model).

    Args:
        embedder: an Embedder, with or without an adapter.
        in_place: merge into ``embedder``'s own weights (faster, no copy, but the Embedder is spent);
            otherwise the backbone is copied first and ``embedder`` is left untouched.
    """
    backbone = embedder.backbone if in_place else copy.deepcopy(embedder.backbone)
    if embedder.has_adapter():
        backbone = backbone.merge_and_unload()
    return backbone.eval()


def _check_target(out_dir: Path, source: str | Path | Embedder, overwrite: bool) -> None:
    if not isinstance(source, Embedder) and out_dir.resolve() == Path(source).expanduser().resolve():
        raise ValueError(f"the export folder {out_dir} is the run folder itself; choose another --out")
    check_output_dir(out_dir, overwrite)


def _provenance(embedder: Embedder, source: str | Path | Embedder) -> dict[str, Any]:
    return {
        "base_model": embedder.source.spec if embedder.source else None,
        "run": None if isinstance(source, Embedder) else str(Path(source).expanduser().resolve()),
        "had_adapter": embedder.has_adapter(),
    }


def _update_json(path: Path, **entries: Any) -> None:
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(entries)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# ---- merged export ------------------------------------------------------------------------------------
def export_merged(
    source: str | Path | Embedder,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    base_model: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Merge a run's LoRA adapter into the base weights and save a standalone embedtune model.

    The folder holds safetensors weights, the tokenizer and ``embedtune.json`` (``adapter: false``), so
    ``Embedder.load(out_dir)`` gives the same embeddings as base + adapter, without PEFT or the base model.

    Args:
        source: a run folder (holds ``embedtune.json``) or an Embedder (left untouched).
        out_dir: the folder to write.
        dtype: precision to load, merge and save in (``float32`` keeps the merge exact; ``bfloat16`` halves it).
        base_model: override the base model recorded in the run (e.g. a local copy of a hub model).
        trust_remote_code: allow model code from the hub (MiniCPM).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        NotARunError: ``source`` is a folder that embedtune did not write.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    out_dir = Path(out_dir).expanduser()
    _check_target(out_dir, source, overwrite)
    embedder, owned = load_source(source, dtype=dtype, base_model=base_model, trust_remote_code=trust_remote_code)
    backbone = merged_backbone(embedder, in_place=owned)
    merged = Embedder(backbone, embedder.tokenizer, source=embedder.source, **embedder.options.as_dict())
    with atomic_dir(out_dir) as tmp:
        merged.save(tmp)
        _update_json(tmp / CONFIG_NAME, exported_from=_provenance(embedder, source))
    log.info("wrote merged model to %s", out_dir)
    return out_dir


# ---- sentence-transformers export -----------------------------------------------------------------------
def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids the tokenizer adds before and after a text by itself (e.g. ``[BOS]`` and ``[]``)."""
    for probe in ("the", "a", "hello world", "embedtune probe text"):
        bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
        if not bare:  # the probe is not in a small vocabulary: try another
            continue
        full = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return list(full[:start]), list(full[start + len(bare) :])
    raise ValueError("cannot tell which special tokens the tokenizer adds around a text; export it by hand")


def _verify_saved_tokenizer(folder: Path, embedder: Embedder) -> None:
    """Reload the saved tokenizer as sentence-transformers will and check it gives embedtune's ids.

    Some transformers tokenizer classes rebuild their pipeline on load (by model type), which would
    silently drop the prompt or the EOS; an export that cannot be loaded faithfully must fail loudly.
    """
    from transformers import AutoTokenizer

    tt = embedder.text_tokenizer
    loaded = AutoTokenizer.from_pretrained(str(folder))
    probes = ["the", "a man plays guitar", "hello world, 123!", " ".join(["the quick brown fox"] * tt.max_length)]
    got = [list(g) for g in loaded(probes, truncation=True, max_length=tt.max_length)["input_ids"]]
    want = tt.ids(probes)
    if tt.suffix:
        log.warning(
            "the prompt %r ends after the text; embedtune keeps that suffix when it truncates a text over "
            "%d tokens, but the sentence-transformers tokenizer truncates from the right and cuts it, so "
            "over-long texts get different vectors from this folder (shorter ones are exact)", tt.prompt,
            tt.max_length)
        # What the exported tokenizer must give: the prompted text, its end cut when over-long, one EOS.
        want = dataclasses.replace(tt, prompt=None).ids([tt.format(p) for p in probes])
    if got != want:
        raise ValueError(
            f"the saved tokenizer reloads as {type(loaded).__name__}, which does not reproduce embedtune's "
            f"token ids (prompt + EOS) for this model; the sentence-transformers export is not exact here. "
            f"Use the merged embedtune export instead (embedtune export --format embedtune)."
        )


def preprocessing_tokenizer(embedder: Embedder) -> Any:
    """A copy of the Embedder's tokenizer that applies its prompt and appends its EOS id by itself.

    ``copy(text)`` then gives the ids ``Embedder`` uses for ``text``, padding on the right, also under
    truncation (the EOS kept) unless the prompt has a suffix: the tokenizer's truncation cuts the end of the
    prompted text, where embedtune cuts the text and keeps the suffix.

    Raises:
        ValueError: the tokenizer is not a fast (``tokenizers``-backed) tokenizer.
    """
    from tokenizers import Regex, normalizers, processors

    tt = embedder.text_tokenizer
    tok = copy.deepcopy(tt.tokenizer)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tok).__name__} is not a fast tokenizer; the sentence-transformers export needs one")
    if tt.prompt:
        prefix, suffix = tt.prompt_affixes
        steps = [normalizers.Prepend(prefix)] if prefix else []
        if suffix:
            steps.append(normalizers.Replace(Regex(r"\z"), suffix))  # the empty match at the end: append
        if backend.normalizer is not None:
            steps.append(backend.normalizer)  # the model's own normalizer sees the whole prompted text
        backend.normalizer = normalizers.Sequence(steps)
    lead, trail = _special_affixes(tt.tokenizer)
    while trail and trail[-1] == tt.eos_id:  # like TextTokenizer: the tokenizer's own EOS is never doubled
        trail.pop()
    if trail:
        raise ValueError(f"the tokenizer appends special tokens {trail} after each text; cannot export it exactly")
    single = [f"etlead{i}" for i in range(len(lead))] + ["$A", "eteos"]
    pair = single + ["$B:1", "eteos:1"]
    specials = [{"id": f"etlead{i}", "ids": [t], "tokens": [tok.convert_ids_to_tokens(t)]} for i, t in enumerate(lead)]
    specials.append({"id": "eteos", "ids": [tt.eos_id], "tokens": [tok.convert_ids_to_tokens(tt.eos_id)]})
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    tok.padding_side = "right"
    tok.model_max_length = tt.max_length  # sentence-transformers truncates at the tokenizer's max length
    return tok


def _save_tokenizer(tok: Any, folder: Path) -> None:
    tok.save_pretrained(str(folder))
    # Load back as a plain tokenizers-backed tokenizer: model-specific classes rebuild the post-processor
    # from their add_bos/add_eos flags on load, which would drop the EOS template.
    _update_json(folder / "tokenizer_config.json", tokenizer_class="TokenizersBackend", padding_side="right")


def _st_classes() -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """sentence-transformers' ``SentenceTransformer``, ``Transformer``, ``Pooling`` and ``Normalize`` where the
    installed version keeps them, and the ``Transformer`` arguments that make it embed plain text.

    Raises:
        ImportError: sentence-transformers is not installed (the ``st`` extra).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(f"the sentence-transformers export needs sentence-transformers: {ST_INSTALL_HINT}") from exc
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        # Plain text only: with a chat template in the tokenizer (SmolLM2-Instruct has one), version 6
        # would otherwise render every text as a chat message.
        text_only = {"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                     "module_output_name": "token_embeddings"}
    except ImportError:  # 3.x - 5.x: plain text is the only path
        from sentence_transformers.models import Normalize, Pooling, Transformer

        text_only = {}
    return SentenceTransformer, Transformer, Pooling, Normalize, text_only


def export_sentence_transformers(
    source: str | Path | Embedder,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    base_model: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a folder that ``sentence_transformers.SentenceTransformer(out_dir)`` loads and that gives the
    same embeddings as the Embedder (LoRA merged, prompt and EOS done by the saved tokenizer, same pooling,
    max length and normalization).

    The folder also holds ``embedtune.json`` (prompt recorded as ``null``, since the tokenizer applies it),
    so ``Embedder.load`` and ``embedtune serve`` read it too.

    Args:
        source: a run folder (holds ``embedtune.json``) or an Embedder (left untouched).
        out_dir: the folder to write.
        dtype: precision to load, merge and save in.
        base_model: override the base model recorded in the run.
        trust_remote_code: allow model code from the hub.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ImportError: sentence-transformers is not installed (the ``st`` extra).
        NotARunError: ``source`` is a folder that embedtune did not write.
    """
    SentenceTransformer, Transformer, Pooling, Normalize, text_only = _st_classes()
    out_dir = Path(out_dir).expanduser()
    _check_target(out_dir, source, overwrite)
    embedder, owned = load_source(source, dtype=dtype, base_model=base_model, trust_remote_code=trust_remote_code)
    tok = preprocessing_tokenizer(embedder)
    backbone = merged_backbone(embedder, in_place=owned)
    with atomic_dir(out_dir) as tmp:
        stage = tmp / ".hf-stage"  # the merged checkpoint that sentence-transformers' Transformer loads from
        backbone.save_pretrained(str(stage))
        _save_tokenizer(tok, stage)
        _verify_saved_tokenizer(stage, embedder)
        modules = [
            Transformer(str(stage), max_seq_length=embedder.max_length, **text_only),
            Pooling(embedder.dim, pooling_mode=ST_POOLING[embedder.pooling]),
        ]
        if embedder.normalize:
            modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(tmp), create_model_card=False)
        _save_tokenizer(tok, tmp)  # make sure the saved tokenizer is ours, whatever the Transformer module wrote
        shutil.rmtree(stage)
        meta = embedder.settings()
        meta.update(prompt=None, padding_side="right", base_model=".", adapter=False,
                    tokenizer_applies_prompt=embedder.prompt, exported_from=_provenance(embedder, source))
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("wrote sentence-transformers model to %s", out_dir)
    return out_dir
