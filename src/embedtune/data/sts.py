"""The nine STS benchmarks of the paper (under their MTEB names), plus STSBenchmark dev for model selection.

Files come from a data folder laid out like ``shared/data/sts`` (``<folder>/sts/<name>/test.tsv``); the
folder is ``--data-dir``, else ``$EMBEDTUNE_DATA``, else ``../shared/data`` when it exists. With a network,
``load_sts_hub`` reads MTEB's hub copies instead.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DATA_ENV = "EMBEDTUNE_DATA"


@dataclass(frozen=True)
class StsTask:
    """One benchmark: its MTEB name, folder and file, expected size and hub copy."""

    name: str
    folder: str
    file: str
    rows: int
    hub_id: str
    hub_split: str = "test"
    has_mteb_like: bool = False
    hub_subset: str | None = None


TASKS: dict[str, StsTask] = {
    t.name: t
    for t in [
        StsTask("STS12", "STS12", "test.tsv", 3108, "mteb/sts12-sts", has_mteb_like=True),
        StsTask("STS13", "STS13", "test.tsv", 1500, "mteb/sts13-sts", has_mteb_like=True),
        StsTask("STS14", "STS14", "test.tsv", 3750, "mteb/sts14-sts", has_mteb_like=True),
        StsTask("STS15", "STS15", "test.tsv", 3000, "mteb/sts15-sts", has_mteb_like=True),
        StsTask("STS16", "STS16", "test.tsv", 1186, "mteb/sts16-sts", has_mteb_like=True),
        StsTask("STS17", "STS17", "test.tsv", 250, "mteb/sts17-crosslingual-sts", hub_subset="en-en"),
        StsTask("STSBenchmark", "STSBenchmark", "test.tsv", 1379, "mteb/stsbenchmark-sts"),
        StsTask("BIOSSES", "BIOSSES", "test.tsv", 100, "mteb/biosses-sts"),
        StsTask("SICK-R", "SICK-R", "test.tsv", 9927, "mteb/sickr-sts"),
    ]
}
"""The paper's nine benchmarks, in the paper's order."""

DEV_TASKS: dict[str, StsTask] = {
    "STSBenchmark-dev": StsTask("STSBenchmark-dev", "STSBenchmark", "dev.tsv", 1500, "mteb/stsbenchmark-sts",
                                hub_split="validation"),
}

ALL_TASKS: dict[str, StsTask] = {**TASKS, **DEV_TASKS}
"""Every benchmark this module can load: the nine, then the dev sets."""

ALIASES = {"sts17-en-en": "STS17", "stsb": "STSBenchmark", "sickr": "SICK-R", "sick-r": "SICK-R"}


@dataclass
class StsData:
    """Sentence pairs with gold scores."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    source: str

    def __len__(self) -> int:
        return len(self.scores)

    def head(self, n: int | None) -> StsData:
        """The first ``n`` pairs (all of them when ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        return StsData(self.name, self.sentences1[:n], self.sentences2[:n], self.scores[:n], self.source)


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the argument, else ``$EMBEDTUNE_DATA``, else ``../shared/data`` (from the current
    folder, then from this checkout). Raises FileNotFoundError saying where it looked."""
    tried: list[str] = []
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if p.is_dir():
            return p
        raise FileNotFoundError(f"data folder {p} (from --data-dir) does not exist")
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        raise FileNotFoundError(f"data folder {p} (from ${DATA_ENV}) does not exist")
    here = Path(__file__).resolve()
    for candidate in [Path.cwd() / ".." / "shared" / "data", *(p / "shared" / "data" for p in here.parents)]:
        tried.append(str(candidate))
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no data folder: pass --data-dir, set ${DATA_ENV}, or place it at ../shared/data (looked in: "
        + ", ".join(dict.fromkeys(tried)) + ")"
    )


