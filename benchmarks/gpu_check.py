"""GPU readiness in one run: embedtune's CUDA paths, the default recipe, and the paper's three model shapes.

Parts (each runs on its own; a failure in one is reported and the others still run):
  a  smoke on the device, like `make test`: encode (and the same vectors as on the CPU), a few training
     steps (precision auto with GradCache; fp16 through the GradScaler on CUDA), GradCache on the device
     (dropout masks replayed, cached gradients == plain ones), eval on two benchmarks, merged export,
     one HTTP request to the server;
  b  the default recipe (configs/default-cpu.yaml) end to end: train plus the nine benchmarks, wall time,
     steps/s, scores next to the CPU scores of docs/results.md;
  c  the paper's model shapes (MiniCPM-2B, Phi-2, Gemma-2B; random weights): one LoRA step at 60 triplets,
     max length 150, then 512 through GradCache, bf16 and sdpa, peak GPU memory and triplets/s against
     the paper's protocol on the same GPU (benchmarks/gpu_check_models.py);
  d  `torchrun --nproc-per-node N` (NCCL on GPUs): gathered loss and gradients == one process's
     (benchmarks/gpu_check_dist.py).

Run on a CUDA machine (a few minutes on one GPU):
  .venv/bin/python benchmarks/gpu_check.py --out gpu-check [--write-docs]
It writes OUT/gpu_check.md (the "## GPU check" section of docs/benchmarks.md) and OUT/gpu_check.json;
--write-docs also puts the section into docs/benchmarks.md, and --splice FILE puts a section written
elsewhere there. Where embedtune is not installed, run it with PYTHONPATH=src; parts a and b need the
model (--model, default: the packaged default) and every part but d needs the data folder (--data-dir).

On a CPU, --tiny runs every part with tiny models and a few steps: a check that the code still runs
(tests/test_gpu_check.py), not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## GPU check"
TEXTS = ["A man is playing a guitar.", "Someone plays music.", "A dog runs in the park.", "The stock market fell."]
# docs/results.md, "The default recipe against all-MiniLM-L6-v2" (configs/default-cpu.yaml, bf16 autocast): the numbers
# part b compares with. A copy, since the docs are prose; update it with that section.
CPU_DEFAULT = {"STS12": 74.60, "STS13": 82.60, "STS14": 75.86, "STS15": 84.23, "STS16": 82.31, "STS17": 87.56,
               "STSBenchmark": 82.00, "BIOSSES": 79.36, "SICK-R": 78.40}  # seed 7, synthetic pairs (AMD EPYC)
AGREE_MEAN = 0.5  # |GPU mean - CPU mean| at most this: "agrees". One seed each; init and data order are the same


class Skip(Exception):
    """A part or step that cannot run here; the message says why."""


@dataclass
class Check:
    """What every part needs: device, folders, options, and what part a learned about the model."""

    device: torch.device
    out: Path
    work: Path
    data_dir: Path
    args: argparse.Namespace
    model: str = "default"
    model_note: str = ""
    model_ok: bool = True
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return bool(self.args.tiny)


# ---- running parts and steps ----------------------------------------------------------------------------
def run_part(key: str, fn: Callable[[Check], dict], check: Check) -> dict[str, Any]:
    """Run one part; an exception makes it 'failed' (with the traceback) and the next part runs anyway."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn(check)}
    except Skip as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported, and the other parts still run
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - start
    why = result.get("reason") or result.get("error") or ""
    print(f"part {key}: {result['status']} ({result['seconds']:.1f} s) {why}", flush=True)
    if result["status"] == "failed":
        print(result["traceback"], file=sys.stderr, flush=True)
    return result


def run_steps(steps: list[tuple[str, Callable[[], str]]]) -> dict[str, Any]:
    """Sub-checks of a part: each gives a detail line, raises Skip, or fails; the part fails if one fails."""
    rows = []
    for name, fn in steps:
        try:
            rows.append({"step": name, "result": "ok", "detail": fn()})
        except Skip as exc:
            rows.append({"step": name, "result": "skipped", "detail": str(exc)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"step": name, "result": "FAILED", "detail": f"{type(exc).__name__}: {exc}"[:500]})
            traceback.print_exc()
    status = "failed" if any(r["result"] == "FAILED" for r in rows) else "ok"
    return {"status": status, "steps": rows}


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row cosine of two (N, D) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _texts_for_tokenizer(check: Check) -> list[str]:
    from gpu_check_models import read_triplets

    return TEXTS + [t for trip in read_triplets(check.data_dir, 400) for t in trip]


