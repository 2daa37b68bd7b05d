"""What every command shares: the one-line error type, model options, and building an Embedder from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_MODEL

AUTOCAST_CHOICES = ("none", "bf16", "fp16")
AUTOCAST_HELP = ("run inference under torch.autocast (weights stay in their dtype): bf16 is faster on CPUs with "
                 "AVX512-BF16/AMX, at scores close to fp32 (docs/benchmarks.md, docs/results.md); default none")


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
                   help="hub id, local folder, .gguf file, 'default' (packaged SmolLM2-135M-Instruct), or a "
                        "sentence-transformers folder or 'all-MiniLM-L6-v2' (a peer baseline, run as it is)")
    if with_adapter:
        g.add_argument("--adapter", default=None, help="LoRA adapter folder (a training run's output)")
        g.add_argument("--run", default=None, help="a training run or export folder (holds embedtune.json)")
    g.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    g.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16 (auto: fp32 CPU, bf16 GPU)")
    g.add_argument("--autocast", default=None, choices=AUTOCAST_CHOICES, help=AUTOCAST_HELP)
    g.add_argument("--device", default=None, help="cpu|cuda|cuda:N (default: cuda when available)")
    g.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (MiniCPM)")
    g.add_argument("--pooling", default=None, help="last|mean|weighted_mean (default: last, or the run's)")
    g.add_argument("--prompt", default=None, help="none|p1|p2|p3 or a template with {} (default: none, or the run's)")
    g.add_argument("--max-length", type=int, default=None, help="token cap per text, EOS included (default 128)")
    g.add_argument("--num-layers", type=int, default=None,
                   help="keep only the first N decoder layers of a base model (default: all; a run loads at the "
                        "depth it was trained at)")


def _build_embedder(args: argparse.Namespace):
    """Embedder from --model/--adapter/--run and the shared model options."""
    from ..models.embedder import Embedder

    options = {}
    if args.pooling is not None:
        options["pooling"] = args.pooling
    if args.prompt is not None:
        options["prompt"] = None if args.prompt.lower() == "none" else args.prompt
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if getattr(args, "autocast", None) is not None:
        options["autocast"] = args.autocast
    run = getattr(args, "run", None)
    adapter = getattr(args, "adapter", None)
    if run and adapter:
        raise CliError("give either --run or --adapter, not both")
    if not run and not adapter:
        from ..models.peer import PeerEncoder, resolve_peer

        if resolve_peer(args.model) is not None:
            # A sentence-transformers model (a peer baseline): its own pooling and normalization, no prompt.
            given = [f"--{k.replace('_', '-')}" for k in ("pooling", "prompt", "max_length", "num_layers")
                     if getattr(args, k, None) is not None]
            if given:
                raise CliError(f"{args.model} is a sentence-transformers model, evaluated with its own pooling, "
                               f"length and depth and no prompt; drop {', '.join(given)}")
            return PeerEncoder(args.model, device=args.device, dtype=args.dtype,
                               autocast=getattr(args, "autocast", None))
    num_layers = getattr(args, "num_layers", None)
    from_run = run or (adapter and (Path(adapter) / "embedtune.json").is_file() and args.model == DEFAULT_MODEL)
    if num_layers is not None and from_run:
        raise CliError(f"--num-layers applies to a base model: {run or adapter} loads at the depth it was trained "
                       "at (num_layers in its embedtune.json)")
    if run:
        base = args.model if args.model != DEFAULT_MODEL else None
        return Embedder.load(run, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                             base_model=base, **options)
    if from_run:
        # A run folder passed as --adapter: reuse its recorded settings unless overridden.
        return Embedder.load(adapter, device=args.device, dtype=args.dtype,
                             trust_remote_code=args.trust_remote_code, **options)
    return Embedder.from_pretrained(
        args.model, adapter=adapter, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device,
        trust_remote_code=args.trust_remote_code, num_layers=num_layers, **options,
    )
