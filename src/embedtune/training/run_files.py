"""What a training run writes besides weights: cleaned data report, metrics (JSONL, TensorBoard), dev curve."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..io import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard when installed."""

    def __init__(self, out: Path, enabled: bool = True, append: bool = False) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self._file = open(out / "metrics.jsonl", "a" if append else "w", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def write_curve(out: Path, curve: list[dict[str, Any]]) -> None:
    """Dev score vs step as ``curve.json`` and, when matplotlib is installed, ``curve.png``."""
    write_text_atomic(out / "curve.json", json.dumps(curve, indent=2) + "\n")
    try:
        from ..evaluation.plots import plot_curve

        plot_curve(curve, out / "curve.png")
    except ImportError as exc:
        log.warning("curve.png not written: %s", exc)


def prepare_examples(cfg: RunConfig, examples: list | None, out: Path | None, device: str | None = None,
                     show_progress: bool = True) -> tuple[list, dict[str, Any]]:
    """Read the configured files (unless ``examples`` are given) and the synthetic pairs of ``data.synthetic``
    (generated on ``device`` when not cached yet), decontaminate against the nine STS test sets, cap to
    ``max_rows``; writes ``data_report.json`` and ``decontamination.json`` to ``out`` (rank 0)."""
    report: dict[str, Any] = {}
    dc = cfg.data
    if examples is None:
        from ..data.triplets import load_training_data

        files = list(dc.train_files)
        if dc.synthetic.pairs > 0:
            from .synthetic_cache import synthetic_file

            path, report["synthetic"] = synthetic_file(dc.synthetic, device=device, show_progress=show_progress)
            files.append(str(path))
        examples, loads = load_training_data(files, columns=dc.columns, on_bad_row=dc.on_bad_row,
                                             data_dir=dc.data_dir)
        report["files"] = [r.to_dict() for r in loads]
    report["rows_read"] = len(examples)
    if dc.decontaminate:
        from ..data.decontaminate import decontaminate, sts_sentence_index

        examples, removed = decontaminate(examples, sts_sentence_index(dc.data_dir))
        report["decontamination"] = removed.to_dict()
        if out is not None:
            write_text_atomic(out / "decontamination.json", json.dumps(removed.to_dict(), indent=2) + "\n")
        log.info("decontamination: %s", removed.summary())
    else:
        report["decontamination"] = "off (data.decontaminate=false): rows overlapping the STS tests were kept"
    if dc.max_rows is not None and len(examples) > dc.max_rows:
        report["max_rows"] = dc.max_rows
        examples = examples[: dc.max_rows]
    report["rows_used"] = len(examples)
    if out is not None:
        write_text_atomic(out / "data_report.json", json.dumps(report, indent=2, default=str) + "\n")
    return examples, report
