"""Packed against padded passes for the server's batches, without HTTP.

The server embeds whatever arrived together: ``--group`` random STSBenchmark test sentences at a time
(default 16, a typical server batch under concurrent load). This replays the same groups three ways in
one process, alternating ``--repeats`` times (a machine's speed drifts):

* padded: ``MicroBatcher(packing=False).embed_batch`` (passes cut by ``least_cost_chunks``);
* packed: ``MicroBatcher(packing=True).embed_batch`` (packed or padded passes, whichever ``plan_passes``
  estimates cheaper for each group, as the server does);
* ``Embedder.encode_ids`` over all texts sorted by length (batch ``--batch-size``), the ceiling.

Prints texts/s for each and the ratios packed/padded and encode/packed.

    .venv/bin/python benchmarks/pack_vs_pad.py                 # 960 texts, groups of 16, 2 repeats
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import STS, load_texts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=960)
    ap.add_argument("--group", type=int, default=16, help="texts per server batch")
    ap.add_argument("--batch-size", type=int, default=32, help="max rows per pass, and encode's batch size")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    import torch

    from embedtune.batching import MicroBatcher
    from embedtune.models.embedder import Embedder

    emb = Embedder.from_pretrained(args.model, device="cpu")
    rows = emb.text_tokenizer.ids(load_texts(STS, args.texts))
    groups = [rows[i : i + args.group] for i in range(0, len(rows), args.group)]
    padded = MicroBatcher(emb, max_batch_size=args.batch_size, packing=False)
    packed = MicroBatcher(emb, max_batch_size=args.batch_size, packing=True)
    ways = {
        "padded": lambda: [padded.embed_batch(g) for g in groups],
        "packed": lambda: [packed.embed_batch(g) for g in groups],
        "encode": lambda: emb.encode_ids(rows, batch_size=args.batch_size),
    }
    emb.encode_ids(rows[: args.batch_size])  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for rep in range(args.repeats):
        for name, run in ways.items():
            t0 = time.perf_counter()
            run()
            rates[name].append(len(rows) / (time.perf_counter() - t0))
            print(f"repeat {rep + 1} {name}: {rates[name][-1]:.1f} texts/s", flush=True)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(f"\n{len(rows)} texts in groups of {args.group}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; mean texts/s: " + ", ".join(f"{k} {v:.1f}" for k, v in mean.items()))
    print(f"packed / padded: {mean['packed'] / mean['padded']:.2f}x; encode / packed: "
          f"{mean['encode'] / mean['packed']:.2f}x; encode / padded: {mean['encode'] / mean['padded']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