def ensure_model(check: Check) -> str:
    """The model of parts a and b, chosen once: --model, or in --tiny (or where it is missing) a tiny
    random Llama."""
    from gpu_check_models import tiny_checkpoint

    from embedtune.models.loading import ModelNotFoundError, resolve_source

    if check.model_note:
        return check.model
    if not check.tiny:
        try:
            resolve_source(check.args.model)
            check.model, check.model_note = check.args.model, f"model {check.args.model}"
            return check.model
        except ModelNotFoundError as exc:
            check.model_ok = False
            check.model_note = f"{check.args.model!r} is not available here ({str(exc)[:200]}); a tiny random Llama ran"
    else:
        check.model_note = "a tiny random Llama (2 layers, hidden 64) with a word-level tokenizer"
    check.model = str(tiny_checkpoint(check.work / "tiny-model", _texts_for_tokenizer(check)))
    return check.model


# ---- part a: smoke --------------------------------------------------------------------------------------
def smoke_encode(check: Check) -> str:
    from embedtune.models.embedder import Embedder

    dev = str(check.device)
    emb = Embedder.from_pretrained(check.model, device=dev, dtype="float32")
    vectors = emb.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), emb.dim) and np.isfinite(vectors).all(), vectors.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4), "vectors are not L2-normalized"
    detail = f"{vectors.shape} on {dev}, attention {emb.backbone.config._attn_implementation}"
    if check.device.type == "cuda":
        on_cpu = Embedder.from_pretrained(check.model, device="cpu", dtype="float32").encode(TEXTS)
        cos = _cosine_min(vectors, on_cpu)
        auto = Embedder.from_pretrained(check.model, device=dev)  # dtype auto: bfloat16 on a GPU
        dtype = next(auto.backbone.parameters()).dtype
        cos16 = _cosine_min(auto.encode(TEXTS), vectors)
        assert cos > 0.999 and dtype == torch.bfloat16 and cos16 > 0.98, (cos, dtype, cos16)
        detail += f"; cosine to the CPU's vectors >= {cos:.6f}; dtype auto: {dtype}, cosine to fp32 >= {cos16:.4f}"
    return detail


def smoke_train(check: Check, run: Path, precision: str, mini_batch_size: int | None) -> str:
    from embedtune.config import load_config
    from embedtune.training.trainer import train

    if precision == "fp16" and check.device.type != "cuda":
        raise Skip("fp16 autocast needs CUDA; tests/test_cuda_paths.py runs this branch with CPU fp16")
    overrides = [f"model.name_or_path={check.model}", f"train.output_dir={run}", f"data.data_dir={check.data_dir}",
                 "data.decontaminate=false", "data.max_rows=64", "model.max_length=32", "train.batch_size=8",
                 "train.max_steps=3", "train.warmup_steps=1", "eval.every=0", "train.save_every=0",
                 f"train.precision={precision}", f"train.mini_batch_size={mini_batch_size or 'null'}"]
    if precision == "fp16":
        overrides.append("model.dtype=float32")  # fp16 autocast over float32 weights, as GradScaler expects
    result = train(load_config(None, overrides), show_progress=False)
    summary = json.loads((run / "train_summary.json").read_text())
    assert math.isfinite(result.final_loss) and (run / "adapter_model.safetensors").is_file(), summary
    return (f"{result.steps} steps of 8 triplets, precision {summary['precision']}, mini-batch {mini_batch_size}, "
            f"final loss {result.final_loss:.4f}, {result.steps / result.seconds:.2f} steps/s")


