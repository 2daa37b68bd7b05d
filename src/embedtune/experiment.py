"""The resumable experiment runner behind ``embedtune experiment`` (and ``embedtune demo``).

An experiment file names a base recipe, the models, a reference setting, and the factors to ablate
one at a time from it (the paper's protocol: learning rate, prompt, hard negatives, pooling), or a full
grid. Each cell is: base evaluation (shared by cells with the same model, prompt and pooling), training,
and evaluation of the final and of the best checkpoint. Everything a cell finishes is on disk, so an
interrupted experiment resumes where it stopped (and an interrupted training resumes from its checkpoint).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import MOVED_KEYS, ConfigError, EvalConfig, RunConfig, coerce_value, get_value, load_config, set_values
from .io import write_text_atomic

log = logging.getLogger(__name__)

# Short names for the paper's factors; any other factor is a dotted recipe key (model.num_layers, lora.r ...).
FACTOR_ALIASES = {"lr": "train.lr", "prompt": "model.prompt", "hard_negatives": "data.hard_negatives",
                  "pooling": "model.pooling"}


def factor_key(name: str) -> str:
    """The dotted recipe key of a factor (``lr`` -> ``train.lr``; a dotted key is returned as it is)."""
    return FACTOR_ALIASES.get(name, name)


# Keys of experiment files of earlier versions, now set in the recipe's eval section.
MOVED_SPEC_KEYS = {"eval_tasks": "eval.tasks", "eval_autocast": "eval.autocast", "eval_batch_size": "eval.batch_size"}
# Settings recorded in settings.json under their earlier names: read as the keys they are now.
RECORDED_AS = {f"config.{old}": f"config.{new}" for old, new in MOVED_KEYS.items()}


@dataclass
class ExperimentSpec:
    """What ``configs/experiments/*.yaml`` holds.

    A factor is one of the paper's (``lr``, ``prompt``, ``hard_negatives``, ``pooling``) or any dotted recipe
    key (``model.num_layers``, ``lora.target_modules``, ``train.temperature`` ...). The reference cell is the
    base recipe (after ``overrides``) with the values given in ``reference``; a factor that ``reference``
    does not name keeps the recipe's value. Each ablation cell changes one factor of the reference.
    """

    name: str
    base_config: str | None = None
    output_dir: str = "runs/experiments/default"
    models: list[str] | None = None  # None: the recipe's model.name_or_path
    reference: dict[str, Any] = field(default_factory=dict)
    ablate: dict[str, list[Any]] = field(default_factory=dict)
    grid: bool = False
    overrides: list[str] = field(default_factory=list)
    # Which models are scored; how they are scored is the recipe's eval section (eval.tasks, eval.autocast,
    # eval.batch_size), set in the base recipe or through overrides.
    eval_best: bool = True  # also score best/ when the dev curve picked another step than the last
    eval_base: bool = True  # false: skip the untrained model's evaluation (probes that compare trained cells)

    def recipe(self) -> RunConfig:
        """The base recipe with the spec's overrides: what the reference cell trains, unless ``reference``
        changes it."""
        return load_config(self.base_config, self.overrides)

    def factors(self) -> list[str]:
        """Dotted keys of the factors in play (named in ``reference`` or ``ablate``), the paper's first."""
        named = [factor_key(f) for f in [*self.reference, *self.ablate]]
        paper = [k for k in FACTOR_ALIASES.values() if k in named]
        return list(dict.fromkeys([*paper, *named]))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _part(key: str, value: Any) -> str:
    """How a factor value reads in a cell's folder name (the paper's four keep their historical form)."""
    if key == "train.lr":
        return f"lr{value:g}"
    if key == "model.prompt":
        return f"prompt-{value or 'none'}"
    if key == "data.hard_negatives":
        return f"hn-{int(value)}"
    if key == "model.pooling":
        return str(value)
    text = ",".join(map(str, value)) if isinstance(value, tuple) else (f"{value:g}" if isinstance(value, float)
                                                                          else str(value))
    text = re.sub(r"[^A-Za-z0-9.,-]+", "_", text)
    if len(text) > 24:  # a long value (a list of files, a template): a short stable digest instead
        text = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{key.rsplit('.', 1)[-1]}-{text}"


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment: its model and the value of every factor in play.

    ``settings`` holds (dotted key, value) for each factor in play. The cell's config is the recipe with
    the settings that differ from it, nothing else. Its folder name shows the paper's factors always (the
    names of earlier grids) and any other factor only where it differs from the recipe.
    """

    model: str
    settings: tuple[tuple[str, Any], ...]
    varied: str = "reference"  # the factor this cell ablates ("reference" for the reference cell, "grid")
    base_parts: tuple[str, ...] = ()  # what identifies its base evaluation besides the model
    name_parts: tuple[str, ...] = ()  # what identifies the cell besides the model

    @property
    def model_key(self) -> str:
        """The model name made safe for a folder name."""
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.model)[-40:]

    @property
    def name(self) -> str:
        return "__".join([self.model_key, *self.name_parts])

    @property
    def base_key(self) -> str:
        return "__".join([self.model_key, *self.base_parts])

    def value(self, key: str) -> Any:
        """The cell's value of a factor (alias or dotted key)."""
        return dict(self.settings)[factor_key(key)]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view (what the report and experiment.json record)."""
        return {"model": self.model, "varied": self.varied,
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings}}


def load_spec(path: str | Path) -> ExperimentSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"experiment file {p} does not exist")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    known = set(ExperimentSpec.__dataclass_fields__)
    moved = sorted(set(data) & set(MOVED_SPEC_KEYS))
    if moved:
        raise ConfigError(f"{p}: {', '.join(moved)} moved into the recipe's eval section: write "
                          f"{', '.join(f'{MOVED_SPEC_KEYS[k]}=VALUE' for k in moved)} under overrides")
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if "name" not in data:
        raise ConfigError(f"{p}: 'name' is required")
    for section in ("reference", "ablate"):
        for name, value in (data.get(section) or {}).items():
            try:
                values = value if section == "ablate" else [value]
                if not isinstance(values, list):
                    raise ConfigError(f"expected a list of values, got {value!r}")
                for v in values:
                    coerce_value(factor_key(name), _none(name, v))
            except ConfigError as exc:
                raise ConfigError(f"{p}: {section}.{name}: {exc} (a factor is one of "
                                  f"{', '.join(FACTOR_ALIASES)} or a recipe key such as model.num_layers)") from None
    spec = ExperimentSpec(**data)
    try:
        spec.recipe()
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return spec


def _none(name: str, value: Any) -> Any:
    """YAML has no way to write None in a list but ``null``; the prompt also accepts ``none``."""
    if factor_key(name) == "model.prompt" and str(value).lower() in ("none", "null"):
        return None
    return value


def expand_cells(spec: ExperimentSpec) -> list[Cell]:
    """Reference cell per model plus one cell per ablated value (or the full grid when ``grid: true``).

    The reference takes the recipe's value of every factor that ``spec.reference`` does not set.
    """
    recipe = spec.recipe()
    keys = spec.factors()
    ref = {k: get_value(recipe, k) for k in keys}
    ref.update({factor_key(f): coerce_value(factor_key(f), _none(f, v)) for f, v in spec.reference.items()})
    ablate = {factor_key(f): [coerce_value(factor_key(f), _none(f, v)) for v in vs] for f, vs in spec.ablate.items()}
    models = spec.models or [recipe.model.name_or_path]

    def cell(model: str, values: dict[str, Any], varied: str) -> Cell:
        model_values = {"model.prompt": recipe.model.prompt, "model.pooling": recipe.model.pooling,
                        **{k: v for k, v in values.items() if k.startswith("model.")}}
        base = tuple(_part(k, _hashable(v)) for k, v in model_values.items())
        shown = tuple(_part(k, _hashable(values[k])) for k in keys
                      if k in FACTOR_ALIASES.values() or _hashable(values[k]) != _hashable(get_value(recipe, k)))
        return Cell(model, tuple((k, _hashable(values[k])) for k in keys), varied, base, shown)

    cells: list[Cell] = []
    for model in models:
        if spec.grid:
            options = {k: list(dict.fromkeys(map(_hashable, [ref[k], *ablate.get(k, [])]))) for k in keys}
            for combo in itertools.product(*(options[k] for k in keys)):
                cells.append(cell(model, dict(zip(keys, combo)), "grid"))
            continue
        cells.append(cell(model, ref, "reference"))
        for key, values in ablate.items():
            for v in values:
                if _hashable(v) != _hashable(ref[key]):
                    cells.append(cell(model, {**ref, key: v}, key))
    return list(dict.fromkeys(cells))


def _evaluate(load: Callable[[], Any], out: Path, settings: EvalConfig, data_dir: str | None, label: str,
              extra: dict) -> dict:
    """Evaluate ``load()`` on the recipe's benchmarks (``eval.tasks``) unless ``out/results.json`` already
    exists (resume: then no model is loaded)."""
    from .evaluation.report import embedder_meta, load_results, results_payload, write_results
    from .evaluation.sts import evaluate_sts

    if (out / "results.json").is_file():
        return load_results(out)
    embedder = load()
    embedder.autocast = settings.autocast
    start = time.perf_counter()
    scores = evaluate_sts(embedder, settings.tasks, data_dir=data_dir, batch_size=settings.batch_size,
                          show_progress=True)
    payload = results_payload(scores, embedder_meta(embedder, label=label, **extra),
                              wall_seconds=time.perf_counter() - start)
    write_results(out, payload)
    return payload


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as they read back from JSON (paths and other objects as strings)."""
    return json.loads(json.dumps(settings, default=str))


def changed_settings(folder: Path, settings: dict[str, Any]) -> list[str]:
    """``key: recorded -> now`` per setting that differs from ``folder/settings.json`` ([] when none is recorded)."""
    path = folder / "settings.json"
    if not path.is_file():
        return []
    old = _flat(json.loads(path.read_text(encoding="utf-8")))
    for before, now in RECORDED_AS.items():
        if before in old and now not in old:
            old[now] = old.pop(before)
    new = _flat(_plain(settings))
    # A key recorded but no longer in the settings names a setting that was removed from the code (a
    # dead field): nothing computed now can differ by it. A key not recorded names a recipe field added
    # since; a new field defaults to what the code did before it existed, so at its default it changes nothing.
    defaults = _flat(_plain({"config": RunConfig().to_dict()}))
    keys = sorted(k for k in new if old.get(k) != new.get(k)
                  and not (k not in old and k in defaults and new[k] == defaults[k]))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def check_settings(folder: Path, settings: dict[str, Any], what: str) -> None:
    """Record what produced ``folder`` (``settings.json``), or refuse to reuse it for different settings.

    Finished cells and base evaluations are skipped on the next call; without this check, editing the
    spec or the recipe between calls would silently mix results of different settings in one report.
    """
    changed = changed_settings(folder, settings)
    if changed:
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"{what} {folder} was run with other settings ({'; '.join(changed[:5])}{more}); "
            "use another output_dir, or delete that folder to run it again")
    path = folder / "settings.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(_plain(settings), indent=2, sort_keys=True) + "\n")


def _eval_settings(settings: EvalConfig) -> dict[str, Any]:
    return {"tasks": settings.tasks, "autocast": settings.autocast, "batch_size": settings.batch_size}


def _cell_setup(cell: Cell, spec: ExperimentSpec, root: Path, data_dir: str | None):
    """The cell's training config, and the settings its base evaluation and its cell folder must record.

    The config is the spec's recipe with only the cell's settings that differ from it (and its model).
    """
    cfg = spec.recipe()
    wanted = {"model.name_or_path": cell.model,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in cell.settings}}
    set_values(cfg, {k: v for k, v in wanted.items() if v != get_value(cfg, k)})
    if data_dir:
        cfg.data.data_dir = data_dir
    cfg.train.output_dir = str(root / "cells" / cell.name / "run")
    cfg.train.resume = "auto"
    training = cfg.to_dict()
    for section, key in (("train", "output_dir"), ("train", "resume"), ("data", "data_dir")):
        training[section].pop(key, None)  # where things are, not what is computed
    for key in ("tasks", "autocast"):
        training["eval"].pop(key)  # how the runner scores, recorded under "eval" below
    evaluation = _eval_settings(cfg.eval)
    return cfg, {"model": training["model"], "eval": evaluation}, {"config": training, "eval": evaluation}


def cell_status(cell: Cell, spec: ExperimentSpec, data_dir: str | None = None) -> tuple[str, list[str]]:
    """``done``, ``todo`` or ``stale`` (its folder, or its base evaluation's, was made with other settings:
    running the experiment would stop there), with the changed settings."""
    root = Path(spec.output_dir)
    _, base_settings, cell_settings = _cell_setup(cell, spec, root, data_dir)
    changed = changed_settings(root / "cells" / cell.name, cell_settings)
    if spec.eval_base:
        changed += [f"base {c}" for c in changed_settings(root / "base" / cell.base_key, base_settings)]
    if changed:
        return "stale", changed
    done = (root / "cells" / cell.name / "eval_final" / "results.json").is_file()
    return ("done" if done else "todo"), []


def run_cell(cell: Cell, spec: ExperimentSpec, root: Path, data_dir: str | None) -> dict[str, Any]:
    """Base eval (shared), training (resumable), final and best evaluation of one cell."""
    from .evaluation.report import load_results
    from .models.embedder import Embedder
    from .training.trainer import train

    cfg, base_settings, cell_settings = _cell_setup(cell, spec, root, data_dir)
    cell_dir = root / "cells" / cell.name
    run_dir = cell_dir / "run"
    base_dir = root / "base" / cell.base_key
    record: dict[str, Any] = {"cell": cell.describe(), "name": cell.name, "config": cfg.to_dict()}
    if spec.eval_base:
        check_settings(base_dir, base_settings, "base evaluation")
    check_settings(cell_dir, cell_settings, "cell")
    record["base"] = None
    if spec.eval_base:
        if not (base_dir / "results.json").is_file():
            _evaluate(lambda: Embedder.from_config(cfg.model), base_dir, cfg.eval, cfg.data.data_dir,
                      f"base {cell.base_key}", {"run": None})
        record["base"] = load_results(base_dir)

    summary = run_dir / "train_summary.json"
    if not summary.is_file():
        train(cfg)
    record["train"] = json.loads(summary.read_text(encoding="utf-8"))
    curve = run_dir / "curve.json"
    record["curve"] = json.loads(curve.read_text(encoding="utf-8")) if curve.is_file() else []

    record["final"] = _evaluate(lambda: Embedder.load(run_dir), cell_dir / "eval_final", cfg.eval, cfg.data.data_dir,
                                f"{cell.name} final", {"run": str(run_dir)})
    if spec.eval_best and record["train"].get("best_step") == record["train"].get("steps"):
        # The best dev score came at the last step: the best checkpoint holds the final weights.
        record["best"] = {**record["final"], "meta": {**record["final"]["meta"], "same_weights_as": "final"}}
    elif spec.eval_best and (run_dir / "best" / "embedtune.json").is_file():
        record["best"] = _evaluate(lambda: Embedder.load(run_dir / "best"), cell_dir / "eval_best", cfg.eval,
                                   cfg.data.data_dir, f"{cell.name} best", {"run": str(run_dir / "best")})
    return record


def run_experiment(spec: ExperimentSpec, data_dir: str | None = None, only: list[str] | None = None,
                   max_cells: int | None = None) -> Path:
    """Run (or resume) every cell, then write the report folder. Returns the report folder.

    Args:
        spec: the experiment.
        data_dir: data folder override.
        only: run only cells whose name contains one of these substrings (others are still reported if done).
        max_cells: stop after this many cells were worked on in this call (run a long grid in pieces).
    """
    from .experiment_report import write_report

    root = Path(spec.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    cells = expand_cells(spec)
    spec_hash = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True, default=str).encode()).hexdigest()[:12]
    write_text_atomic(root / "experiment.yaml", yaml.safe_dump({**asdict(spec), "hash": spec_hash}, sort_keys=False))
    records, worked = [], 0
    for i, cell in enumerate(cells, 1):
        done = (root / "cells" / cell.name / "eval_final" / "results.json").is_file()
        selected = only is None or any(s in cell.name for s in only)
        if not done and (not selected or (max_cells is not None and worked >= max_cells)):
            log.info("cell %d/%d %s: not run in this call", i, len(cells), cell.name)
            continue
        log.info("cell %d/%d %s%s", i, len(cells), cell.name, " (done, skipped)" if done else "")
        if not done:
            worked += 1
        records.append(run_cell(cell, spec, root, data_dir))
    return write_report(spec, cells, records, root / "report")
