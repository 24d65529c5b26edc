"""Benchmark: `eval bpc` scoring speed, the code before issue 10 vs the current one, side by side.

    .venv/bin/python benchmarks/bench_score.py [--model smollm2-135m] [--text embedded:ko-heldout]
        [--lang ko] [--max-chars 6000] [--context 512] [--stride 256] [--rounds 2]
        [--variants before exact bf16] [--gguf FILE] [--json FILE]

Loads the model once (fp32) and scores the same text with each variant, alternating their order
from round to round so that the noise of a shared machine falls on all of them:

- `before`: `score_ids` as it was before issue 10, copied here verbatim so the comparison stays valid
  (one window per forward, `logits_to_keep`, fp32 cross-entropy over the vocabulary);
- `exact`: `langadapt.model.score.score_ids` (windows batched, loss on scored positions only);
- `bf16`: the same under bf16 autocast (`autocast="bfloat16"`: fp32 weights and residual stream,
  bf16 matmuls; not exact);
- `bf16-weights`: the same on the model loaded in bf16 (what `--dtype bfloat16` gives; not exact);
- `compiled`: `exact` on a copy of the model whose decoder went through `torch.compile` (compiled
  before the rounds; the compile time is printed, not counted);
- `llama.cpp`: the same windows through llama-cpp-python on `--gguf FILE` (e.g. `langadapt export
  gguf smollm2-135m --type f32`), logits of every position, the NLL from them in fp64.

Prints tokens/s of each (scored tokens over all rounds / seconds over all rounds), the ratio to
`before`, bits per char and its difference from `before`; `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time

import torch

VARIANTS = ["before", "exact", "bf16", "bf16-weights", "compiled", "llama.cpp"]


def score_ids_before(model, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """`langadapt.model.score.score_ids` before issue 10 (without its progress bar)."""
    from langadapt.model.score import window_spans

    spans = window_spans(len(ids), context, stride)
    device = next(model.parameters()).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for begin, end, start in spans:
            window = seq[begin:end].unsqueeze(0)
            n = end - start
            if keep_logits:
                logits = model(window, logits_to_keep=n + 1).logits[0, :-1]
            else:
                logits = model(window).logits[0, start - begin - 1:end - begin - 1]
            targets = seq[start:end]
            nll += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            scored += n
    return nll, scored


def score_ids_llama_cpp(llm, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """The same windows and targets as `score_ids`, through a llama_cpp.Llama made with logits_all."""
    import numpy as np

    from langadapt.model.score import window_spans

    nll, scored = 0.0, 0
    for begin, end, start in window_spans(len(ids), context, stride):
        llm.reset()
        llm.eval(ids[begin:end])
        logits = np.asarray(llm.scores[start - begin - 1:end - begin - 1], dtype=np.float64)
        top = logits.max(1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
        nll += float((lse - logits[np.arange(end - start), ids[start:end]]).sum())
        scored += end - start
    return nll, scored


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", nargs="+", default=["embedded:ko-heldout"])
    ap.add_argument("--lang", default="ko")
    ap.add_argument("--max-chars", type=int, default=6000)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=VARIANTS[:3], choices=VARIANTS)
    ap.add_argument("--gguf", default=None, metavar="FILE", help="the model as GGUF, for the llama.cpp variant")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    if "llama.cpp" in args.variants and not args.gguf:
        ap.error("the llama.cpp variant needs --gguf FILE")

    from langadapt.corpus import read_text
    from langadapt.model.load import load_model
    from langadapt.model.score import score_ids
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer

    source = str(resolve_model_source(args.model))
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype="float32").eval()
    bf16_model = load_model(source, dtype="bfloat16").eval() if "bf16-weights" in args.variants else None
    text = read_text(args.text, args.lang, max_chars=args.max_chars)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    compiled_model = None
    if "compiled" in args.variants:
        compiled_model = load_model(source, dtype="float32").eval()
        compiled_model.model = torch.compile(compiled_model.model, dynamic=False)
        start = time.perf_counter()
        score_ids(compiled_model, ids, args.context, args.stride, progress=False)
        print(f"torch.compile and a first pass: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    llm = None
    if "llama.cpp" in args.variants:
        from llama_cpp import Llama
        llm = Llama(args.gguf, n_ctx=args.context, n_batch=args.context, n_ubatch=args.context, logits_all=True,
                    n_threads=torch.get_num_threads(), verbose=False)
        score_ids_llama_cpp(llm, ids[:args.context], args.context, args.stride)  # warm-up
    runs = {
        "before": lambda: score_ids_before(model, ids, args.context, args.stride),
        "exact": lambda: score_ids(model, ids, args.context, args.stride, progress=False),
        "bf16": lambda: score_ids(model, ids, args.context, args.stride, progress=False, autocast="bfloat16"),
        "bf16-weights": lambda: score_ids(bf16_model, ids, args.context, args.stride, progress=False),
        "compiled": lambda: score_ids(compiled_model, ids, args.context, args.stride, progress=False),
        "llama.cpp": lambda: score_ids_llama_cpp(llm, ids, args.context, args.stride),
    }
    score_ids(model, ids[:args.context], args.context, args.stride, progress=False)  # warm-up
    figures = {v: {"seconds": 0.0, "tokens": 0, "nll": None} for v in args.variants}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
        for variant in order:
            start = time.perf_counter()
            nll, scored = runs[variant]()
            seconds = time.perf_counter() - start
            f = figures[variant]
            f["seconds"] += seconds
            f["tokens"] += scored
            f["nll"] = nll
            print(f"round {r + 1} {variant:<13} {scored / seconds:7.1f} tokens/s", file=sys.stderr, flush=True)

    first = args.variants[0]
    rows = []
    for variant in args.variants:
        f = figures[variant]
        bpc = f["nll"] / math.log(2) / len(text)
        rows.append({"variant": variant, "tokens_per_second": round(f["tokens"] / f["seconds"], 1),
                     "seconds_per_round": round(f["seconds"] / args.rounds, 2), "bits_per_char": round(bpc, 6)})
    base = rows[0]
    for row in rows:
        row[f"speedup_vs_{first}"] = round(row["tokens_per_second"] / base["tokens_per_second"], 2)
        row[f"bpc_minus_{first}"] = round(row["bits_per_char"] - base["bits_per_char"], 6)
    result = {"model": args.model, "text": args.text, "lang": args.lang, "characters": len(text),
              "tokens_scored": figures[first]["tokens"] // args.rounds, "context": args.context,
              "stride": args.stride, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "variants": rows}

    print(f"{args.model} on {' '.join(args.text)} ({len(text):,} chars, {result['tokens_scored']:,} tokens scored), "
          f"context {args.context}, stride {args.stride}, {args.rounds} rounds, {result['threads']} threads\n")
    print(f"| variant | tokens/s | s per round | × {first} | bits per char | Δ bpc vs {first} |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['tokens_per_second']} | {row['seconds_per_round']} | "
              f"{row[f'speedup_vs_{first}']} | {row['bits_per_char']:.6f} | {row[f'bpc_minus_{first}']:+.6f} |")
    if args.json:
        from langadapt.outputs import write_json_atomic
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