def resolve_task_names(tasks: str | list[str] | None) -> list[str]:
    """``all``/None -> the nine; otherwise names (case-insensitive, aliases allowed), validated."""
    if tasks is None or tasks == "all" or tasks == ["all"]:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    known = ALL_TASKS
    lower = {k.lower(): k for k in known} | ALIASES
    out = []
    for t in tasks:
        name = lower.get(t.lower())
        if name is None:
            raise ValueError(f"unknown STS task {t!r}; known tasks: {', '.join(known)}")
        out.append(name)
    return out


def read_sts_tsv(path: Path, name: str) -> StsData:
    """Read a ``sentence1<TAB>sentence2<TAB>score`` file (header first; CSV quoting, as the shared files are
    written), strictly: every problem raises ValueError as ``FILE:LINE: field 'X' ...``."""
    s1, s2, scores = [], [], []
    # surrogateescape: a bad byte becomes a lone surrogate, found below with its line instead of a traceback
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"sentence1", "sentence2", "score"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(sorted(missing))}; expected "
                             "sentence1<TAB>sentence2<TAB>score")
        for row in reader:
            n = reader.line_num
            if None in row or None in row.values():  # DictReader's marks of too many / too few fields
                width = len(reader.fieldnames) + len(row.get(None, ())) - sum(v is None for v in row.values())
                raise ValueError(f"{path}:{n}: the row has {width} fields but the header has "
                                 f"{len(reader.fieldnames)}; expected tab-separated fields (quote a tab in a field)")
            for col in ("sentence1", "sentence2", "score"):
                if any("\udc80" <= ch <= "\udcff" or ch == "\x00" for ch in row[col]):
                    raise ValueError(f"{path}:{n}: field {col!r} holds invalid UTF-8 or a NUL byte")
            try:
                score = float(row["score"])
            except ValueError:
                raise ValueError(f"{path}:{n}: field 'score' is {row['score']!r}, not a number") from None
            if not math.isfinite(score):
                raise ValueError(f"{path}:{n}: field 'score' is {row['score']!r}; expected a finite number")
            for col in ("sentence1", "sentence2"):
                if not row[col].strip():
                    raise ValueError(f"{path}:{n}: field {col!r} is empty; expected a sentence")
            s1.append(row["sentence1"])
            s2.append(row["sentence2"])
            scores.append(score)
    if not scores:
        raise ValueError(f"{path}: no rows after the header; expected sentence pairs with scores")
    return StsData(name, s1, s2, scores, str(path))


def load_sts(name: str, data_dir: str | Path | None = None, variant: str = "mteb_like",
             source: str = "local") -> StsData:
    """Load one benchmark from the data folder (or MTEB's hub copy).

    Args:
        name: MTEB name (``STS12`` … ``SICK-R``) or ``STSBenchmark-dev``.
        data_dir: data folder (see :func:`find_data_dir`).
        variant: for STS12-16, ``mteb_like`` (tokenized and lowercased text, as MTEB and the paper) or ``raw``.
        source: ``local`` (the data folder), ``hub`` (``mteb/*`` data sets; needs a network and ``datasets``)
            or ``auto`` (the data folder when it has the file, else the hub).
    """
    if variant not in ("mteb_like", "raw"):
        raise ValueError(f"variant must be 'mteb_like' or 'raw', got {variant!r}")
    if source not in ("local", "hub", "auto"):
        raise ValueError(f"source must be 'local', 'hub' or 'auto', got {source!r}")
    (name,) = resolve_task_names([name])
    if source == "hub":
        return load_sts_hub(name, variant)
    if source == "auto":
        try:
            return load_sts(name, data_dir, variant)
        except FileNotFoundError as exc:
            log.info("%s; trying the hub copy", exc)
            return load_sts_hub(name, variant)
    task = ALL_TASKS[name]
    root = find_data_dir(data_dir)
    file = task.file
    if task.has_mteb_like and variant == "mteb_like":
        file = file.replace(".tsv", ".mteb_like.tsv")
    path = root / "sts" / task.folder / file
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name}: file {path} not found (data folder {root})")
    data = read_sts_tsv(path, name)
    if len(data) != task.rows:
        warnings.warn(f"benchmark {name}: {len(data)} pairs in {path}, expected {task.rows}", stacklevel=2)
    return data


