"""Command line: ``embedtune train|eval|compare|encode|data|export|serve|experiment|demo``.

This module only parses arguments and calls the library; the library never reads argv. Each command
has an ``_add_<name>`` (parser) and a ``_run_<name>`` (call) function.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import DEFAULT_MODEL


class CliError(Exception):
    """An error to show the user as one line, with exit status 2."""


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _model_args(p: argparse.ArgumentParser, with_adapter: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id, local folder, .gguf file, or 'default' (packaged SmolLM2-135M-Instruct)")
    if with_adapter:
        g.add_argument("--adapter", default=None, help="LoRA adapter folder (a training run's output)")
        g.add_argument("--run", default=None, help="a training run or export folder (holds embedtune.json)")
    g.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    g.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16 (auto: fp32 CPU, bf16 GPU)")
    g.add_argument("--device", default=None, help="cpu|cuda|cuda:N (default: cuda when available)")
    g.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (MiniCPM)")
    g.add_argument("--pooling", default=None, help="last|mean|weighted_mean (default: last, or the run's)")
    g.add_argument("--prompt", default=None, help="none|p1|p2|p3 or a template with {} (default: none, or the run's)")
    g.add_argument("--max-length", type=int, default=None, help="token cap per text, EOS included (default 128)")


def _build_embedder(args: argparse.Namespace):
    """Embedder from --model/--adapter/--run and the shared model options."""
    from .models.embedder import Embedder

    options = {}
    if args.pooling is not None:
        options["pooling"] = args.pooling
    if args.prompt is not None:
        options["prompt"] = None if args.prompt.lower() == "none" else args.prompt
    if args.max_length is not None:
        options["max_length"] = args.max_length
    run = getattr(args, "run", None)
    adapter = getattr(args, "adapter", None)
    if run and adapter:
        raise CliError("give either --run or --adapter, not both")
    if run:
        base = args.model if args.model != DEFAULT_MODEL else None
        return Embedder.load(run, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                             base_model=base, **options)
    if adapter and (Path(adapter) / "embedtune.json").is_file() and args.model == DEFAULT_MODEL:
        # A run folder passed as --adapter: reuse its recorded settings unless overridden.
        return Embedder.load(adapter, device=args.device, dtype=args.dtype,
                             trust_remote_code=args.trust_remote_code, **options)
    return Embedder.from_pretrained(
        args.model, adapter=adapter, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device,
        trust_remote_code=args.trust_remote_code, **options,
    )


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
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise CliError(f"{p}: not valid UTF-8 ({exc})") from None
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

    from .io import atomic_path

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
    p.add_argument("--tasks", default="all", help="all (the paper's nine) or a comma list, e.g. STS12,STSBenchmark")
    p.add_argument("--variant", default="mteb_like", choices=["mteb_like", "raw"],
                   help="STS12-16 text: mteb_like (tokenized, lowercased, as MTEB and the paper) or raw")
    p.add_argument("--batch-size", type=int, default=64, help="encode batch size")
    p.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs per benchmark (quick checks)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
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

    from .data.sts import resolve_task_names
    from .evaluation.report import embedder_meta, markdown_table, results_payload, write_results
    from .evaluation.sts import evaluate_sts
    from .io import write_text_atomic

    tasks = resolve_task_names(args.tasks)  # an unknown name fails before the model loads
    start = time.perf_counter()
    embedder = _build_embedder(args)
    load_seconds = time.perf_counter() - start
    label = _eval_label(args)
    meta = embedder_meta(embedder, adapter=args.adapter, run=args.run, variant=args.variant, label=label,
                         batch_size=args.batch_size, max_pairs=args.max_pairs, load_seconds=round(load_seconds, 3))
    if args.out:
        out = Path(args.out)
    elif args.run or args.adapter:
        out = Path(args.run or args.adapter) / "eval"
    else:
        out = Path("runs") / "eval" / label
    done: list = []

    def on_result(s) -> None:
        # A long CPU run keeps what it finished: each score is logged and the partial table written.
        done.append(s)
        print(f"{s.task}: cosine Spearman {s.cosine_spearman:.2f} ({s.pairs} pairs, {s.unique_sentences} sentences, "
              f"{s.seconds:.0f} s)", file=sys.stderr, flush=True)
        partial = results_payload(done, {**meta, "partial": True}, wall_seconds=time.perf_counter() - start)
        write_text_atomic(out / "results.partial.json", json.dumps(partial, indent=2) + "\n")

    scores = evaluate_sts(embedder, tasks, data_dir=args.data_dir, variant=args.variant, batch_size=args.batch_size,
                          show_progress=True, max_pairs=args.max_pairs, on_result=on_result)
    payload = results_payload(scores, meta, wall_seconds=time.perf_counter() - start)
    path = write_results(out, payload)
    (out / "results.partial.json").unlink(missing_ok=True)
    print(markdown_table({label: payload}))
    print(f"wall time {payload['wall_seconds']:.1f} s (model load {load_seconds:.1f} s), "
          f"{payload['sentences']} sentences at {payload['sentences_per_second']} sentences/s; wrote {path}",
          file=sys.stderr)
    return 0


# ---- compare ------------------------------------------------------------------------------------------
def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="per-benchmark differences of eval runs: markdown table and bar chart")
    p.add_argument("runs", nargs="+", metavar="RUN", help="`embedtune eval` output folders or results.json files")
    p.add_argument("--labels", default=None, help="comma-separated column names, one per run (default: folder names)")
    p.add_argument("--metric", default="cosine_spearman", help="correlation to compare (default cosine_spearman)")
    p.add_argument("--out", default="runs/compare", help="folder for comparison.md and comparison.png")


def _run_compare(args: argparse.Namespace) -> int:
    from .evaluation.report import compare, load_results

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


# ---- data ---------------------------------------------------------------------------------------------
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="validate training files (check) or drop STS test sentences (decontaminate)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--columns", default=None,
                        help="anchor=COL,positive=COL[,negative=COL] or COL,COL[,COL] (default: by name: "
                             "sent0,sent1,hard_neg | anchor,positive,negative | query,pos,neg)")
    common.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                        help="error: stop at the first bad row (exit 2); skip: drop bad rows and count them")
    common.add_argument("--data-dir", default=None, help="data folder for {data} and the STS benchmarks "
                        "(default: $EMBEDTUNE_DATA or ../shared/data)")
    common.add_argument("--tasks", default="all", help="benchmarks to compare against (default: the nine)")
    c = dsub.add_parser("check", parents=[common], help="validate; print rows, duplicates, token lengths, "
                        "overlap with the STS benchmarks")
    c.add_argument("files", nargs="+", metavar="FILE", help=".csv/.tsv/.jsonl[.gz] file or hub data set")
    c.add_argument("--model", default=DEFAULT_MODEL, help="tokenizer for token lengths: hub id, folder, .gguf, "
                   "'default', or 'none' to skip them")
    c.add_argument("--prompt", default=None, help="none|p1|p2|p3 or a template with {} (counted in the lengths)")
    c.add_argument("--max-length", type=int, default=128, help="token cap to report rows over (default 128)")
    c.add_argument("--trust-remote-code", action="store_true", help="run tokenizer code from the hub")
    c.add_argument("--no-overlap", action="store_true", help="skip the comparison with the STS benchmarks")
    c.add_argument("--json", default=None, help="also write the report as JSON to this file")
    d = dsub.add_parser("decontaminate", parents=[common], help="write a copy without rows that share a "
                        "sentence with the STS benchmarks")
    d.add_argument("file", metavar="FILE", help=".csv/.tsv/.jsonl[.gz] file or hub data set")
    d.add_argument("--out", required=True, help="clean output file (.csv/.tsv/.jsonl, optionally .gz)")
    d.add_argument("--report", default=None, help="JSON list of removed rows (default: OUT.removed.json)")


def _run_data(args: argparse.Namespace) -> int:
    from .data.decontaminate import sts_sentence_index
    from .data.triplets import expand_data_path, parse_columns
    from .io import write_text_atomic

    columns = parse_columns(args.columns)
    if args.data_command == "check":
        from .data.check import check_file

        text_tokenizer = None
        if args.model.lower() != "none":
            from .config import resolve_prompt
            from .data.collate import TextTokenizer
            from .models.loading import load_tokenizer, resolve_source

            tok = load_tokenizer(resolve_source(args.model), trust_remote_code=args.trust_remote_code)
            text_tokenizer = TextTokenizer.from_tokenizer(tok, prompt=resolve_prompt(args.prompt),
                                                          max_length=args.max_length)
        index = None if args.no_overlap else sts_sentence_index(args.data_dir, args.tasks)
        reports = []
        for name in args.files:
            rep = check_file(expand_data_path(name, args.data_dir), columns, args.on_bad_row,
                             text_tokenizer=text_tokenizer, tokenizer_name=args.model, index=index,
                             data_dir=args.data_dir, progress=True)
            print(rep.format())
            reports.append(rep.to_dict())
        if args.json:
            write_text_atomic(args.json, json.dumps(reports, indent=1, ensure_ascii=False) + "\n")
        return 0
    from .data.triplets import decontaminate, read_examples, write_examples

    source = expand_data_path(args.file, args.data_dir)
    out = Path(args.out)
    if Path(source).exists() and out.resolve() == Path(source).resolve():
        raise CliError("--out must differ from the input file (the input is never overwritten)")
    examples, load = read_examples(source, columns, args.on_bad_row, progress=True)
    kept, rep = decontaminate(examples, sts_sentence_index(args.data_dir, args.tasks))
    write_examples(kept, out, names=load.columns, with_negatives=load.has_negatives)
    record = Path(args.report) if args.report else out.with_name(out.name + ".removed.json")
    rep.save(record)
    print(load.summary())
    print(rep.summary())
    print(f"wrote {out}: {len(kept)} rows (removed rows listed in {record})")
    return 0


# ---- train --------------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="LoRA contrastive fine-tuning (launch with torchrun for several processes)")
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml); default: the paper's settings")
    p.add_argument("--resume", default=None, help="auto (newest checkpoint of the run folder) or a checkpoint path")
    p.add_argument("--output-dir", default=None, help="run folder (same as train.output_dir=...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and metrics.jsonl only)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=5e-4 lora.r=16")


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training.trainer import train

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, show_progress=not args.no_progress)
    from .training.distributed import is_main

    if not is_main():  # one summary line per run, not per process
        return 0
    best = f", best dev {result.best_score:.2f} at step {result.best_step}" if result.best_score is not None else ""
    print(f"trained {result.steps} steps on {result.examples} examples in {result.seconds / 60:.1f} min; "
          f"final loss {result.final_loss:.4f}{best}; run folder {result.output_dir}")
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
    from .export import export_merged, export_sentence_transformers

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
    p.add_argument("--device", default=None, help="cpu|cuda|cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16")
    p.add_argument("--log-level", default="info", help="uvicorn log level")


def _run_serve(args: argparse.Namespace) -> int:
    from .serving import create_app, load_model, resolve_api_key, serve

    api_key = resolve_api_key(args.api_key)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    try:
        embedder, name = load_model(args.model, device=args.device, dtype=args.dtype)
        app = create_app(embedder, model_name=args.model_name or name, api_key=api_key, max_inputs=args.max_inputs,
                         max_tokens_per_input=args.max_tokens_per_input, max_batch_size=args.max_batch_size,
                         batch_timeout_ms=args.batch_timeout_ms, truncate=args.truncate)
        print(f"serving {args.model_name or name} on http://{args.host}:{args.port}/v1/embeddings", file=sys.stderr)
        serve(app, host=args.host, port=args.port, log_level=args.log_level)
    except ImportError as exc:
        raise CliError(str(exc)) from None
    return 0


# ---- experiment ---------------------------------------------------------------------------------------
def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run (or resume) a grid of training + evaluation cells and report it")
    p.add_argument("spec", help="experiment file (configs/experiments/*.yaml)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
    p.add_argument("--only", default=None, help="comma-separated substrings: run only matching cells")
    p.add_argument("--max-cells", type=int, default=None, help="work on at most N unfinished cells in this call")
    p.add_argument("--list", action="store_true", help="list the cells and whether they are done, then exit")


def _run_experiment(args: argparse.Namespace) -> int:
    from .experiment import expand_cells, load_spec, run_experiment

    spec = load_spec(args.spec)
    if args.list:
        for cell in expand_cells(spec):
            done = (Path(spec.output_dir) / "cells" / cell.name / "eval_final" / "results.json").is_file()
            print(f"{'done' if done else 'todo'}  {cell.varied:15s} {cell.name}")
        return 0
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    report = run_experiment(spec, data_dir=args.data_dir, only=only, max_cells=args.max_cells)
    print((report / "README.md").read_text(encoding="utf-8"))
    print(f"report: {report}", file=sys.stderr)
    return 0


# ---- demo ---------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the README's main job: base vs fine-tuned default model on the nine STS sets")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
    p.add_argument("--spec", default="configs/experiments/demo.yaml", help="the demo's experiment file")


def _run_demo(args: argparse.Namespace) -> int:
    from .experiment import load_spec, run_experiment

    if not Path(args.spec).is_file():
        raise CliError(f"{args.spec} not found: run the demo from the repository root (make demo)")
    spec = load_spec(args.spec)
    report = run_experiment(spec, data_dir=args.data_dir)
    print((report / "README.md").read_text(encoding="utf-8"))
    print(f"report with the bar chart: {report}/README.md", file=sys.stderr)
    return 0


COMMANDS = {
    "encode": (_add_encode, _run_encode),
    "eval": (_add_eval, _run_eval),
    "compare": (_add_compare, _run_compare),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "export": (_add_export, _run_export),
    "serve": (_add_serve, _run_serve),
    "experiment": (_add_experiment, _run_experiment),
    "demo": (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedtune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    _quiet_libraries()
    _, run = COMMANDS[args.command]
    try:
        return run(args) or 0
    except CliError as exc:
        print(f"embedtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"embedtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .training.trainer import TrainingDivergedError

        if isinstance(exc, TrainingDivergedError) and not args.verbose:
            print(f"embedtune {args.command}: error: {exc}", file=sys.stderr)
            return 3
        raise
    except KeyboardInterrupt:
        print(f"embedtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