def smoke_gradcache(check: Check) -> str:
    """On the device: the cached re-forward sees the cached forward's dropout masks (the device RNG is
    replayed), and without dropout the cached gradients equal the plain ones."""
    from gpu_check_models import read_triplets

    from embedtune.config import load_config
    from embedtune.training.gradcache import ContrastiveBatch, contrastive_step
    from embedtune.training.trainer import build_embedder

    cfg = load_config(None, [f"model.name_or_path={check.model}", "model.dtype=float32", "lora.dropout=0.3"])
    torch.manual_seed(0)
    emb = build_embedder(cfg, check.device).train()
    tt = emb.text_tokenizer
    trip = read_triplets(check.data_dir, 8)
    batch = ContrastiveBatch(*(tt.ids([t[i] for t in trip], 32) for i in range(3)))
    outputs: list[torch.Tensor] = []

    def recorded(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = emb(ids, mask)
        outputs.append(out.detach().clone())
        return out

    contrastive_step(recorded, tt.pad, batch, mini_batch_size=2, device=check.device)
    half = len(outputs) // 2
    replay = max(float((a - b).abs().max()) for a, b in zip(outputs[:half], outputs[half:]))
    assert half >= 2 and replay < 1e-4, (half, replay)
    emb.eval()  # dropout off, gradients still computed
    grads = []
    for mini in (None, 2):
        emb.zero_grad(set_to_none=True)
        contrastive_step(emb, tt.pad, batch, mini_batch_size=mini, device=check.device)
        grads.append({n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad})
    diff = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    scale = max(float(g.abs().max()) for g in grads[0].values())
    assert scale > 0 and diff <= 1e-4 * scale, (diff, scale)
    return (f"{half} chunks re-embedded with their dropout masks (max difference {replay:.1e}); cached gradients "
            f"== plain within {diff:.1e} (largest {scale:.2e})")


def smoke_eval(check: Check, run: Path) -> str:
    from embedtune.evaluation.sts import evaluate_sts
    from embedtune.models.embedder import Embedder

    emb = Embedder.load(run, device=str(check.device))
    scores = evaluate_sts(emb, ["STS17", "BIOSSES"], data_dir=check.data_dir, max_pairs=20 if check.tiny else None)
    assert all(math.isfinite(s.cosine_spearman) for s in scores), scores
    return ", ".join(f"{s.task} {s.cosine_spearman:.2f} ({s.pairs} pairs)" for s in scores)


def smoke_export(check: Check, run: Path, merged: Path) -> str:
    from embedtune.export import export_merged
    from embedtune.models.embedder import Embedder

    export_merged(run, merged, overwrite=True)
    dev = str(check.device)
    cos = _cosine_min(Embedder.load(merged, device=dev, dtype="float32").encode(TEXTS),
                      Embedder.load(run, device=dev, dtype="float32").encode(TEXTS))
    assert cos > 0.9999, cos
    return f"merged model on {dev} gives the run's vectors (cosine >= {cos:.6f})"


def smoke_serve(check: Check, merged: Path) -> str:
    try:
        import fastapi  # noqa: F401
        import httpx
        import uvicorn  # noqa: F401
    except ImportError as exc:
        from embedtune.serving import SERVE_INSTALL_HINT

        raise Skip(f"{exc}: {SERVE_INSTALL_HINT}") from exc
    from embedtune.models.embedder import Embedder
    from embedtune.serving import create_app, running_server

    emb = Embedder.load(merged, device=str(check.device), dtype="float32")
    with running_server(create_app(emb, model_name="gpu-check")) as url:
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "gpu-check", "input": TEXTS[:2]}, timeout=120)
    reply.raise_for_status()
    served = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
    cos = _cosine_min(served, emb.encode(TEXTS[:2]))
    assert cos > 0.9999, cos
    return f"POST /v1/embeddings answered {served.shape} vectors equal to encode() (cosine >= {cos:.6f})"


def part_smoke(check: Check) -> dict[str, Any]:
    ensure_model(check)
    run, merged = check.work / "smoke-run", check.work / "smoke-merged"
    steps = [
        ("encode", lambda: smoke_encode(check)),
        ("train, precision auto, GradCache", lambda: smoke_train(check, run, "auto", 2)),
        ("train, fp16 + GradScaler", lambda: smoke_train(check, check.work / "smoke-fp16", "fp16", None)),
        ("GradCache on the device", lambda: smoke_gradcache(check)),
        ("eval on STS17 and BIOSSES", lambda: smoke_eval(check, run)),
        ("export --merge", lambda: smoke_export(check, run, merged)),
        ("serve one request", lambda: smoke_serve(check, merged)),
    ]
    return {"model": check.model_note, **run_steps(steps)}


