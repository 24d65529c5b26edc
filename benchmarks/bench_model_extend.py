"""Benchmark: extend SmolLM2 for Tibetan and measure bits per character before any training.

    .venv/bin/python benchmarks/bench_model_extend.py [--data ../shared/data] [--max-chars 20000]
        [--tokenizer DIR | --vocab-size 8000] [--context 1024 --stride 512] [--out FILE]

1. Tokenizer: unless --tokenizer is given, `langadapt tokenizer merge --base smollm2-135m
   --corpus bo/news-tibettimes-2016 --lang bo --vocab-size N` (training text disjoint from the
   evaluation text).
2. `langadapt model extend` with each init (mean, random, hf-default), each in a fresh
   process: wall time and peak resident memory (ru_maxrss of that process).
3. Bits per character / byte (sliding window, `langadapt.eval.bpc`) of the base model and of
   each extended model on the first --max-chars characters of bo/dev-conllu (held out), with
   tokens per character and tokens/s; and, as a reference, the bits per char of a uniform
   guess over the model's vocabulary at its tokens per character (log2 V x tokens/char).
4. Leakage: bits per char on --english-chars characters of English news
   (ko/news-parallel/northkorean-english.dev.en). The extension leaves English tokenisation
   and the old logits unchanged, so any change here is probability mass the new rows take.

Prints a Markdown table and writes the figures as JSON (default: bench_model_extend.json next
to this file). The CPU may be shared: tokens/s then understates the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INITS = ["mean", "random", "hf-default"]


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd` in a fresh process; return its wall time and peak resident memory (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "stdout": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tokenizer", type=Path, default=None, help="an extended tokenizer (skip the merge step)")
    ap.add_argument("--vocab-size", type=int, default=8000, help="new Tibetan tokens for the merge step")
    ap.add_argument("--max-chars", type=int, default=20000)
    ap.add_argument("--english-chars", type=int, default=2000, help="0 skips the English leakage check")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--inits", nargs="+", default=INITS, choices=INITS)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--keep", action="store_true", help="keep the extended models (else the work dir is removed)")
    args = ap.parse_args()

    import torch

    from langadapt.corpus import read_text
    from langadapt.model.score import bpc_of_text
    from langadapt.model.load import load_model
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer

    cli = [sys.executable, "-m", "langadapt.cli"]
    work = Path(tempfile.mkdtemp(prefix="bench-extend-"))
    results: dict = {"base": args.base, "text": "bo/dev-conllu", "max_chars": args.max_chars,
                     "context": args.context, "stride": args.stride, "threads": torch.get_num_threads()}

    tok_dir = args.tokenizer
    if tok_dir is None:
        tok_dir = work / "tok"
        m = run_measured(cli + ["tokenizer", "merge", "--base", args.base, "--corpus",
                                str(args.data / "bo" / "news-tibettimes-2016"), "--lang", "bo",
                                "--vocab-size", str(args.vocab_size), "--out", str(tok_dir)])
        results["merge"] = {"seconds": m["seconds"], "peak_rss_mib": m["peak_rss_mib"]}
        print(f"tokenizer merge: {m['seconds']} s, peak {m['peak_rss_mib']} MiB", file=sys.stderr)
    results["tokenizer"] = str(tok_dir)

    models = {"base": str(resolve_model_source(args.base))}
    results["extend"] = {}
    for init in args.inits:
        out = work / f"ext-{init}"
        m = run_measured(cli + ["model", "extend", "--base", args.base, "--tokenizer", str(tok_dir),
                                "--init", init, "--out", str(out)])
        results["extend"][init] = {"seconds": m["seconds"], "peak_rss_mib": m["peak_rss_mib"],
                                   **json.loads(m["stdout"])}
        models[init] = str(out)
        print(f"extend --init {init}: {m['seconds']} s, peak {m['peak_rss_mib']} MiB", file=sys.stderr)

    text = read_text([args.data / "bo" / "dev-conllu"], "bo", max_chars=args.max_chars)
    english = read_text([args.data / "ko" / "news-parallel" / "northkorean-english.dev.en"], "en",
                        max_chars=args.english_chars) if args.english_chars else None
    results["bpc"], results["english_bpc"] = {}, {}
    for name, path in models.items():
        print(f"scoring {name}", file=sys.stderr)
        model, tok = load_model(path, dtype="float32").eval(), load_tokenizer(path)
        r = bpc_of_text(model, tok, text, context=args.context, stride=args.stride)
        vocab = model.get_input_embeddings().weight.shape[0]
        r["uniform_bits_per_char"] = round(math.log2(vocab) * r["tokens_per_char"], 4)
        results["bpc"][name] = r
        if english:
            results["english_bpc"][name] = bpc_of_text(model, tok, english, context=args.context, stride=args.stride)
        del model

    args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\n{len(text):,} characters of bo/dev-conllu, context {args.context}, stride {args.stride}, "
          f"fp32, {results['threads']} threads\n")
    print("| model | init | tokens/char | bits/char | bits/byte | ppl/token | uniform bits/char | tokens/s "
          "| English bits/char |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results["bpc"].items():
        label = "SmolLM2 base" if name == "base" else "extended"
        en = results["english_bpc"].get(name, {}).get("bits_per_char", float("nan"))
        print(f"| {label} | {'-' if name == 'base' else name} | {r['tokens_per_char']:.3f} | {r['bits_per_char']:.3f} "
              f"| {r['bits_per_byte']:.3f} | {r['perplexity']:.1f} | {r['uniform_bits_per_char']:.2f} "
              f"| {r['tokens_per_second']:.0f} | {en:.4f} |")
    print("\n| extend init | seconds | peak RSS MiB | vocab |")
    print("|---|---:|---:|---:|")
    for init, r in results["extend"].items():
        print(f"| {init} | {r['seconds']} | {r['peak_rss_mib']} | {r['old_vocab_size']} -> {r['new_vocab_size']} |")
    if args.keep:
        print(f"\nwrote {args.out}; models kept under {work}", file=sys.stderr)
    else:
        shutil.rmtree(work)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
