"""Synthetic sentence pairs for a domain that has no labelled data: a local instruct LM writes sentences on
the topics asked for, then a paraphrase of each, and each (sentence, paraphrase) becomes a training pair.

Its use is beside a teacher (``train.teacher``, ``train.teacher_scope=batch``): the pairs carry the
domain's vocabulary and sentence shapes, and the teacher's similarities between every text of a batch tell
the student how the domain's sentences relate, which no NLI triplet shows. The labels themselves are
weak (a small generator's paraphrase is often a near copy), so pairs alone teach little.

Every generated text passes the same checks, and each rejection is counted by its reason in the
:class:`SynthesisReport`; nothing is dropped silently. The generation is seeded: the same model, topics
and seed give the same file on the same machine.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .examples import Example

SYNTHESIS_VERSION = 1
"""Bumped whenever the prompts, checks or sampling change, so that cached pairs of an older version are not
reused (``data.synthetic`` in a recipe)."""

STYLES = (
    "Write one sentence from the abstract of a research paper in {topic}.",
    "Write one sentence reporting an experimental finding in {topic}.",
    "Write one sentence from the introduction of a {topic} paper, citing earlier work.",
    "Write one sentence describing a method used in {topic} research.",
    "Write one sentence from the results section of a {topic} study.",
)
"""Instructions for the first text of a pair; ``{topic}`` is filled with a drawn topic."""

PARAPHRASE = "Rewrite this sentence in different words, keeping its meaning:\n{sentence}"
"""Instruction for the second text of a pair."""

SCIENCE_TOPICS = (
    "molecular biology", "cell biology", "cancer biology", "tumour genetics", "immunology", "genetics",
    "genomics", "microbiology", "virology", "pharmacology", "drug discovery", "neuroscience", "cardiology",
    "oncology", "clinical trials", "epidemiology", "biochemistry", "protein structure", "stem cells",
    "gene regulation", "RNA biology", "cell signalling", "plant biology", "ecology", "evolutionary biology",
    "organic chemistry", "materials science", "condensed matter physics", "astronomy", "geology",
    "climate science", "computer science", "machine learning", "statistics", "economics", "psychology",
    "public health", "nutrition", "agriculture", "electrical engineering",
)
"""A broad spread of scientific fields (``--topics science``): the kind of text NLI's captions lack."""

REPLY_OPENING = re.compile(r"(?i)(sure|here|certainly|of course|i |i'm|as an ai)\b")
SENTENCE_END = re.compile(r"(.+?[.!?])(?:\s|$)")


class SynthesisError(ValueError):
    """Generation cannot deliver what was asked (the message says how far it got and why)."""


def parse_topics(spec: str) -> list[str]:
    """Topics from ``science`` (:data:`SCIENCE_TOPICS`), a ``;``-separated list, or ``@FILE`` (one per line,
    ``#`` comments).

    Raises:
        SynthesisError: no topic is left, or the file is missing.
    """
    if spec.strip().lower() == "science":
        return list(SCIENCE_TOPICS)
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        if not path.is_file():
            raise SynthesisError(f"topics file {path} not found")
        items = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
        source = str(path)
    else:
        items, source = [t.strip() for t in spec.split(";")], "--topics"
    topics = [t for t in items if t]
    if not topics:
        raise SynthesisError(f"{source}: no topics (expected 'science', 'topic; topic; ...' or @FILE)")
    return topics


def first_sentence(text: str) -> str:
    """The first sentence of a reply's first line, quotes stripped; '' when the line has no sentence end."""
    line = text.strip().split("\n", 1)[0].strip().strip('"').strip()
    match = SENTENCE_END.match(line)
    return match.group(1).strip() if match else ""


def sentence_problem(sentence: str, min_words: int, max_words: int) -> str | None:
    """Why a generated sentence is rejected (a short reason), or None when it is kept."""
    if not sentence:
        return "no complete sentence"
    words = len(sentence.split())
    if words < min_words:
        return f"under {min_words} words"
    if words > max_words:
        return f"over {max_words} words"
    if REPLY_OPENING.match(sentence):
        return "a reply, not a sentence"
    return None


def _normal(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


@dataclass
class SynthesisReport:
    """What one synthesis made and rejected.

    Attributes:
        asked: pairs asked for.
        topics: the topics drawn from.
        prompts: sentence instructions sent (all rounds).
        sentence_rejects: rejected first texts by reason (including duplicates).
        paraphrase_rejects: rejected paraphrases by reason.
        pairs: pairs written.
        seconds: generation time.
    """

    asked: int
    topics: list[str]
    prompts: int = 0
    sentence_rejects: Counter = field(default_factory=Counter)
    paraphrase_rejects: Counter = field(default_factory=Counter)
    pairs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "topics": self.topics, "prompts": self.prompts,
                "sentence_rejects": dict(self.sentence_rejects),
                "paraphrase_rejects": dict(self.paraphrase_rejects), "pairs": self.pairs,
                "seconds": round(self.seconds, 1)}

    def summary(self) -> str:
        def reasons(c: Counter) -> str:
            return ", ".join(f"{n} {r}" for r, n in c.most_common()) or "none"

        kept = self.prompts - sum(self.sentence_rejects.values())
        return "\n".join([
            f"{len(self.topics)} topics, {self.prompts} sentence prompts: {kept} sentences kept",
            f"  sentences rejected: {reasons(self.sentence_rejects)}",
            f"  paraphrases rejected: {reasons(self.paraphrase_rejects)}",
            f"  pairs: {self.pairs} of {self.asked} asked, in {self.seconds:.0f} s",
        ])


