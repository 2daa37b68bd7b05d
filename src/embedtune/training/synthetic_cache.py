"""The synthetic pairs a recipe asks for (``data.synthetic``): generated once by the instruct LM it names,
cached under ``$EMBEDTUNE_CACHE/synthetic``, and read like any other training file afterwards.

The cache file's name carries a hash of everything that decides its contents (generator, topics, count,
seed, batch size and :data:`~embedtune.data.synthetic.SYNTHESIS_VERSION`), so changing any of them makes a new
file rather than reusing a stale one. Each file has its report beside it (``NAME.report.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from ..config import SyntheticConfig
from ..data.synthetic import SYNTHESIS_VERSION, ChatGenerator, parse_topics, synthesize_pairs, write_pairs
from ..models.loading import cache_dir, checkpoint_location, default_device, load_tokenizer, resolve_source
from . import distributed as dist

log = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float32", "float16")
"""Generator dtypes; ``auto`` is bfloat16 (sampling needs no float32)."""


def load_generator(model: str, *, dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False,
                   max_new_tokens: int = 64) -> ChatGenerator:
    """The causal LM ``model`` names (``default``: the packaged SmolLM2-135M-Instruct), with its LM head, as a
    :class:`~embedtune.data.synthetic.ChatGenerator`.

    Raises:
        ValueError: an unknown ``dtype`` (before any weights load).
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtypes = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32,
              "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    source = resolve_source(model)
    location, kwargs = checkpoint_location(source)
    lm = AutoModelForCausalLM.from_pretrained(location, dtype=dtypes[dtype], trust_remote_code=trust_remote_code,
                                              **kwargs)
    return ChatGenerator(lm.to(device or default_device()), load_tokenizer(source, trust_remote_code),
                         max_new_tokens=max_new_tokens)


def _generator_identity(name: str) -> str:
    """What names the generator's weights: the packaged default by its GGUF's size (as its conversion
    cache does), a folder or file by its absolute path, a hub model by its id."""
    source = resolve_source(name)
    if source.kind == "default":
        return f"default:{Path(source.path).stat().st_size}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def cache_path(sc: SyntheticConfig) -> Path:
    """Where the pairs of ``sc`` are (or will be) cached."""
    key = json.dumps({"version": SYNTHESIS_VERSION, "generator": _generator_identity(sc.generator),
                      "topics": parse_topics(sc.topics), "pairs": sc.pairs, "seed": sc.seed,
                      "batch_size": sc.batch_size}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", sc.topics.lower()).strip("-")[:32] or "topics"
    return cache_dir() / "synthetic" / f"{slug}-{sc.pairs}-seed{sc.seed}-{digest}.csv.gz"


def synthetic_file(sc: SyntheticConfig, *, device: str | None = None, show_progress: bool = True,
                   poll_s: float = 5.0) -> tuple[Path, dict[str, Any]]:
    """The cached pair file of ``sc``, generated first when it is missing (on the main process; the others
    wait for it to appear). Returns the path and a record for the run's data report: the file, whether
    this call generated it, the seconds that took, and the generation report.

    Raises:
        ValueError: ``sc.pairs`` is not positive, or its topics cannot be read.
        SynthesisError: too few sentences passed the checks (nothing is written).
    """
    if sc.pairs <= 0:
        raise ValueError(f"data.synthetic.pairs must be positive to generate pairs, got {sc.pairs}")
    path = cache_path(sc)
    record_path = path.with_name(path.name + ".report.json")
    generated, seconds = False, 0.0
    if not path.is_file():
        if dist.is_main():
            import torch

            log.info("writing %d synthetic pairs on %r with %s into %s (once; later runs reuse the file)",
                     sc.pairs, sc.topics, sc.generator, path)
            start = time.perf_counter()
            # The generation's own seeded RNG, not the run's: a run that generates the pairs must initialise
            # and train exactly as one that finds them cached.
            with torch.random.fork_rng():
                torch.manual_seed(sc.seed)
                generator = load_generator(sc.generator, device=device)
                pairs, report = synthesize_pairs(generator, parse_topics(sc.topics), sc.pairs, seed=sc.seed,
                                                 batch_size=sc.batch_size, show_progress=show_progress)
                del generator
            path.parent.mkdir(parents=True, exist_ok=True)
            write_pairs(pairs, path, report, record_path)
            log.info("%s", report.summary())
            generated, seconds = True, time.perf_counter() - start
        else:
            while not (path.is_file() and record_path.is_file()):  # torchrun stops every rank if rank 0 fails
                time.sleep(poll_s)
    report = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    return path, {"file": str(path), "generated_this_call": generated, "seconds": round(seconds, 1),
                  "config": {"pairs": sc.pairs, "topics": sc.topics, "generator": sc.generator, "seed": sc.seed,
                             "batch_size": sc.batch_size}, "report": report}
