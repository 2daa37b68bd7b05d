"""Commands that prepare data or run training: data, train, experiment, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL
from .common import CliError
from .pairs import _add_mine_negatives, _add_split, _add_synthesize, _run_mine_negatives, _run_split, _run_synthesize


# ---- data ---------------------------------------------------------------------------------------------
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="validate training files (check), drop STS test sentences (decontaminate), "
                        "mine hard negatives for pairs (mine-negatives), hold a slice apart (split), write "
                        "domain pairs with an instruct LM (synthesize)")
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
    _add_mine_negatives(dsub)
    _add_split(dsub)
    _add_synthesize(dsub)


def _run_data(args: argparse.Namespace) -> int:
    own = {"mine-negatives": _run_mine_negatives, "split": _run_split, "synthesize": _run_synthesize}
    if args.data_command in own:
        return own[args.data_command](args)
    from ..data.decontaminate import sts_sentence_index
    from ..data.triplets import expand_data_path, parse_columns
    from ..io import write_text_atomic

    columns = parse_columns(args.columns)
    if args.data_command == "check":
        from ..data.check import check_file

        text_tokenizer = None
        if args.model.lower() != "none":
            from ..config import resolve_prompt
            from ..data.collate import TextTokenizer
            from ..models.loading import load_tokenizer, resolve_source

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
    from ..data.decontaminate import decontaminate
    from ..data.triplets import read_examples, write_examples

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
    from ..config import load_config
    from ..training.trainer import train

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, show_progress=not args.no_progress)
    from ..training.distributed import is_main

    if not is_main():  # one summary line per run, not per process
        return 0
    best = f", best dev {result.best_score:.2f} at step {result.best_step}" if result.best_score is not None else ""
    print(f"trained {result.steps} steps on {result.examples} examples in {result.seconds / 60:.1f} min; "
          f"final loss {result.final_loss:.4f}{best}; run folder {result.output_dir}")
    return 0


# ---- soup ---------------------------------------------------------------------------------------------
def _add_soup(sub) -> None:
    p = sub.add_parser("soup", help="average the LoRA updates of several runs of one recipe (e.g. seeds) into one run "
                                    "folder that eval, export and serve load like any run")
    p.add_argument("runs", nargs="+", help="two or more LoRA run folders (or their best/ folders) of the same base "
                                           "model, depth, encoding, LoRA rank, alpha and targets")
    p.add_argument("--out", required=True, help="folder to write (written atomically)")
    p.add_argument("--mix", default=None, help="comma list of one weight per run (normalized; default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _run_soup(args: argparse.Namespace) -> int:
    from ..soup import make_soup

    mix = None
    if args.mix is not None:
        try:
            mix = [float(x) for x in args.mix.split(",")]
        except ValueError:
            raise CliError(f"--mix: expected a comma list of numbers, got {args.mix!r}") from None
    try:
        out = make_soup(args.runs, args.out, mix=mix, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {out}: the mean LoRA update of {len(args.runs)} runs", file=sys.stderr)
    return 0


# ---- experiment ---------------------------------------------------------------------------------------
def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run (or resume) a grid of training + evaluation cells and report it")
    p.add_argument("spec", help="experiment file (configs/experiments/*.yaml)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
    p.add_argument("--only", default=None, help="comma-separated substrings: run only matching cells")
    p.add_argument("--max-cells", type=int, default=None, help="work on at most N unfinished cells in this call")
    p.add_argument("--list", action="store_true", help="list the cells (done, todo, or stale: made with other "
                   "settings), then exit")


def _run_experiment(args: argparse.Namespace) -> int:
    from ..experiment import cell_status, expand_cells, load_spec, run_experiment

    spec = load_spec(args.spec)
    if args.list:
        for cell in expand_cells(spec):
            status, changed = cell_status(cell, spec, args.data_dir)
            print(f"{status:5s} {cell.varied:15s} {cell.name}")
            for c in changed:
                print(f"        run with other settings: {c}")
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
    from ..experiment import load_spec, run_experiment

    if not Path(args.spec).is_file():
        raise CliError(f"{args.spec} not found: run the demo from the repository root (make demo)")
    spec = load_spec(args.spec)
    report = run_experiment(spec, data_dir=args.data_dir)
    print((report / "README.md").read_text(encoding="utf-8"))
    print(f"report with the bar chart: {report}/README.md", file=sys.stderr)
    return 0