# ---- part b: the default recipe -------------------------------------------------------------------------
def part_recipe(check: Check) -> dict[str, Any]:
    from embedtune.config import load_config
    from embedtune.evaluation.sts import evaluate_sts
    from embedtune.models.embedder import Embedder
    from embedtune.training.trainer import train

    if not check.tiny and check.device.type != "cuda":
        raise Skip("no GPU: on a CPU the recipe takes about an hour (docs/results.md); --tiny checks the code")
    ensure_model(check)
    if not check.model_ok:
        raise Skip(f"the recipe's model: {check.model_note}")
    run = check.work / "recipe"
    overrides = [f"train.output_dir={run}", f"data.data_dir={check.data_dir}", f"model.dtype={check.args.recipe_dtype}"]
    if check.tiny:
        # the recipe's depth cut, scaled to the tiny model's two layers
        overrides += [f"model.name_or_path={check.model}", "model.num_layers=1", "data.max_rows=64",
                      "data.synthetic.pairs=0",
                      "train.batch_size=4", "train.max_steps=3", "train.warmup_steps=1", "eval.every=0",
                      "train.save_every=0"]
    elif check.model != "default":
        overrides.append(f"model.name_or_path={check.model}")
    cfg = load_config(ROOT / "configs" / "default-cpu.yaml", overrides)
    start = time.perf_counter()
    result = train(cfg, show_progress=False)
    wall = time.perf_counter() - start
    # Evaluated as docs/results.md evaluated the CPU run: float32 weights, bf16 autocast, batch 64.
    emb = Embedder.load(run, device=str(check.device), dtype="float32", autocast="bf16")
    start = time.perf_counter()
    scores = evaluate_sts(emb, "all", data_dir=check.data_dir, batch_size=64, max_pairs=20 if check.tiny else None)
    eval_s = time.perf_counter() - start
    gpu = {s.task: s.cosine_spearman for s in scores}
    mean, cpu_mean = float(np.mean(list(gpu.values()))), float(np.mean(list(CPU_DEFAULT.values())))
    return {"overrides": overrides, "steps": result.steps, "batch": cfg.train.batch_size, "wall_s": wall,
            "loop_s": result.seconds, "steps_per_s": result.steps / result.seconds,
            "triplets_per_s": result.steps * cfg.train.batch_size / result.seconds, "eval_s": eval_s,
            "best_dev": result.best_score, "scores": gpu, "mean": mean, "cpu_mean": cpu_mean,
            "agrees": None if check.tiny else abs(mean - cpu_mean) <= AGREE_MEAN, "threshold": AGREE_MEAN}


# ---- part c: the paper's shapes -------------------------------------------------------------------------
def part_shapes(check: Check) -> dict[str, Any]:
    from gpu_check_models import PAPER_SHAPES, TINY_SHAPES, measure_shape, read_triplets, shapes_tokenizer

    if not check.tiny and check.device.type != "cuda":
        raise Skip("no GPU: 2-3B parameter models at batch 512 are a GPU measurement; --tiny checks the code")
    a = check.args
    batch, big, steps, width = ((min(a.batch, 4), min(a.big_batch, 16), 1, min(a.max_length, 48)) if check.tiny
                                else (a.batch, a.big_batch, a.steps, a.max_length))
    triplets = read_triplets(check.data_dir, 3 * big if check.tiny else 2048)
    tokenizer, tokenizer_note = shapes_tokenizer(a.tokenizer, [t for trip in triplets for t in trip], check.tiny)
    models = []
    for name, (family, fields) in (TINY_SHAPES if check.tiny else PAPER_SHAPES).items():
        try:
            models.append(measure_shape(name, family, fields, tokenizer, triplets, check.device, batch=batch,
                                        big_batch=big, steps=steps, width=width, paper_big=a.paper_big))
        except Exception as exc:  # noqa: BLE001 - one shape failing must not hide the others
            traceback.print_exc()
            models.append({"model": name, "family": family, "error": f"{type(exc).__name__}: {exc}"[:500]})
    status = "failed" if any("error" in m for m in models) else "ok"
    return {"status": status, "tokenizer": tokenizer_note, "batch": batch, "big_batch": big, "steps": steps,
            "max_length": width, "models": models}


