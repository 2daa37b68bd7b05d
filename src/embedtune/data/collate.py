"""Tokenization with an appended EOS id, dynamic padding, and length-grouped batching.

This is the one tokenization path of embedtune: the Embedder, the trainer's collator, the data checker
and the server all call :class:`TextTokenizer`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def resolve_eos_id(tokenizer, model_config=None) -> int:
    """EOS token id from the tokenizer, else from the model config (first entry when it is a list)."""
    eos = tokenizer.eos_token_id
    if eos is None and model_config is not None:
        eos = getattr(model_config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
    if eos is None:
        raise ValueError("the tokenizer has no EOS token and the model config names none; cannot pool at EOS")
    return int(eos)


@dataclass
class TextTokenizer:
    """Turns texts into padded id tensors: ``prompt.format(text)`` + tokenizer ids + exactly one EOS id.

    The EOS *id* is appended after truncation (so truncation never cuts it off) whatever the tokenizer's
    ``add_eos_token`` flag says; an EOS the tokenizer appended itself is removed first, so it is never
    doubled.

    Attributes:
        tokenizer: a Hugging Face tokenizer.
        eos_id: id appended to every row.
        pad_id: id used for padding (the tokenizer's pad id, else EOS; the attention mask marks it).
        prompt: template with ``{}`` or None.
        max_length: cap on tokens per row, EOS included.
        padding_side: ``right`` or ``left``.
    """

    tokenizer: object
    eos_id: int
    pad_id: int
    prompt: str | None = None
    max_length: int = 128
    padding_side: str = "right"

    @classmethod
    def from_tokenizer(cls, tokenizer, model_config=None, **kwargs) -> TextTokenizer:
        eos = resolve_eos_id(tokenizer, model_config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(tokenizer=tokenizer, eos_id=eos, pad_id=int(pad), **kwargs)

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (text + EOS), got {self.max_length}")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def format(self, text: str) -> str:
        return self.prompt.format(text) if self.prompt else text

    def ids(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text, each ending in exactly one EOS id, at most ``max_length`` long.

        An over-long row loses tokens of the *text*: when the prompt has a suffix (P1's ``" means in one
        word: "``), the suffix's tokens are kept after the cut, so the EOS state still answers the
        prompt's question instead of following a sentence cut mid-way (see :meth:`_cut`)."""
        cap = (max_length or self.max_length) - 1
        formatted = [self.format(t) for t in texts]
        enc = self.tokenizer(formatted, add_special_tokens=True, truncation=False)["input_ids"]
        rows = []
        for row in enc:
            row = list(row)
            while row and row[-1] == self.eos_id:  # the tokenizer appended EOS itself
                row.pop()
            rows.append(row)
        long = [i for i, row in enumerate(rows) if len(row) > cap]
        if long:
            for i, kept in zip(long, self._cut([formatted[i] for i in long], [rows[i] for i in long], cap)):
                rows[i] = kept
        return [row + [self.eos_id] for row in rows]

    @property
    def prompt_affixes(self) -> tuple[str, str]:
        """(what the prompt puts before the text, what it puts after); ('', '') without a prompt or for a
        template that does not hold the text exactly once."""
        parts = self.prompt.format("\x00").split("\x00") if self.prompt else []
        return (parts[0], parts[1]) if len(parts) == 2 else ("", "")

    @property
    def suffix(self) -> str:
        """What the prompt puts after the text and truncation keeps ('' without a prompt, for prefix-only
        prompts, and for a whitespace-only suffix, which carries no instruction)."""
        after = self.prompt_affixes[1]
        return after if after.strip() else ""

    def _cut(self, texts: list[str], rows: list[list[int]], cap: int) -> list[list[int]]:
        """Over-long ``rows`` (tokens of the formatted ``texts``, no EOS) cut to ``cap`` tokens each.

        Kept: the head (leading special tokens, the prompt's prefix, then as much of the text as fits) and
        the tail (the tokens overlapping the prompt's suffix, plus any special tokens the tokenizer appends;
        a token spanning the text's end and the suffix, like ``."``, counts as suffix). Without a suffix,
        or when the cap leaves no room for a single text token between prefix and suffix, the row's end is
        cut, as the tokenizer's own truncation would."""
        if not self.suffix:
            return [row[:cap] for row in rows]
        out = []
        for row, (head, tail) in zip(rows, self._prompt_spans(texts, rows)):
            fits = 0 < tail and head + tail < cap
            out.append(row[: cap - tail] + row[len(row) - tail :] if fits else row[:cap])
        return out

    def _prompt_spans(self, texts: list[str], rows: list[list[int]]) -> list[tuple[int, int]]:
        """Per row: (tokens before the text, tokens from the suffix on), from the character offsets of a
        fast tokenizer; a slow one (no offsets) gets the prefix's and the suffix's lengths tokenized alone."""
        prefix = self.prompt_affixes[0]
        try:
            offsets = self.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        except NotImplementedError:  # transformers' Python (slow) tokenizers
            def count(piece: str, special: bool) -> int:
                return len(self.tokenizer(piece, add_special_tokens=special)["input_ids"])

            head = count("", True) + (count(prefix, False) if prefix else 0)  # may count an appended EOS: safe
            tail = count(self.suffix, False)
            return [(head, min(tail, len(row))) for row in rows]
        spans = []
        for text, row, offs in zip(texts, rows, offsets):
            offs = [tuple(o) for o in offs[: len(row)]]  # the row lost the tokenizer's own trailing EOS, if any
            start = len(text) - len(self.suffix)  # the suffix's first character
            tail = 0
            while tail < len(offs) and offs[-1 - tail] == (0, 0):  # appended special tokens
                tail += 1
            while tail < len(offs) and offs[-1 - tail][1] > start:
                tail += 1
            head = 0
            while head < len(offs) and offs[head][1] <= len(prefix):  # leading specials end at 0
                head += 1
            spans.append((head, tail if tail < len(offs) else 0))
        return spans

    def pad(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad to the longest row of this batch (dynamic padding) on ``padding_side``."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if self.padding_side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.pad(self.ids(texts, max_length))


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, so a left-padded row sees the same
    positions as its right-padded twin. mask (B, L) -> (B, L)."""
    return (torch.cumsum(mask, dim=1) - 1).clamp(min=0)


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 16) -> list[int]:
    """A seeded permutation whose consecutive ``batch_size`` slices hold rows of similar length.

    Rows are shuffled, cut into buckets of ``bucket_batches`` batches, sorted by length inside each bucket,
    split into batches, and the batches shuffled, so padding is small while order stays random. The one
    incomplete batch (when ``batch_size`` does not divide the row count) goes last: shuffled into the middle,
    it would shift every later ``batch_size`` slice off its batch and mix lengths again.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    cut = len(order) - len(order) % batch_size
    order, rest = order[:cut], order[cut:]  # the remainder forms the last, short batch
    span = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(bucket[j : j + batch_size] for j in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return [i for b in batches for i in b] + rest


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths`` from the longest to the shortest; equal lengths keep their order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def batches_by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches in descending length order (inference: least padding; the first batch is the
    largest, so an out-of-memory error shows at once)."""
    order = longest_first(lengths)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
