"""Commands that use a model: encode, eval, compare, export, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL
from .common import AUTOCAST_CHOICES, AUTOCAST_HELP, CliError, _build_embedder, _model_args


# ---- encode -------------------------------------------------------------------------------------------
def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="embed texts from a .txt (one per line), .jsonl ('text' field) or stdin")
    _model_args(p)
    p.add_argument("--input", required=True, help="texts.txt | texts.jsonl | - (stdin, one text per line)")
    p.add_argument("--output", required=True, help="output .npy file (float32, N x D)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-normalize", action="store_true", help="return raw (not L2-normalized) vectors")


def read_texts(path: str) -> list[str]:
    """Texts from a .txt or stdin (one per line; an empty line is an error) or a .jsonl ('text' field)."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
        name = "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise CliError(f"input file {p} does not exist")
        lines = []
        for n, raw in enumerate(p.read_bytes().splitlines(), 1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise CliError(f"{p}:{n}: not valid UTF-8 (byte {exc.start}); expected UTF-8 text") from None
        name = str(p)
    texts = []
    is_jsonl = name.endswith(".jsonl")
    for n, line in enumerate(lines, 1):
        if is_jsonl:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CliError(f"{name}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "text" not in obj:
                raise CliError(f"{name}:{n}: expected an object with a 'text' field")
            if not isinstance(obj["text"], str) or not obj["text"].strip():
                raise CliError(f"{name}:{n}: field 'text' must be a non-empty string")
            texts.append(obj["text"])
        else:
            if not line.strip():
                raise CliError(f"{name}:{n}: empty line; expected one non-empty text per line")
            texts.append(line)
    if not texts:
        raise CliError(f"{name}: no texts found")
    return texts


def _run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import atomic_path

    texts = read_texts(args.input)
    embedder = _build_embedder(args)
    emb = embedder.encode(texts, batch_size=args.batch_size, normalize=not args.no_normalize, show_progress=True)
    out = Path(args.output)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, emb)
    print(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]} float32", file=sys.stderr)
    return 0