# ---- part d: torchrun -----------------------------------------------------------------------------------
def part_distributed(check: Check) -> dict[str, Any]:
    import embedtune

    out = check.work / "dist"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    n = check.args.nproc
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           str(HERE / "gpu_check_dist.py"), "--out", str(out), "--device", check.device.type]
    env = dict(os.environ)  # the workers import embedtune from where this process did
    env["PYTHONPATH"] = os.pathsep.join([str(Path(embedtune.__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=check.args.dist_timeout, cwd=ROOT)
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if proc.returncode != 0 or len(ranks) != n:
        raise RuntimeError(f"torchrun exited with {proc.returncode}, {len(ranks)} of {n} ranks reported: "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    equal = all(c["equal"] for r in ranks for c in r["cases"].values())
    return {"status": "ok" if equal else "failed", "command": "torchrun --standalone --nproc-per-node "
            f"{n} benchmarks/gpu_check_dist.py", "backend": ranks[0]["backend"], "ranks": ranks}


# ---- the report and the command line --------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    """Device, versions, commit and date for the report's header."""
    import transformers

    from embedtune.provenance import git_commit

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible"
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "commit": git_commit(ROOT) or "unknown", "date": datetime.date.today().isoformat()}


PARTS = {"a": part_smoke, "b": part_recipe, "c": part_shapes, "d": part_distributed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models and a few steps (runs on CPU)")
    p.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'cd' (default: abcd)")
    p.add_argument("--out", default="gpu-check", help="where gpu_check.md and gpu_check.json go")
    p.add_argument("--work", default=None, help="scratch folder for runs and models (default: a temporary one)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $EMBEDTUNE_DATA or ../shared/data)")
    p.add_argument("--model", default="default", help="model of parts a and b (default: the packaged default)")
    p.add_argument("--recipe-dtype", default="float32", help="part b's model.dtype (float32: as the CPU run)")
    p.add_argument("--tokenizer", default=None, help="part c: tokenizer folder for the texts' ids")
    p.add_argument("--batch", type=int, default=60, help="part c: the paper's batch (triplets)")
    p.add_argument("--big-batch", type=int, default=512, help="part c: the GradCache batch (triplets)")
    p.add_argument("--steps", type=int, default=2, help="part c: timed steps per case after one warm-up")
    p.add_argument("--max-length", type=int, default=150, help="part c: token cap (the paper pads to it)")
    p.add_argument("--no-paper-big", dest="paper_big", action="store_false",
                   help="part c: skip the paper protocol at the big batch")
    p.add_argument("--nproc", type=int, default=1, help="part d: processes (one GPU each)")
    p.add_argument("--dist-timeout", type=int, default=300, help="part d: seconds before torchrun is stopped")
    p.add_argument("--write-docs", action="store_true", help="also put the section into docs/benchmarks.md")
    p.add_argument("--splice", metavar="FILE", help="put FILE (a gpu_check.md) into docs/benchmarks.md and exit")
    args = p.parse_args(argv)
    if set(args.parts) - set(PARTS):
        p.error(f"--parts takes letters of {''.join(PARTS)}, got {args.parts!r}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen parts; returns the report (also written to OUT/gpu_check.json and .md)."""
    from gpu_check_report import render

    from embedtune.data.sts import find_data_dir

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        torch.set_num_threads(1)  # tiny models gain nothing from threads, and lose much on a busy machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(device, out, work, find_data_dir(args.data_dir), args)
    start = time.perf_counter()
    parts = {key: run_part(key, PARTS[key], check) for key in "abcd" if key in args.parts}
    meta = {**machine(device), "tiny": args.tiny, "total_s": time.perf_counter() - start,
            "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])}
    report = {"meta": meta, "parts": parts}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "gpu_check.md").write_text(render(report, SECTION, CPU_DEFAULT), encoding="utf-8")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    from gpu_check_report import splice

    args = parse_args(argv)
    docs = ROOT / "docs" / "benchmarks.md"
    if args.splice:
        text = Path(args.splice).read_text(encoding="utf-8")
        if not re.match(rf"{re.escape(SECTION)}\b", text):
            raise SystemExit(f"{args.splice} does not start with {SECTION!r}")
        splice(docs, SECTION, text)
        return 0
    report = run(args)
    text = (Path(args.out) / "gpu_check.md").read_text(encoding="utf-8")
    print(text)
    if args.write_docs:
        if args.tiny:
            raise SystemExit("--write-docs with --tiny: a tiny run measures nothing; not written")
        splice(docs, SECTION, text)
    return 1 if any(p["status"] == "failed" for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
