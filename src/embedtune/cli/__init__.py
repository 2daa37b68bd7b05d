"""Command line: ``embedtune train|eval|compare|encode|data|soup|export|serve|experiment|demo``.

The CLI only parses arguments and calls the library; the library never reads argv. Each command has an
``_add_<name>`` (parser) and a ``_run_<name>`` (call) function, in ``inference`` (commands that use a model)
or ``runs`` (data, training, experiments).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .common import CliError, _quiet_libraries
from .inference import (
    _add_compare,
    _add_encode,
    _add_eval,
    _add_export,
    _add_serve,
    _run_compare,
    _run_encode,
    _run_eval,
    _run_export,
    _run_serve,
)
from .runs import (
    _add_data,
    _add_demo,
    _add_experiment,
    _add_soup,
    _add_train,
    _run_data,
    _run_demo,
    _run_experiment,
    _run_soup,
    _run_train,
)

COMMANDS = {
    "encode": (_add_encode, _run_encode),
    "eval": (_add_eval, _run_eval),
    "compare": (_add_compare, _run_compare),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "soup": (_add_soup, _run_soup),
    "export": (_add_export, _run_export),
    "serve": (_add_serve, _run_serve),
    "experiment": (_add_experiment, _run_experiment),
    "demo": (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedtune", description="Turn small causal LMs into text-embedding models: train, evaluate, ship."
    )
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
    from ..provenance import git_commit

    git_commit()  # record the commit of the code this process runs, before a long job lets HEAD move
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
        from ..training.trainer import TrainingDivergedError

        if isinstance(exc, TrainingDivergedError) and not args.verbose:
            print(f"embedtune {args.command}: error: {exc}", file=sys.stderr)
            return 3
        raise
    except KeyboardInterrupt:
        print(f"embedtune {args.command}: interrupted", file=sys.stderr)
        return 130
