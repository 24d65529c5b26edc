"""Benchmark: GGUF quantisation types in llama.cpp: held-out bits per character, file size, speed.

    .venv/bin/python benchmarks/bench_gguf_quant.py [--model smollm2-135m --model DIR ...]
        [--types f16 q8_0 q4_k_m] [--text embedded:ko-heldout] [--lang ko] [--max-chars 20000] [--out FILE]

For each model and type: `langadapt export gguf` (tokeniser parity checked by llama.cpp), then in
llama.cpp (the llama-cpp-python bindings, 2 threads): bits per character of the held-out text scored
exactly as `langadapt eval bpc` scores it (BOS first, windows of 512 tokens moving by 256, each
token scored once; log-likelihoods from llama.cpp's logits), prompt tokens/s of that scoring, and
generation tokens/s (64 greedy tokens after a short prompt). The transformers fp32 figure of the same
text is the reference row. Prints a Markdown table and writes the figures as JSON (default:
bench_gguf_quant.json next to this file).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from langadapt.corpus import read_text
from langadapt.export.gguf import ExportGgufOptions, export_gguf_command
from langadapt.model.load import load_model
from langadapt.model.score import bpc_of_text, window_spans
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer

HERE = Path(__file__).resolve().parent
CONTEXT, STRIDE, THREADS = 512, 256, 2


def llama_cpp_nll(llm, ids: list[int]) -> tuple[float, int, float]:
    """(summed NLL in nats of ids[1:], tokens scored, seconds) with eval bpc's sliding windows."""
    nll, scored, seconds = 0.0, 0, 0.0
    for begin, end, first in window_spans(len(ids), CONTEXT, STRIDE):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids[begin:end])
        seconds += time.perf_counter() - start
        logits = np.asarray(llm.scores[:end - begin], dtype=np.float64)
        for pos in range(first, end):
            row = logits[pos - begin - 1]
            top = row.max()
            nll -= row[ids[pos]] - top - math.log(np.exp(row - top).sum())
            scored += 1
    return nll, scored, seconds


def generation_speed(llm, prompt: list[int], n: int = 64) -> float:
    """Greedy tokens per second after `prompt` (prompt evaluation not counted)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(n):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return n / (time.perf_counter() - start)


def main() -> None:
    from llama_cpp import Llama

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--text", default="embedded:ko-heldout")
    parser.add_argument("--lang", default="ko")
    parser.add_argument("--max-chars", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=HERE / "bench_gguf_quant.json")
    args = parser.parse_args()
    text = read_text([args.text], args.lang, max_chars=args.max_chars)
    rows = []
    for spec in args.model or ["smollm2-135m"]:
        tok = load_tokenizer(str(resolve_model_source(spec)))
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(text, add_special_tokens=False)
        reference = bpc_of_text(load_model(spec, dtype="float32").eval(), tok, text, CONTEXT, STRIDE, progress=False)
        rows.append({"model": spec, "type": "transformers fp32", "bits_per_char": reference["bits_per_char"],
                     "megabytes": None, "prompt_tokens_per_s": reference["tokens_per_second"],
                     "generation_tokens_per_s": None})
        prompt = tok.encode(text[:200], add_special_tokens=False)[:32]
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.types:
                path = Path(tmp) / f"model-{kind}.gguf"
                start = time.perf_counter()
                export_gguf_command(ExportGgufOptions(model=spec, out=str(path), type=kind))
                export_seconds = time.perf_counter() - start
                llm = Llama(model_path=str(path), n_ctx=CONTEXT, n_batch=CONTEXT, n_threads=THREADS,
                            logits_all=True, verbose=False)
                nll, scored, seconds = llama_cpp_nll(llm, ids)
                rows.append({"model": spec, "type": kind, "characters": len(text), "tokens_scored": scored,
                             "bits_per_char": round(nll / math.log(2) / len(text), 4),
                             "megabytes": round(path.stat().st_size / 1e6, 1),
                             "prompt_tokens_per_s": round(scored / seconds, 1),
                             "generation_tokens_per_s": round(generation_speed(llm, prompt), 1),
                             "export_seconds": round(export_seconds, 1)})
                print(json.dumps(rows[-1]), flush=True)
                llm.close()
    print("\n| model | type | bits per char | MB | prompt tokens/s | generation tokens/s |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['type']} | {r['bits_per_char']} | {r['megabytes'] or ''} | "
              f"{r['prompt_tokens_per_s']} | {r['generation_tokens_per_s'] or ''} |")
    args.out.write_text(json.dumps({"text": args.text, "lang": args.lang, "max_chars": args.max_chars,
                                    "context": CONTEXT, "stride": STRIDE, "threads": THREADS, "rows": rows},
                                   indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
