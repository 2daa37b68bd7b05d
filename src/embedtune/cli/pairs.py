"""``embedtune data mine-negatives`` (pairs in, triplets out), ``data split`` (hold a slice of them apart) and
``data synthesize`` (pairs written by an instruct LM): parsers and calls only; the work is in data.mining,
data.split and data.synthetic."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_MODEL
from .common import CliError, _build_embedder, _model_args


def _add_mine_negatives(dsub) -> None:
    p = dsub.add_parser("mine-negatives", help="add a mined hard negative to each (anchor, positive) pair: "
                        "a triplet file that `embedtune train` reads, plus a JSON report")
    p.add_argument("files", nargs="+", metavar="PAIRS", help=".csv/.tsv/.jsonl[.gz] pair files ({data} = data "
                   "folder); their rows are mined together")
    p.add_argument("--out", required=True, help="triplet file to write (.csv/.tsv/.jsonl, optionally .gz)")
    p.add_argument("--report", default=None, help="JSON report (default: OUT.report.json)")
    p.add_argument("--range", default="10:50", help="ranks MIN:MAX (0-based, MAX exclusive) of the eligible "
                   "candidates to take the negative from (default 10:50)")
    p.add_argument("--margin", type=float, default=0.05, help="reject candidates scoring above the positive's "
                   "score minus this (likely positives; default 0.05)")
    p.add_argument("--max-dropped", type=float, default=0.5, help="fail, writing nothing, when more than this "
                   "fraction of the rows gets no negative (the model cannot separate them; default 0.5)")
    p.add_argument("--sampling", choices=["top", "random"], default="top",
                   help="top: the best candidate left in the range; random: a seeded random one")
    p.add_argument("--seed", type=int, default=7, help="seed for --sampling random")
    p.add_argument("--batch-size", type=int, default=64, help="encode batch size")
    p.add_argument("--search", choices=["auto", "numpy", "faiss"], default="auto",
                   help="exact search backend (auto: faiss when installed)")
    p.add_argument("--columns", default=None, help="anchor=COL,positive=COL or COL,COL (default: by name)")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                   help="error: stop at the first bad row (exit 2); skip: drop bad rows and count them")
    p.add_argument("--data-dir", default=None, help="data folder for {data} (default: $EMBEDTUNE_DATA or "
                   "../shared/data)")
    _model_args(p)


def _run_mine_negatives(args: argparse.Namespace) -> int:
    from ..data.mining import mine_file, parse_range
    from ..data.triplets import expand_data_path, parse_columns
    from ..search import resolve_backend

    try:
        ranks = parse_range(args.range)
        resolve_backend(args.search)
    except (ValueError, ImportError) as exc:
        raise CliError(str(exc)) from None
    if not args.run and not args.adapter and (Path(args.model) / "embedtune.json").is_file():
        args.run, args.model = args.model, DEFAULT_MODEL  # --model RUN_FOLDER: load it as a run
    files = [expand_data_path(f, args.data_dir) for f in args.files]
    out, record, report = mine_file(
        files, args.out, lambda: _build_embedder(args), report_path=args.report, columns=parse_columns(args.columns),
        on_bad_row=args.on_bad_row, max_dropped=args.max_dropped, ranks=ranks, margin=args.margin,
        sampling=args.sampling, seed=args.seed,
        batch_size=args.batch_size, backend=args.search, progress=True)
    print(report.summary())
    print(f"wrote {out} ({report.rows_written} triplets) and {record}")
    return 0


def _add_split(dsub) -> None:
    p = dsub.add_parser("split", help="hold distinct anchors (with all their rows) apart: a training file and a "
                        "held-out file, e.g. for `eval --retrieval`")
    p.add_argument("files", nargs="+", metavar="FILE", help=".csv/.tsv/.jsonl[.gz] files ({data} = data folder); "
                   "their rows are joined")
    p.add_argument("--held-out", type=int, required=True, help="how many distinct anchors to hold out")
    p.add_argument("--out", required=True, help="training file to write (.csv/.tsv/.jsonl, optionally .gz)")
    p.add_argument("--held-out-file", required=True, help="held-out file to write")
    p.add_argument("--seed", type=int, default=7, help="seed of the draw")
    p.add_argument("--columns", default=None, help="anchor=COL,positive=COL[,negative=COL] (default: by name)")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                   help="error: stop at the first bad row (exit 2); skip: drop bad rows and count them")
    p.add_argument("--data-dir", default=None, help="data folder for {data}")


def _run_split(args: argparse.Namespace) -> int:
    from ..data.split import split_files
    from ..data.triplets import expand_data_path, parse_columns

    files = [expand_data_path(f, args.data_dir) for f in args.files]
    report = split_files(files, args.out, args.held_out_file, args.held_out, seed=args.seed,
                         columns=parse_columns(args.columns), on_bad_row=args.on_bad_row, progress=True)
    print(report.summary())
    print(f"wrote {args.out} and {args.held_out_file}")
    return 0


def _add_synthesize(dsub) -> None:
    p = dsub.add_parser("synthesize", help="sentence pairs written by a local instruct LM on the topics given (a "
                        "sentence and its paraphrase): domain text for a teacher to score, plus a JSON report")
    p.add_argument("--topics", required=True, help="'science' (40 scientific fields), 'topic; topic; ...', or "
                   "@FILE with one topic per line")
    p.add_argument("--pairs", type=int, required=True, help="how many pairs to aim for (paraphrases that fail "
                   "the checks are counted in the report, not replaced)")
    p.add_argument("--out", required=True, help="pair file to write (.csv/.tsv/.jsonl, optionally .gz)")
    p.add_argument("--report", default=None, help="JSON report (default: OUT.report.json)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="instruct causal LM with a chat template: hub id, folder, "
                   ".gguf, or 'default' (packaged SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16) | float32 | bfloat16 | float16")
    p.add_argument("--device", default=None, help="cpu|cuda|cuda:N (default: cuda when available)")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub")
    p.add_argument("--batch-size", type=int, default=64, help="prompts generated together (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the topic draw and the sampling")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of the sentences")
    p.add_argument("--min-words", type=int, default=6, help="shortest text kept (default 6 words)")
    p.add_argument("--max-words", type=int, default=50, help="longest text kept (default 50 words)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap (default 64 tokens)")


def _run_synthesize(args: argparse.Namespace) -> int:
    import torch

    from ..data.formats import SUFFIXES
    from ..data.synthetic import parse_topics, synthesize_pairs, write_pairs
    from ..training.synthetic_cache import DTYPES, load_generator

    out = Path(args.out)
    if not any(out.name.lower().removesuffix(".gz").endswith(s) for s in SUFFIXES):
        raise CliError(f"--out {out}: expected a .csv, .tsv or .jsonl name (optionally .gz)")
    topics = parse_topics(args.topics)
    if args.dtype not in DTYPES:
        raise CliError(f"--dtype {args.dtype!r}: expected one of {', '.join(DTYPES)}")
    torch.manual_seed(args.seed)
    generator = load_generator(args.model, dtype=args.dtype, device=args.device,
                               trust_remote_code=args.trust_remote_code, max_new_tokens=args.max_new_tokens)
    pairs, report = synthesize_pairs(generator, topics, args.pairs, seed=args.seed, batch_size=args.batch_size,
                                     min_words=args.min_words, max_words=args.max_words,
                                     temperature=args.temperature)
    path, record = write_pairs(pairs, out, report, args.report)
    print(report.summary())
    print(f"wrote {path} ({report.pairs} pairs) and {record}")
    return 0
