"""Benchmark: held-out bits per char of an extended model right after `model extend`, per init method.

    .venv/bin/python benchmarks/bench_init.py [--base smollm2-135m] [--tokenizer DIR]
        [--corpus embedded:ko-train] [--heldout embedded:ko-heldout] [--lang ko] [--vocab-size 2000]
        [--inits mean fit distill] [--fit-tokens 65536] [--fit-l2 1 ...] [--distill-tokens 32768]
        [--distill-lr 0.022] [--max-chars 6000] [--context 512] [--stride 256]

Without --tokenizer, the extension is made with `tokenizer merge` on --corpus (the demo's). Each init
extends the base with the same tokenizer, fitting only on --corpus; the held-out text is never fitted.
Prints a table: init, bits per char, seconds of init, and the base model's figure for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--corpus", nargs="+", default=["embedded:ko-train"])
    ap.add_argument("--heldout", nargs="+", default=["embedded:ko-heldout"])
    ap.add_argument("--lang", default="ko")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--inits", nargs="+", default=["mean", "fit"])
    ap.add_argument("--fit-tokens", type=int, default=65536)
    ap.add_argument("--fit-l2", type=float, nargs="+", default=[1.0], help="one fit (and distill) per value")
    ap.add_argument("--distill-tokens", type=int, default=32768)
    ap.add_argument("--distill-lr", type=float, default=0.022, help="relative to the embedding's RMS entry")
    ap.add_argument("--max-chars", type=int, default=6000)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    args = ap.parse_args()

    from langadapt.cli import main as cli
    from langadapt.corpus import ReadingOptions
    from langadapt.corpus import read_text
    from langadapt.model.extend import FITTED, extend_model
    from langadapt.model.load import load_model
    from langadapt.model.score import bpc_of_text
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer

    work = tempfile.mkdtemp(prefix="bench-init-")
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        tokenizer_dir = f"{work}/tokenizer"
        cli(["tokenizer", "merge", "--base", args.base, "--corpus", *args.corpus, "--lang", args.lang,
             "--vocab-size", str(args.vocab_size), "--out", tokenizer_dir])
    source = str(resolve_model_source(args.base))
    base_tok, new_tok = load_tokenizer(source), load_tokenizer(tokenizer_dir)
    heldout = read_text(args.heldout, args.lang, max_chars=args.max_chars)
    sample_chars = 4 * max(args.fit_tokens, args.distill_tokens)
    fit_text = ReadingOptions(lang=args.lang).read_text(args.corpus, max_chars=sample_chars)

    def bpc(model, tok):
        return bpc_of_text(model, tok, heldout, context=args.context, stride=args.stride,
                           progress=False)["bits_per_char"]

    rows = [("base (no extension)", bpc(load_model(source, dtype="float32").eval(), base_tok), 0.0, "")]
    runs = [(init, l2) for init in args.inits for l2 in (args.fit_l2 if init in FITTED else [None])]
    for init, l2 in runs:
        model = load_model(source, dtype="float32").eval()
        start = time.perf_counter()
        report = extend_model(model, base_tok, new_tok, init=init, fit_text=fit_text, fit_tokens=args.fit_tokens,
                              fit_l2=l2 or 0.0, distill_tokens=args.distill_tokens, distill_lr=args.distill_lr)
        seconds = time.perf_counter() - start
        fit, distill = report.get("fit"), report.get("distill")
        note = (f"{fit['sample_tokens']:,}-token sample, loss {fit['loss_before']} -> {fit['loss_after']} "
                f"nats/token" if fit else "")
        if distill:
            note = (f"distill: {distill['sample_tokens']:,} tokens, KL {distill['kl_first_tenth']} -> "
                    f"{distill['kl_last_tenth']} nats, {distill['seconds']} s; fit: {note}")
        rows.append((init if l2 is None else f"{init}, l2 {l2:g}", bpc(model.eval(), new_tok), seconds, note))
        print(rows[-1], flush=True)
    print(f"\n{args.base} + {len(new_tok) - len(base_tok)} tokens ({tokenizer_dir}); held-out {' '.join(args.heldout)}, "
          f"{len(heldout):,} chars, context {args.context}, stride {args.stride}\n")
    print("| init | held-out bits/char | init seconds | note |\n|---|---:|---:|---|")
    for name, value, seconds, note in rows:
        print(f"| {name} | {value:.4f} | {seconds:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
