"""The data order of a run: which examples form each batch of each epoch.

The order of epoch ``e`` is a pure function of (seed, e), so a run resumed from a checkpoint at any step
rebuilds exactly the batches an uninterrupted run would have taken.
"""

from __future__ import annotations

import random


def epoch_order(n: int, epoch: int, seed: int, lengths: list[int] | None, batch: int) -> list[int]:
    """The example order of one epoch: a seeded shuffle, or length-grouped batches when ``lengths`` is given."""
    if lengths is not None:
        from ..data.collate import length_grouped_order

        return length_grouped_order(lengths, batch, seed=seed * 1000 + epoch)
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


def epoch_batches(kinds: list[bool], epoch: int, seed: int, lengths: list[int] | None, batch: int) -> list[list[int]]:
    """The full batches of one epoch, each holding examples of one kind only.

    ``kinds[i]`` says whether example ``i`` is trained with a hard negative. Triplets and pairs can share a
    run (NLI triplets plus paraphrase pairs, say) but not a batch: a batch is one InfoNCE problem, and
    across processes every rank must gather the same roles. Each kind is ordered on its own (seeded
    shuffle or length groups), cut into full batches, and the batches of all kinds are shuffled together,
    so kinds mix over the epoch in proportion to their size. With one kind this is ``epoch_order`` cut into
    batches. Up to ``batch - 1`` examples per kind do not fill a batch and wait for a later epoch (the
    shuffle differs each epoch, so different ones).
    """
    groups: dict[bool, list[int]] = {}
    for i, k in enumerate(kinds):
        groups.setdefault(k, []).append(i)
    batches: list[list[int]] = []
    for k, members in sorted(groups.items()):
        sub_lengths = [lengths[i] for i in members] if lengths is not None else None
        sub_seed = seed if len(groups) == 1 else seed * 7 + int(k)
        order = [members[i] for i in epoch_order(len(members), epoch, sub_seed, sub_lengths, batch)]
        batches.extend(order[j : j + batch] for j in range(0, len(order) - batch + 1, batch))
    if len(groups) > 1:
        random.Random(seed * 1000 + epoch).shuffle(batches)
    return batches


def steps_per_epoch_of(kinds: list[bool], batch: int) -> int:
    """Full batches per epoch when each batch holds one kind (see :func:`epoch_batches`)."""
    return sum(n // batch for n in (kinds.count(True), kinds.count(False)))


def examples_taken(kinds: list[bool], seed: int, lengths: list[int] | None, batch: int, steps: int) -> set[int]:
    """Indices of the examples that the first ``steps`` steps of a run take (see :func:`epoch_batches`)."""
    per_epoch = steps_per_epoch_of(kinds, batch)
    taken: set[int] = set()
    for epoch in range(-(-steps // per_epoch)):
        for batch_rows in epoch_batches(kinds, epoch, seed, lengths, batch)[: steps - epoch * per_epoch]:
            taken.update(batch_rows)
    return taken
