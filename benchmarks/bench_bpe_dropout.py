"""Benchmark: tokenising speed of `pretrain --bpe-dropout` (seeded, Python) beside the Rust tokenizer.

    .venv/bin/python benchmarks/bench_bpe_dropout.py --tokenizer DIR [--corpus embedded:ko-train]
        [--lang ko] [--rates 0 0.1 0.2] [--rounds 3] [--json FILE]

Reads the corpus records once, then tokenises them with the tokenizer itself (`tokenizer(texts)`,
what `pretrain` uses without dropout) and with `DropoutSegmenter` at each rate, alternating the
order from round to round. Prints characters/s and tokens/char of each, and checks that rate 0
gives the tokenizer's ids exactly.
"""

from __future__ import annotations

import argparse
import json
import time

from transformers import AutoTokenizer

from langadapt.corpus import ReadingOptions, expand_paths
from langadapt.tokenizer.dropout import DropoutSegmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="tokenizer or model dir (e.g. an extended model)")
    ap.add_argument("--corpus", nargs="+", default=["embedded:ko-train"])
    ap.add_argument("--lang", default="ko")
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    reading = ReadingOptions(lang=args.lang)
    texts = [t for path in expand_paths(args.corpus) for t in reading.iter_texts([path])]
    chars = sum(map(len, texts))
    variants = {"tokenizer (Rust)": lambda: tokenizer(texts, add_special_tokens=False)["input_ids"]}
    for rate in args.rates:
        variants[f"dropout {rate}"] = lambda rate=rate: DropoutSegmenter(tokenizer, rate).seeded(0)(texts)
    seconds = dict.fromkeys(variants, 0.0)
    tokens = {}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            start = time.perf_counter()
            ids = variants[name]()
            seconds[name] += time.perf_counter() - start
            tokens[name] = ids
    reference = tokens["tokenizer (Rust)"]
    print(f"{len(texts):,} records, {chars:,} characters, {args.rounds} rounds")
    print(f"{'variant':<18} {'chars/s':>12} {'x Rust':>8} {'tokens/char':>12}")
    rows = []
    for name in variants:
        speed = chars * args.rounds / seconds[name]
        row = {"variant": name, "chars_per_s": round(speed), "tokens_per_char": round(
            sum(map(len, tokens[name])) / chars, 4), "x_rust": round(speed * seconds["tokenizer (Rust)"] / (
                chars * args.rounds), 4)}
        rows.append(row)
        print(f"{name:<18} {row['chars_per_s']:>12,} {row['x_rust']:>8.3f} {row['tokens_per_char']:>12.4f}")
    if "dropout 0.0" in tokens:
        same = tokens["dropout 0.0"] == reference
        print(f"rate 0 gives the tokenizer's ids exactly: {same}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"records": len(texts), "characters": chars, "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