# ---- eval ---------------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="Spearman correlations on the nine STS benchmarks (the paper's table)")
    _model_args(p)
    p.add_argument("--tasks", default=None,
                   help="all (the paper's nine; the default unless only --retrieval is given) or a comma list of "
                        "benchmarks and STS-format files (sentence1<TAB>sentence2<TAB>score .tsv), e.g. "
                        "STS12,STSBenchmark,my_dev.tsv")
    p.add_argument("--retrieval", default=None, metavar="PAIRS",
                   help="also (or only) evaluate retrieval: a query,positive[,negative] file; each query is searched "
                        "among all positives, negatives and --corpus; recall@1/@10, MRR@10, nDCG@10 in retrieval.json")
    p.add_argument("--corpus", default=None, help="more passages for --retrieval (.txt, one per line; .jsonl 'text')")
    p.add_argument("--search", choices=["auto", "numpy", "faiss"], default="auto",
                   help="exact search backend for --retrieval (auto: faiss when installed)")
    p.add_argument("--variant", default="mteb_like", choices=["mteb_like", "raw"],
                   help="STS12-16 text: mteb_like (tokenized, lowercased, as MTEB and the paper) or raw")
    p.add_argument("--batch-size", type=int, default=64, help="encode batch size")
    p.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs per benchmark (quick checks)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (logs: each benchmark's score is still printed as it finishes)")
    p.add_argument("--out", default=None,
                   help="output folder for results.json/results.md (default: <run>/eval, or runs/eval/<model>)")
    p.add_argument("--label", default=None, help="column name in tables (default: run, adapter or model name)")


def _eval_label(args: argparse.Namespace) -> str:
    if args.label:
        return args.label
    for value in (args.run, args.adapter):
        if value:
            return Path(value).resolve().name
    return Path(args.model).name or args.model.replace("/", "--")


def _run_eval(args: argparse.Namespace) -> int:
    import time

    from ..data.sts import is_sts_file_spec, resolve_task_specs
    from ..evaluation.report import embedder_meta

    if args.corpus and not args.retrieval:
        raise CliError("--corpus is the corpus of --retrieval; give --retrieval PAIRS too")
    # Everything is validated before the model loads: names, STS files, the retrieval files.
    tasks = resolve_task_specs(args.tasks or "all") if args.tasks or not args.retrieval else []
    retrieval = None
    if args.retrieval:
        from ..evaluation.retrieval import load_retrieval_data
        from ..search import resolve_backend

        try:
            resolve_backend(args.search)
        except ImportError as exc:
            raise CliError(str(exc)) from None
        retrieval = load_retrieval_data(args.retrieval, args.corpus)
    start = time.perf_counter()
    embedder = _build_embedder(args)
    load_seconds = time.perf_counter() - start
    label = _eval_label(args)
    task_files = {Path(t).stem: str(Path(t).resolve()) for t in tasks if is_sts_file_spec(t)}
    meta = embedder_meta(embedder, adapter=args.adapter, run=args.run, variant=args.variant, label=label,
                         batch_size=args.batch_size, max_pairs=args.max_pairs, load_seconds=round(load_seconds, 3),
                         **({"task_files": task_files} if task_files else {}))
    if args.out:
        out = Path(args.out)
    elif args.run or args.adapter:
        out = Path(args.run or args.adapter) / "eval"
    else:
        out = Path("runs") / "eval" / label
    if tasks:
        _eval_sts(args, embedder, tasks, meta, out, start)
    if retrieval is not None:
        _eval_retrieval(args, embedder, retrieval, meta, out)
    return 0


def _eval_sts(args: argparse.Namespace, embedder, tasks: list[str], meta: dict, out: Path, start: float) -> None:
    import time

    from ..evaluation.report import markdown_table, results_payload, write_results
    from ..evaluation.sts import evaluate_sts
    from ..io import write_text_atomic

    done: list = []

    def on_result(s) -> None:
        # A long CPU run keeps what it finished: each score is logged and the partial table written.
        done.append(s)
        print(f"{s.task}: cosine Spearman {s.cosine_spearman:.2f} ({s.pairs} pairs, {s.unique_sentences} sentences, "
              f"{s.seconds:.0f} s)", file=sys.stderr, flush=True)
        partial = results_payload(done, {**meta, "partial": True}, wall_seconds=time.perf_counter() - start)
        write_text_atomic(out / "results.partial.json", json.dumps(partial, indent=2) + "\n")

    scores = evaluate_sts(embedder, tasks, data_dir=args.data_dir, variant=args.variant, batch_size=args.batch_size,
                          show_progress=not args.no_progress, max_pairs=args.max_pairs, on_result=on_result)
    payload = results_payload(scores, meta, wall_seconds=time.perf_counter() - start)
    path = write_results(out, payload)
    (out / "results.partial.json").unlink(missing_ok=True)
    print(markdown_table({meta["label"]: payload}))
    print(f"wall time {payload['wall_seconds']:.1f} s (model load {meta['load_seconds']:.1f} s), "
          f"{payload['sentences']} sentences at {payload['sentences_per_second']} sentences/s; wrote {path}",
          file=sys.stderr)


def _eval_retrieval(args: argparse.Namespace, embedder, data, meta: dict, out: Path) -> None:
    from ..evaluation.retrieval import evaluate_retrieval, retrieval_payload, retrieval_table, write_retrieval_results

    scores = evaluate_retrieval(embedder, data, batch_size=args.batch_size, backend=args.search,
                                show_progress=not args.no_progress)
    payload = retrieval_payload(scores, {k: v for k, v in meta.items() if k not in ("variant", "max_pairs")})
    path = write_retrieval_results(out, payload, meta["label"])
    print(retrieval_table({meta["label"]: payload}))
    print(f"retrieval: {scores.queries} queries against {scores.corpus} passages ({scores.search} search) in "
          f"{scores.seconds['total']:.1f} s; wrote {path}", file=sys.stderr)


# ---- compare ------------------------------------------------------------------------------------------
def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="per-benchmark differences of eval runs: markdown table and bar chart")
    p.add_argument("runs", nargs="+", metavar="RUN", help="`embedtune eval` output folders or results.json files")
    p.add_argument("--labels", default=None, help="comma-separated column names, one per run (default: folder names)")
    p.add_argument("--metric", default="cosine_spearman", help="correlation to compare (default cosine_spearman)")
    p.add_argument("--out", default="runs/compare", help="folder for comparison.md and comparison.png")


