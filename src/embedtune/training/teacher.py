"""A teacher for distillation (``train.teacher``): an embedding model whose similarities the student learns
beside the labels.

InfoNCE tells the student only which candidate is an anchor's positive; every other text of the batch is
equally wrong. A teacher tells it more: which in-batch texts are near the anchor and which hard negatives
are only a little off. Its scores of the same anchors against the same candidates (the columns of
:func:`~embedtune.training.loss.contrastive_logits`) become a second target, the student's softmax pulled
toward the teacher's by a KL term (:func:`~embedtune.training.loss.distillation_kl`).

The teacher embeds every text the run's steps will use once, before the first step (a few minutes on a
CPU for a 22M-parameter encoder), and is then released; a step only looks its vectors up. Any model
``embedtune eval`` takes can teach: a sentence-transformers folder or packaged peer (all-MiniLM-L6-v2) or
an embedtune model folder (a run or an export).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .loss import batch_similarity_logits, contrastive_logits

log = logging.getLogger(__name__)

ROLES = ("anchor", "positive", "negative")


def load_teacher(spec: str, device: str) -> Any:
    """The model ``spec`` names, with an ``encode(texts, batch_size, show_progress=...)``.

    Raises:
        ValueError: ``spec`` is neither a sentence-transformers model nor an embedtune model folder.
    """
    from ..models.peer import PeerEncoder, resolve_peer

    if resolve_peer(spec) is not None:
        return PeerEncoder(spec, device=device)
    if (Path(spec).expanduser() / "embedtune.json").is_file():
        from ..models.embedder import Embedder

        return Embedder.load(Path(spec).expanduser(), device=device)
    raise ValueError(f"train.teacher={spec!r}: expected a sentence-transformers folder (with modules.json), a "
                     f"packaged peer name such as all-MiniLM-L6-v2, or an embedtune model folder (with "
                     f"embedtune.json)")


@dataclass
class TeacherScores:
    """The teacher's unit vectors of a run's texts, and which vector each example's roles take.

    Attributes:
        vectors: (U, D) float32 unit vectors, one per distinct text.
        rows: (examples, 3) index into ``vectors`` of each example's anchor, positive and negative; -1 where
            the example has no such text or is not used by the run.
        source: what taught (recorded in the run's summary).
        seconds: time spent embedding.
    """

    vectors: torch.Tensor
    rows: torch.Tensor
    source: str = ""
    seconds: float = 0.0

    def logits(self, batch: Sequence[int], start: int, count: int, *, negatives: bool, anchor_negatives: bool,
               temperature: float) -> torch.Tensor:
        """The teacher's scores of anchors ``batch[start:start + count]`` against the candidates of the
        global batch ``batch`` (example indices), laid out as the student's: positives, then hard negatives
        when ``negatives``, then anchors when ``anchor_negatives`` (each anchor's own column -inf).
        Returns (count, candidates) float32."""
        rows = self._rows(batch, 3 if negatives else 2)  # (G, roles)
        vec = self.vectors
        neg = vec[rows[:, 2]] if negatives else None
        anchors = vec[rows[:, 0]] if anchor_negatives else None
        logits, _ = contrastive_logits(vec[rows[start : start + count, 0]], vec[rows[:, 1]], neg, temperature,
                                       label_offset=start, anchor_candidates=anchors)
        return logits

    def batch_logits(self, batch: Sequence[int], start: int, count: int, *, negatives: bool,
                     temperature: float) -> torch.Tensor:
        """The teacher's scores of every text of examples ``batch[start:start + count]`` (anchors, then
        positives, then hard negatives when ``negatives``) against every text of the global batch ``batch``,
        laid out as the student's gathered texts: process by process, each one's anchors, positives,
        negatives (:func:`~embedtune.training.loss.batch_similarity_logits`; own columns -inf).
        Returns (roles x count, roles x len(batch)) float32."""
        if count <= 0 or len(batch) % count or start % count:
            raise ValueError(f"a global batch of {len(batch)} cannot be split into process shares of {count} "
                             f"starting at {start}")
        roles = 3 if negatives else 2
        rows = self._rows(batch, roles)  # (G, roles)
        vec = self.vectors
        texts = [vec[rows[r : r + count].T.reshape(-1)] for r in range(0, len(batch), count)]  # per process
        return batch_similarity_logits(texts[start // count], torch.cat(texts), temperature,
                                       offset=start // count * roles * count)

    def _rows(self, batch: Sequence[int], roles: int) -> torch.Tensor:
        """(len(batch), roles) vector indices of the examples' first ``roles`` texts.

        Raises:
            RuntimeError: an example has no vector for one of them (it was not embedded before training).
        """
        idx = torch.as_tensor(list(batch), dtype=torch.long)
        rows = self.rows[idx][:, :roles]
        if (rows < 0).any():
            bad = int(idx[(rows < 0).any(dim=1)][0])
            raise RuntimeError(f"the teacher has no vectors for example {bad}: it was not among the examples "
                               "embedded before training")
        return rows


def teacher_scores(
    encoder: Any,
    examples: Sequence[Any],
    used: Iterable[int],
    *,
    batch_size: int = 128,
    show_progress: bool = True,
    source: str = "",
) -> TeacherScores:
    """Embed, once each, the distinct texts of the examples ``used`` (indices) with ``encoder``.

    Args:
        encoder: anything with ``encode(texts, batch_size=..., show_progress=...) -> (N, D) array``.
        examples: the run's examples (``anchor``, ``positive``, ``negative`` or None).
        used: indices of the examples the run's steps will take; others get no vectors.
        batch_size: the teacher's encode batch size.
        show_progress: the teacher's own progress bar (texts/s and ETA).
        source: recorded as :attr:`TeacherScores.source`.
    """
    t0 = time.perf_counter()
    index: dict[str, int] = {}
    rows = torch.full((len(examples), 3), -1, dtype=torch.long)
    for i in sorted(set(used)):
        e = examples[i]
        for j, role in enumerate(ROLES):
            text = getattr(e, role)
            if text is not None:
                rows[i, j] = index.setdefault(text, len(index))
    texts = list(index)
    log.info("teacher %s: embedding %d distinct texts of %d examples", source, len(texts), int((rows[:, 0] >= 0).sum()))
    vectors = torch.as_tensor(encoder.encode(texts, batch_size=batch_size, show_progress=show_progress))
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"the teacher returned an array of shape {tuple(vectors.shape)} for {len(texts)} texts")
    vectors = F.normalize(vectors.float(), dim=-1)
    return TeacherScores(vectors, rows, source, time.perf_counter() - t0)


def teacher_for_run(train: Any, examples: Sequence[Any], used: Iterable[int], device: str, batch_size: int,
                    show_progress: bool) -> TeacherScores:
    """The teacher ``train.teacher`` names, checked with its settings, and its vectors of the examples ``used``
    (every process embeds them all, so each can score its anchors against the global batch). The teacher
    model is released on return.

    Raises:
        ValueError: a teacher temperature <= 0, a negative weight, or a teacher that is no model.
    """
    if train.teacher_temperature <= 0:
        raise ValueError(f"train.teacher_temperature must be > 0, got {train.teacher_temperature}")
    if train.teacher_weight < 0:
        raise ValueError(f"train.teacher_weight must be >= 0, got {train.teacher_weight}")
    scores = teacher_scores(load_teacher(train.teacher, device), examples, used, batch_size=batch_size,
                            show_progress=show_progress, source=train.teacher)
    log.info("teacher %s embedded the run's texts in %.0f s", train.teacher, scores.seconds)
    return scores
