"""Benchmark `langadapt tokenizer report` and `tokenizer prune` on real Tibetan text.

    .venv/bin/python benchmarks/bench_tokenizer_report.py [--data ../shared/data] [--sizes-mb 10 50]

1. Builds Tibetan corpora of about 10 and 50 MB in a temporary directory by repeating the
   files of bo/news-tibettimes-2016 and bo/literature-tibetcm (about 14 MB together).
2. Runs `langadapt tokenizer report` with Llama-2's tokenizer on each, in a fresh process,
   and reports wall time, tokens per second (whole command, and the tokenizer's encode calls
   alone) and the peak resident memory of the process: it should stay flat (streaming).
3. Runs `langadapt tokenizer prune` of Llama-2 on Tibetan (the same two folders) plus English
   (ko/news-parallel/northkorean-english.dev.en) and reports the vocabulary before and after,
   for --min-count 1 and 5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIBETAN = ["bo/news-tibettimes-2016", "bo/literature-tibetcm"]
ENGLISH = "ko/news-parallel/northkorean-english.dev.en"


def build_corpus(data: Path, target_mb: int, out_dir: Path) -> int:
    """Repeat the Tibetan files into ~5 MB text files under `out_dir` until `target_mb` MB; return bytes written."""
    sources = [p for d in TIBETAN for p in sorted((data / d).rglob("*.txt"))]
    blobs = [p.read_bytes() for p in sources]
    out_dir.mkdir(parents=True)
    target = target_mb * 1_000_000
    written, part, buf = 0, 0, bytearray()
    while written + len(buf) < target:
        for blob in blobs:
            buf += blob if blob.endswith(b"\n") else blob + b"\n"
            if len(buf) >= 5_000_000 or written + len(buf) >= target:
                (out_dir / f"part{part:03d}.txt").write_bytes(buf)
                written, part, buf = written + len(buf), part + 1, bytearray()
                if written >= target:
                    break
    if buf:
        (out_dir / f"part{part:03d}.txt").write_bytes(buf)
        written += len(buf)
    return written


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run `cmd`; return (wall seconds, peak RSS in MB of that process, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{stdout}")
    return wall, usage.ru_maxrss // 1024, stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 50])
    args = ap.parse_args()
    llama2 = args.data / "tokenizers" / "llama2" / "tokenizer.model"
    cli = [sys.executable, "-m", "langadapt.cli"]

    with tempfile.TemporaryDirectory(prefix="bench-tok-") as tmp:
        tmp = Path(tmp)
        print("## report: Llama-2 on repeated Tibetan news + literature\n")
        print("| corpus | records | chars | tokens | wall s | tokens/s (command) | tokens/s (encode) | peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for mb in args.sizes_mb:
            size = build_corpus(args.data, mb, tmp / f"bo-{mb}mb")
            out_json = tmp / f"report-{mb}.json"
            wall, rss, _ = run_measured(cli + ["tokenizer", "report", "--tokenizer", str(llama2), "--corpus",
                                               str(tmp / f"bo-{mb}mb"), "--lang", "bo", "--json", str(out_json)])
            r = json.loads(out_json.read_text())
            t = r["tokenizers"][0]
            print(f"| {size / 1e6:.1f} MB | {r['corpus']['records']:,} | {r['corpus']['chars']:,} | {t['tokens']:,} | "
                  f"{wall:.1f} | {t['tokens'] / wall:,.0f} | {t['tokens_per_second']:,} | {rss:,} |")
        wall, rss, _ = run_measured([sys.executable, "-c", "import transformers, tokenizers, numpy, matplotlib"])
        print(f"\n(baseline: a process that only imports transformers, tokenizers, numpy, matplotlib: "
              f"peak RSS {rss:,} MB)\n")

        print("## prune: Llama-2 to Tibetan + English\n")
        print("| corpus | min count | vocab before | vocab after | kept by category | merges before → after | wall s |")
        print("|---|---:|---:|---:|---|---|---:|")
        corpus = [str(args.data / d) for d in TIBETAN] + [str(args.data / ENGLISH)]
        for k in (1, 5):
            out = tmp / f"pruned-{k}"
            wall, _, _ = run_measured(cli + ["tokenizer", "prune", "--base", str(llama2), "--corpus", *corpus,
                                             "--lang", "bo", "--min-count", str(k), "--out", str(out)])
            rep = json.loads((out / "prune_report.json").read_text())
            kept = ", ".join(f"{c} {n}" for c, n in rep["kept"].items())
            print(f"| Tibetan news+literature, English news ({rep['corpus']['records']:,} records) | {k} | "
                  f"{rep['old_vocab_size']:,} | {rep['new_vocab_size']:,} | {kept} | "
                  f"{rep['merges']['old']:,} → {rep['merges']['new']:,} | {wall:.1f} |")


if __name__ == "__main__":
    main()