def _run_compare(args: argparse.Namespace) -> int:
    from ..evaluation.report import compare, load_results

    if len(args.runs) < 2:
        raise CliError("compare needs at least two runs (RUN_A RUN_B ...)")
    payloads = [load_results(r) for r in args.runs]
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.runs):
            raise CliError(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    else:
        labels = []
        for run, payload in zip(args.runs, payloads):
            path = Path(run).resolve()
            labels.append(payload["meta"].get("label") or (path.parent.name if path.is_file() else path.name))
    if len(set(labels)) != len(labels):  # same folder names: make the columns distinguishable
        labels = [f"{i + 1}:{label}" for i, label in enumerate(labels)]
    try:
        md, png = compare(dict(zip(labels, payloads)), args.out, metric=args.metric)
    except ImportError as exc:
        raise CliError(str(exc)) from None
    print(md)
    print(f"wrote {Path(args.out) / 'comparison.md'} and {png}", file=sys.stderr)
    return 0


# ---- export -------------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="merge a run's LoRA into the weights; or write a sentence-transformers folder")
    p.add_argument("run", help="a training run folder (holds embedtune.json)")
    p.add_argument("--out", required=True, help="folder to write (written atomically)")
    p.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    p.add_argument("--format", choices=["embedtune", "sentence-transformers"], default="embedtune",
                   help="embedtune: Embedder.load reads it; sentence-transformers: SentenceTransformer(DIR) reads it")
    p.add_argument("--dtype", default="float32", help="float32|bfloat16|float16: precision to merge and save in")
    p.add_argument("--base-model", default=None, help="override the run's recorded base model (e.g. a local copy)")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (MiniCPM)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _run_export(args: argparse.Namespace) -> int:
    from ..export import export_merged, export_sentence_transformers

    if args.format == "embedtune" and not args.merge:
        raise CliError("nothing to do: the run folder already is the unmerged model; pass --merge "
                       "(or --format sentence-transformers, which always merges)")
    fn = export_merged if args.format == "embedtune" else export_sentence_transformers
    try:
        out = fn(args.run, args.out, dtype=args.dtype, base_model=args.base_model,
                 trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    except (FileExistsError, ImportError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {out} ({args.format})", file=sys.stderr)
    return 0


# ---- serve --------------------------------------------------------------------------------------------
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible embeddings server (POST /v1/embeddings)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help="run/export folder (holds embedtune.json), hub id, checkpoint folder, .gguf, or 'default'")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the id clients send as 'model' (default: from the folder)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set $EMBEDTUNE_API_KEY)")
    p.add_argument("--max-inputs", type=int, default=2048, help="inputs per request (413 above)")
    p.add_argument("--max-tokens-per-input", type=int, default=None,
                   help="tokens per input, prompt and EOS included (422 above; default: the model's max_length)")
    p.add_argument("--truncate", action="store_true", help="truncate over-long inputs instead of answering 422")
    p.add_argument("--max-batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0, help="wait to fill a batch when traffic is light")
    p.add_argument("--packing", default="auto", choices=("auto", "on", "off"),
                   help="allow packed passes (texts end to end, no padding), taken per batch when cheaper than "
                        "padded ones (auto: when the model gives the same vectors packed; on: require it; off: never)")
    _serve_limit_args(p)
    p.add_argument("--device", default=None, help="cpu|cuda|cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16")
    p.add_argument("--autocast", default=None, choices=AUTOCAST_CHOICES, help=AUTOCAST_HELP)
    p.add_argument("--log-level", default="info", help="uvicorn log level")


def _serve_limit_args(p) -> None:
    """One option per field of ServeLimits (the dataclass holds the defaults and the help)."""
    from dataclasses import fields

    from ..serving.guard import ServeLimits

    for f in fields(ServeLimits):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default:,})")


def _run_serve(args: argparse.Namespace) -> int:
    from ..serving import ServeLimits, create_app, load_model, resolve_api_key, serve

    api_key = resolve_api_key(args.api_key)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    try:
        limits = ServeLimits(**{f: getattr(args, f) for f in ServeLimits.__dataclass_fields__})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        embedder, name = load_model(args.model, device=args.device, dtype=args.dtype, autocast=args.autocast)
        app = create_app(embedder, model_name=args.model_name or name, api_key=api_key, max_inputs=args.max_inputs,
                         max_tokens_per_input=args.max_tokens_per_input, max_batch_size=args.max_batch_size,
                         batch_timeout_ms=args.batch_timeout_ms, truncate=args.truncate,
                         packing={"auto": None, "on": True, "off": False}[args.packing], limits=limits)
        print(f"serving {args.model_name or name} on http://{args.host}:{args.port}/v1/embeddings", file=sys.stderr)
        serve(app, host=args.host, port=args.port, log_level=args.log_level)
    except ImportError as exc:
        raise CliError(str(exc)) from None
    return 0
