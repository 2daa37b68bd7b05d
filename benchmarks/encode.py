"""Encoding speed of ``Embedder.encode`` against the paper's protocol and sentence-transformers.

Workload: the STSBenchmark test sentences (1,379 pairs, 2,758 sentences, every one encoded, repeats
included) with the packaged default model (SmolLM2-135M-Instruct), on the CPU, in one process:

* embedtune: ``Embedder.encode`` (length-sorted batches, body without LM head, inference mode), fp32 and bf16;
* (a) the paper's protocol: one sentence per forward pass through ``AutoModelForCausalLM`` with
  ``output_hidden_states=True`` (the vocabulary logits are computed and thrown away), EOS id appended,
  hidden state of the last position; on the first ``--paper-sentences`` sentences only (it is slow);
* (b) sentence-transformers: ``models.Transformer`` + ``models.Pooling("lasttoken")`` on the same converted
  folder. It does not append EOS itself, so each text gets the EOS *text* appended, which its tokenizer
  maps to the EOS id: the token ids are checked to equal embedtune's before timing;
* the shipped recipe's settings (``configs/default-cpu.yaml``: its prompt and depth) in fp32 and bf16, and
  the peer all-MiniLM-L6-v2 through sentence-transformers in fp32 and bf16: the speed a user trades for
  quality, printed as our sentences/s divided by the peer's.

Each timing is the best of ``--repeats`` runs after a warm-up. It prints sentences/s, ratios and the
STSBenchmark Spearman of each, and rewrites the ``## Encoding speed`` section of docs/benchmarks.md.

Usage: ``python benchmarks/encode.py [--batch-size 32] [--paper-sentences 200] [--no-write]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Encoding speed"


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after one warm-up call outside this function) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def pair_spearman(emb: np.ndarray, n_pairs: int, gold: list[float]) -> float:
    """Cosine Spearman (x100) of rows [i] vs [n_pairs + i] against the gold scores."""
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cos = (e[:n_pairs] * e[n_pairs : 2 * n_pairs]).sum(axis=1)
    return float(spearmanr(gold[:n_pairs], cos).statistic) * 100


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--paper-sentences", type=int, default=200, help="sentences for the paper's protocol (a)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (best is kept)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every method (default: torch's); 1 on a shared machine")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from embedtune.data.sts import load_sts
    from embedtune.models.embedder import Embedder
    from embedtune.models.loading import ensure_default_converted

    data = load_sts("STSBenchmark", args.data_dir)
    texts = data.sentences1 + data.sentences2  # (2N,) pairs i and N + i
    n_pairs, n = len(data), len(texts)
    unique = len(set(texts))
    folder = ensure_default_converted()
    print(f"STSBenchmark test: {n_pairs} pairs, {n} sentences ({unique} unique); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average before: {load_average()}", flush=True)
    rows: list[tuple[str, int, float, float | None]] = []  # (method, sentences, seconds, spearman)

    # embedtune, fp32 and bf16
    ours: dict[str, Embedder] = {}
    for dtype in ("float32", "bfloat16"):
        emb = Embedder.from_pretrained("default", device="cpu", dtype=dtype)
        ours[dtype] = emb
        emb.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        sec, vecs = best_time(lambda emb=emb: emb.encode(texts, batch_size=args.batch_size), args.repeats)
        rows.append((f"embedtune Embedder.encode, {dtype}, batch {args.batch_size}", n, sec,
                     pair_spearman(vecs, n_pairs, data.scores)))
        print(f"{rows[-1][0]}: {n / sec:.1f} sentences/s, Spearman {rows[-1][3]:.2f}", flush=True)
    ours32 = ours["float32"]
    del ours["bfloat16"]
    # Arithmetic done per second: 2 FLOPs per non-embedding parameter per token (attention's own products are
    # small at these lengths). It shows how close fp32 runs to what the CPU's cores can do.
    tokens = sum(len(r) for r in ours32.text_tokenizer.ids(texts))
    body_params = sum(p.numel() for name, p in ours32.backbone.named_parameters() if "embed_tokens" not in name)

    # (b) sentence-transformers on the same folder and the same token ids
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_models

    transformer = st_models.Transformer(str(folder), max_seq_length=ours32.max_length)
    # sentence-transformers 6 renders text through the chat template when the tokenizer has one; the paper
    # and embedtune embed the plain text, so keep only the plain-text modality.
    transformer.modality_config.pop("message", None)
    pooling = st_models.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    st = SentenceTransformer(modules=[transformer, pooling], device="cpu").eval()
    eos_text = ours32.tokenizer.eos_token
    st_texts = [t + eos_text for t in texts]
    st_ids = st.preprocess(st_texts)
    mask = st_ids["attention_mask"].bool()
    st_rows = [ids[m].tolist() for ids, m in zip(st_ids["input_ids"], mask)]
    same = sum(a == b for a, b in zip(st_rows, ours32.text_tokenizer.ids(texts)))
    print(f"sentence-transformers token ids equal to embedtune's for {same}/{n} sentences", flush=True)
    st.encode(st_texts[:64], batch_size=args.batch_size)
    sec, vecs = best_time(lambda: st.encode(st_texts, batch_size=args.batch_size, convert_to_numpy=True), args.repeats)
    rows.append((f"sentence-transformers Transformer + Pooling('lasttoken'), fp32, batch {args.batch_size}", n, sec,
                 pair_spearman(vecs, n_pairs, data.scores)))
    print(f"{rows[-1][0]}: {n / sec:.1f} sentences/s, Spearman {rows[-1][3]:.2f}", flush=True)

    # (a) the paper's protocol, one sentence per forward pass with the LM head
    lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = ours32.tokenizer
    k = min(args.paper_sentences, n)
    sub = texts[:k]

    def paper() -> np.ndarray:
        out = []
        with torch.no_grad():
            for t in sub:
                ids = tok(t, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
                hidden = lm(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]  # (1, L, D)
                out.append(hidden[0, -1].numpy())
        return np.stack(out)

    lm(torch.tensor([[tok.eos_token_id]]), output_hidden_states=True)
    sec, vecs_a = best_time(paper, args.repeats)
    ours_sub = ours32.encode(sub, batch_size=args.batch_size, normalize=False)
    agree = float(np.abs(vecs_a - ours_sub).max() / np.abs(vecs_a).max())
    rows.append((f"paper protocol (a): 1 sentence/pass, AutoModelForCausalLM, fp32, first {k} sentences", k, sec, None))
    print(f"{rows[-1][0]}: {k / sec:.1f} sentences/s (max rel. difference to embedtune's vectors {agree:.1e})",
          flush=True)
    peer_rows = recipe_vs_peer(texts, n_pairs, data.scores, args)
    rows += peer_rows
    print(f"load average after: {load_average()}")

    speed = {name: cnt / sec for name, cnt, sec, _ in rows}
    ours_speed = speed[rows[0][0]]
    ratio_a = ours_speed / speed[rows[3][0]]
    ratio_b = ours_speed / speed[rows[2][0]]
    ratio_bf16 = speed[rows[1][0]] / ours_speed
    ratio_a16 = speed[rows[1][0]] / speed[rows[3][0]]
    gflops = {d: speed[rows[i][0]] / n * tokens * 2 * body_params / 1e9 for i, d in enumerate(("fp32", "bf16"))}
    gflops["fp32 at 10x (a)"] = 10 * speed[rows[3][0]] / n * tokens * 2 * body_params / 1e9
    print(f"embedtune fp32 vs (a) paper protocol: {ratio_a:.1f}x (target >= 10x); bf16: {ratio_a16:.1f}x")
    print("GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in gflops.items()))
    print(f"embedtune fp32 vs (b) sentence-transformers: {ratio_b:.2f}x (target >= 1.2x)")
    print(f"embedtune bf16 vs fp32: {ratio_bf16:.2f}x")
    dtypes = ("fp32", "bf16")
    peer_ratios = {dt: speed[peer_rows[2 * i][0]] / speed[peer_rows[4 + i][0]] for i, dt in enumerate(dtypes)}
    prefix_gain = {dt: speed[peer_rows[2 * i][0]] / speed[peer_rows[2 * i + 1][0]] for i, dt in enumerate(dtypes)}
    print("shipped recipe vs all-MiniLM-L6-v2: " + ", ".join(f"{dt} {r:.2f}x" for dt, r in peer_ratios.items()))
    print("shared prompt prefix vs every row whole: " + ", ".join(f"{dt} {r:.2f}x" for dt, r in prefix_gain.items()))
    if not args.no_write:
        write_section(rows, ratio_a, ratio_b, ratio_bf16, n_pairs, n, unique, k, same, agree, args,
                      ratio_a16=ratio_a16, gflops=gflops, tokens=tokens, body_params=body_params,
                      peer_ratios=peer_ratios, prefix_gain=prefix_gain)
    return 0


def recipe_vs_peer(texts: list[str], n_pairs: int, gold: list[float], args) -> list[tuple[str, int, float, float]]:
    """Rows for the shipped recipe's settings (prompt, depth; an untrained base, which runs at the speed of
    the trained and merged model), with and without its shared prompt prefix run once per call
    (``Embedder.share_prefix``), and for all-MiniLM-L6-v2, each in fp32 and bf16 weights, in this order:
    ours fp32, ours fp32 whole, ours bf16, ours bf16 whole, peer fp32, peer bf16."""
    from embedtune.config import load_config
    from embedtune.models.embedder import Embedder
    from embedtune.models.peer import PeerEncoder

    m = load_config(ROOT / "configs" / "default-cpu.yaml").model
    what = f"prompt {m.prompt or 'none'}, {m.num_layers or 'all'} layers"
    rows = []
    for dtype in ("float32", "bfloat16"):
        emb = Embedder.from_pretrained(m.name_or_path, device="cpu", dtype=dtype, prompt=m.prompt,
                                       num_layers=m.num_layers, max_length=m.max_length)
        rows.append(_timed(f"embedtune shipped recipe ({what}), {dtype}, batch {args.batch_size}", emb, texts,
                           n_pairs, gold, args))
        emb.share_prefix = False  # every row whole: what the prompt's shared opening run once saves
        rows.append(_timed(f"the same, prompt prefix not shared (every row run whole), {dtype}", emb, texts,
                           n_pairs, gold, args))
    for dtype in ("float32", "bfloat16"):
        peer = PeerEncoder("all-MiniLM-L6-v2", device="cpu", dtype=dtype)
        rows.append(_timed(f"all-MiniLM-L6-v2 (sentence-transformers), {dtype}, batch {args.batch_size}", peer,
                           texts, n_pairs, gold, args))
    return rows


def _timed(name: str, encoder, texts: list[str], n_pairs: int, gold: list[float], args) -> tuple:
    encoder.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    sec, vecs = best_time(lambda: encoder.encode(texts, batch_size=args.batch_size), args.repeats)
    row = (name, len(texts), sec, pair_spearman(vecs, n_pairs, gold))
    print(f"{name}: {len(texts) / sec:.1f} sentences/s, Spearman {row[3]:.2f}", flush=True)
    return row


def write_section(rows, ratio_a, ratio_b, ratio_bf16, n_pairs, n, unique, k, same, agree, args, *,
                  ratio_a16, gflops, tokens, body_params, peer_ratios, prefix_gain) -> None:
    """Replace (or append) the ``## Encoding speed`` section of docs/benchmarks.md, leaving the others alone."""
    from doc_sections import splice

    from embedtune.provenance import git_commit

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        SECTION,
        "",
        f"Encoding the STSBenchmark test set ({n_pairs} pairs = {n} sentences, {unique} unique; all {n} encoded)",
        "with the packaged default model (SmolLM2-135M-Instruct, converted to safetensors) on the CPU, all methods",
        "in one process.",
        "Targets: >= 10x the paper's protocol (a), >= 1.2x sentence-transformers (b).",
        "",
        "| method | sentences | seconds | sentences/s | STSB Spearman |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cnt, sec, rho in rows:
        lines.append(f"| {name} | {cnt} | {sec:.1f} | {cnt / sec:.1f} | {'–' if rho is None else f'{rho:.2f}'} |")
    lines += [
        "",
        f"- embedtune fp32 vs (a) the paper's protocol: **{ratio_a:.1f}x** "
        f"({'met' if ratio_a >= 10 else 'missed'}; (a) timed on the first {k} sentences only, it is slow).",
        f"- embedtune fp32 vs (b) sentence-transformers: **{ratio_b:.2f}x** ({'met' if ratio_b >= 1.2 else 'missed'}).",
        "- The shipped recipe's settings (configs/default-cpu.yaml) against the peer all-MiniLM-L6-v2, same texts,"
        " same run: " + ", ".join(f"**{r:.2f}x** its sentences/s in {dt}" for dt, r in peer_ratios.items())
        + " (the STSB Spearman of these rows is untrained for ours; trained scores are in docs/results.md).",
        "- Its prompt's opening tokens, the same in every row, run once per encode call and their keys and"
        " values serve every row (`Embedder.share_prefix`, on by default; the same vectors up to rounding): "
        + ", ".join(f"**{r:.2f}x** the speed of running every row whole in {dt}" for dt, r in prefix_gain.items())
        + ".",
        f"- bfloat16 vs float32 (embedtune): **{ratio_bf16:.2f}x** the speed; Spearman in the table. embedtune in",
        f"  bfloat16 (`--dtype bfloat16`) vs (a) in fp32: **{ratio_a16:.1f}x** "
        f"({'meets' if ratio_a16 >= 10 else 'misses'} the 10x target).",
        f"- Why fp32 stays below 10x: {tokens} tokens (EOS included) through {body_params / 1e6:.0f}M non-embedding",
        f"  parameters is {2 * tokens * body_params / 1e12:.2f} TFLOP; embedtune fp32 does "
        f"{gflops['fp32']:.0f} GFLOP/s and bf16 {gflops['bf16']:.0f} GFLOP/s.",
        f"  10x the paper's protocol in fp32 would need {gflops['fp32 at 10x (a)']:.0f} GFLOP/s of fp32 arithmetic,",
        "  near the fp32 peak of two AVX-512 cores (at most 2 FMA units x 16 lanes x 2 FLOPs = 64 per cycle per",
        "  core: ~384 GFLOP/s at an assumed 3 GHz, and matrix products this small reach well under peak); batching",
        "  has already removed the per-pass overhead and the LM head, so what is left is the arithmetic itself.",
        "- Fair comparison: sentence-transformers gets each text with the EOS text appended, which its tokenizer",
        f"  maps to the EOS id; its token ids equal embedtune's for {same}/{n} sentences. The paper-protocol vectors",
        f"  equal embedtune's to a max relative difference of {agree:.1e}.",
        f"- Machine: {cpu}, {os.cpu_count()} CPU cores, 1-min load average {os.getloadavg()[0]:.1f} at the end",
        "  (above the thread count means other work shared the cores); the ratios come from the same run. torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads.",
        f"- Command: `.venv/bin/python benchmarks/encode.py --batch-size {args.batch_size} "
        f"--paper-sentences {args.paper_sentences} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "") + f"`; commit {git_commit(ROOT)}.",
        "",
    ]
    section = "\n".join(lines)
    splice(DOC, SECTION, section)
    print(f"updated {DOC} ({SECTION})")


if __name__ == "__main__":
    sys.exit(main())