Complete = Callable[[Sequence[str], float], list[str]]
"""``complete(instructions, temperature) -> replies``: one reply per instruction (see :class:`ChatGenerator`)."""


class ChatGenerator:
    """An instruct causal LM that answers a batch of one-turn chats by sampling.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer; it must have a chat template.
        max_new_tokens: reply length cap.
        top_p: nucleus sampling.
    """

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64, top_p: float = 0.95):
        if not getattr(tokenizer, "chat_template", None):
            raise SynthesisError("the generator's tokenizer has no chat template: synthesis needs an instruct "
                                 "(chat) model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues every row from its last real token
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.top_p = max_new_tokens, top_p

    def __call__(self, instructions: Sequence[str], temperature: float) -> list[str]:
        import torch

        tok = self.tokenizer
        prompts = [tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True) for text in instructions]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=True,
                                      temperature=temperature, top_p=self.top_p, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, generated)
        return tok.batch_decode(new, skip_special_tokens=True)


def synthesize_pairs(
    complete: Complete,
    topics: Sequence[str],
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    min_words: int = 6,
    max_words: int = 50,
    temperature: float = 0.9,
    paraphrase_temperature: float = 0.7,
    max_prompts: int | None = None,
    show_progress: bool = True,
) -> tuple[list[tuple[str, str]], SynthesisReport]:
    """Generate ``n`` (sentence, paraphrase) pairs.

    Sentences are drawn until ``n`` pass :func:`sentence_problem` and are new (case-insensitive); then each
    is paraphrased once, and a paraphrase is kept when it passes the same checks, differs from its sentence
    beyond case and punctuation, and has 0.5-2x its length. So fewer than ``n`` pairs may come back; the
    report says why.

    Args:
        complete: the generator (:class:`ChatGenerator`, or any callable of its signature).
        topics: drawn uniformly, with a style of :data:`STYLES`, for each sentence prompt.
        max_prompts: give up after this many sentence prompts (default ``4 n``).

    Raises:
        SynthesisError: ``n`` sentences could not be had within ``max_prompts`` prompts.
    """
    from tqdm.auto import tqdm

    if n <= 0:
        raise SynthesisError(f"the number of pairs must be positive, got {n}")
    if not topics:
        raise SynthesisError("no topics to write about")
    start = time.perf_counter()
    rng = random.Random(seed)
    report = SynthesisReport(n, list(topics))
    max_prompts = max_prompts or 4 * n
    sentences: list[str] = []
    seen: set[str] = set()
    with tqdm(total=n, desc="sentences", unit="text", disable=not show_progress) as bar:
        while len(sentences) < n:
            if report.prompts >= max_prompts:
                raise SynthesisError(
                    f"only {len(sentences)} of {n} sentences passed after {report.prompts} prompts "
                    f"(rejected: {dict(report.sentence_rejects)}); try other topics, a larger generator, or "
                    "fewer pairs")
            size = min(batch_size, max_prompts - report.prompts)
            prompts = [rng.choice(STYLES).format(topic=rng.choice(topics)) for _ in range(size)]
            report.prompts += size
            for reply in complete(prompts, temperature):
                sentence = first_sentence(reply)
                problem = sentence_problem(sentence, min_words, max_words)
                if problem is None and sentence.lower() in seen:
                    problem = "duplicate"
                if problem is not None:
                    report.sentence_rejects[problem] += 1
                elif len(sentences) < n:
                    seen.add(sentence.lower())
                    sentences.append(sentence)
                    bar.update(1)
                else:
                    report.sentence_rejects["surplus (enough kept already)"] += 1
    pairs: list[tuple[str, str]] = []
    with tqdm(total=n, desc="paraphrases", unit="text", disable=not show_progress) as bar:
        for i in range(0, n, batch_size):
            chunk = sentences[i : i + batch_size]
            replies = complete([PARAPHRASE.format(sentence=s) for s in chunk], paraphrase_temperature)
            for sentence, reply in zip(chunk, replies):
                para = first_sentence(reply)
                problem = sentence_problem(para, min_words, max_words)
                if problem is None and _normal(para) == _normal(sentence):
                    problem = "a copy of its sentence"
                if problem is None and not 0.5 <= len(para) / len(sentence) <= 2:
                    problem = "under half or over twice its sentence's length"
                if problem is None:
                    pairs.append((sentence, para))
                else:
                    report.paraphrase_rejects[problem] += 1
            bar.update(len(chunk))
    report.pairs, report.seconds = len(pairs), time.perf_counter() - start
    return pairs, report


def write_pairs(pairs: Sequence[tuple[str, str]], out: str | Path, report: SynthesisReport,
                report_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the pairs (sent0, sent1; any format :func:`~embedtune.data.triplets.write_examples` takes) and
    the report as JSON (default ``OUT.report.json``), each atomically. Returns both paths."""
    from ..io import write_text_atomic
    from .triplets import write_examples

    out = Path(out)
    write_examples((Example(a, p, None, "synthetic", i + 2) for i, (a, p) in enumerate(pairs)), out,
                   with_negatives=False)
    record = Path(report_path) if report_path else out.with_name(out.name + ".report.json")
    write_text_atomic(record, json.dumps(report.to_dict(), indent=2) + "\n")
    return out, record