def load_sts_hub(name: str, variant: str = "mteb_like") -> StsData:
    """Load a benchmark from MTEB's copy on the Hugging Face hub (needs ``datasets`` and a network).

    The hub holds only MTEB's text, so ``variant="raw"`` is refused for STS12-16.
    """
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError("loading STS from the hub needs 'datasets': pip install 'embedtune[hub]'") from None
    (name,) = resolve_task_names([name])
    task = ALL_TASKS[name]
    if variant == "raw" and task.has_mteb_like:
        raise ValueError(f"benchmark {name}: the hub copy ({task.hub_id}) has only the mteb_like text; "
                         "the raw variant needs the data folder")
    args = (task.hub_id, task.hub_subset) if task.hub_subset else (task.hub_id,)
    ds = load_dataset(*args, split=task.hub_split)
    missing = {"sentence1", "sentence2", "score"} - set(ds.column_names)
    if missing:
        raise ValueError(f"hub data set {task.hub_id}: lacks column(s) {', '.join(sorted(missing))}")
    data = StsData(name, list(ds["sentence1"]), list(ds["sentence2"]), [float(s) for s in ds["score"]],
                   f"hf://{task.hub_id}" + (f"/{task.hub_subset}" if task.hub_subset else ""))
    if len(data) != task.rows:
        warnings.warn(f"benchmark {name}: {len(data)} pairs in {task.hub_id}, expected {task.rows}", stacklevel=2)
    return data


def is_sts_file_spec(spec: str) -> bool:
    """Whether a task entry names an STS-format file (it ends in ``.tsv`` or holds a path separator)."""
    return spec.lower().endswith(".tsv") or "/" in spec or os.sep in spec


def resolve_task_specs(tasks: str | list[str] | None, validate: bool = True) -> list[str]:
    """Like :func:`resolve_task_names`, but an entry may also be an STS-format file (a user's own set).

    Benchmark names come back canonical, files as given. With ``validate`` each file is read and checked
    here (errors name ``FILE:LINE``), so a bad file fails before any model loads. A file goes by its stem in
    results (``my_dev.tsv`` -> ``my_dev``).

    Raises:
        ValueError: an unknown name, a bad file, or two entries with the same name.
        FileNotFoundError: a file that does not exist.
    """
    if isinstance(tasks, str) and tasks != "all":
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if tasks is None or tasks == "all" or tasks == ["all"]:
        return list(TASKS)
    benchmarks = {t.lower() for t in ALL_TASKS} | set(ALIASES)
    out: list[str] = []
    seen: dict[str, str] = {}  # lower-case name -> the entry that took it
    for spec in tasks:
        if is_sts_file_spec(spec):
            name = Path(spec).stem
            if name.lower() in benchmarks:
                raise ValueError(f"file {spec} would go by the benchmark name {name!r} in results; rename the file")
            if validate:
                read_sts_tsv(_sts_file(spec), name)
            out.append(spec)
        else:
            name = resolve_task_names([spec])[0]
            out.append(name)
        if name.lower() in seen:
            raise ValueError(f"tasks {seen[name.lower()]} and {spec} both go by the name {name!r}; results are "
                             "keyed by name")
        seen[name.lower()] = spec
    return out


def _sts_file(spec: str) -> Path:
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"STS file {spec} not found (looked at {p.resolve()}); expected a "
                                "sentence1<TAB>sentence2<TAB>score .tsv file or a benchmark name")
    return p


def load_sts_file_or_task(spec: str, data_dir: str | Path | None = None, variant: str = "mteb_like") -> StsData:
    """A task name, or a path to any TSV in the same format (a user's own dev set), named by its stem."""
    if is_sts_file_spec(spec):
        return read_sts_tsv(_sts_file(spec), Path(spec).stem)
    return load_sts(spec, data_dir, variant)
