"""The block cache at scale: build throughput on a corpus of --gb gigabytes against the bare tokenizer, at 1 and 2
worker processes, with peak memory and disk use; reading the same records as Parquet, JSON Lines and .jsonl.zst;
and the time to the first training step on a cache that is already built.

    pip install 'langadapt[corpus]'
    PYTHONPATH=src python benchmarks/bench_cache_scale.py --gb 2 --json benchmarks/bench_cache_scale.json

The corpus (written once under --work): every record of ../shared/data's Tibet Times news and Tibetan essays,
ChnSentiCorp hotel reviews (Chinese) and KorNLI sentence pairs (Korean), read with langadapt's reader,
then cycled (each pass in a new seeded order) into JSON Lines {"text": ...} until --gb gigabytes: seven
files of --gb/16 each and one of half of it, so that one big file has to be cut into parts. Tokenizer:
SmolLM2's (byte-level BPE, 49,152 tokens).

- bare tokenizer: `encode_batch_fast` of the tokenizer itself (its own threads) on the same records in
  batches of 512, timed around the calls only (reading excluded); with --baselines all, also with the ids
  read out into Python lists, and `encode_batch` (with offsets);
- cache build: `build_token_cache` (read, normalise, hash, tokenise, write) in a fresh child process per
  worker count, timed whole; peak RSS is the largest of the process and its workers (ru_maxrss). MB/s
  count the records' text (UTF-8, one newline each), as the tokenizer's do;
- the tokenizer alone again after each build: a build's cost is over the mean of the tokenizer's runs just
  before and just after it (the with-ids and `encode_batch` baselines run before the first build only);
- reading: `iter_texts` characters/s over the same first --read-mb megabytes as .jsonl, .parquet and .jsonl.zst;
- first step: `langadapt pretrain --max-steps 1` on the corpus whose cache is built, wall time to the end,
  and the seconds its `load_blocks` took.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ["bo/news-tibettimes-2016", "bo/literature-tibetcm", "zh/reviews-chnsenticorp", "ko/kornli"]


def source_records() -> list[str]:
    from langadapt.corpus import iter_texts

    return [t for s in SOURCES for t in iter_texts([DATA / s])]


def write_corpus(folder: Path, gb: float, seed: int = 0) -> list[Path]:
    """Seven files of gb/16 and one of gb/2 GB of JSON Lines, cycling through the source records."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [int(gb * 2**30 / 16)] * 7 + [int(gb * 2**30 / 2)]
    paths = [folder / f"part-{i}.jsonl" for i in range(7)] + [folder / "big.jsonl"]
    if all(p.exists() and p.stat().st_size >= s for p, s in zip(paths, sizes)):
        return paths
    records, rng = source_records(), random.Random(seed)
    lines = iter(())
    for path, size in zip(paths, sizes):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            written = 0
            while written < size:
                line = next(lines, None)
                if line is None:
                    rng.shuffle(records)
                    lines = iter([(json.dumps({"text": r}, ensure_ascii=False) + "\n").encode() for r in records])
                    continue
                out.write(line)
                written += len(line)
        tmp.replace(path)
    return paths


def bare_tokenizer(paths: list[Path], all_baselines: bool) -> dict:
    """MB/s of the tokenizer alone on the records of `paths`: `encode_batch_fast`; with `all_baselines`, also
    with the ids read out (`[e.ids for e in ...]`, what any user of the tokenizer pays) and `encode_batch`."""
    from langadapt.corpus import iter_texts
    from langadapt.tokenizer.load import load_tokenizer

    backend = load_tokenizer("smollm2-135m").backend_tokenizer
    seconds = {"encode_batch_fast": 0.0}
    if all_baselines:
        seconds.update({"encode_batch_fast_and_ids": 0.0, "encode_batch": 0.0})
    size, batch = 0, []

    def run():
        start = time.perf_counter()
        encodings = backend.encode_batch_fast(batch, add_special_tokens=False)
        seconds["encode_batch_fast"] += time.perf_counter() - start
        if all_baselines:
            [e.ids for e in encodings]
            seconds["encode_batch_fast_and_ids"] += time.perf_counter() - start
            start = time.perf_counter()
            backend.encode_batch(batch, add_special_tokens=False)
            seconds["encode_batch"] += time.perf_counter() - start

    for text in iter_texts(paths):
        batch.append(text)
        size += len(text.encode("utf-8")) + 1
        if len(batch) == 512:
            run()
            batch = []
    if batch:
        run()
    return {"mb": round(size / 1e6, 1), **{name: {"seconds": round(t, 1), "mb_per_second": round(size / 1e6 / t, 2)}
                                            for name, t in seconds.items()}}


def build_once(paths: list[str], cache: str, workers: int) -> None:
    """Child process: build the cache and print its figures as JSON."""
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, build_token_cache

    tok = load_tokenizer("smollm2-135m")
    start = time.perf_counter()
    bins = build_token_cache(tok, CorpusSpec(paths), cache, progress=False, workers=workers)
    seconds = time.perf_counter() - start
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": seconds, "files": len(bins), "peak_rss_gb": peak / 2**20,
                      "disk_gb": sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 2**30}))


def reading(paths: list[Path], work: Path, mb: int) -> dict:
    """Characters/s reading the same records as .jsonl, .parquet and .jsonl.zst."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from langadapt.corpus import iter_texts

    sample = work / "sample.jsonl"
    if not sample.exists():
        with open(paths[0], "rb") as f, open(sample, "wb") as out:
            out.write(f.read(mb << 20).rsplit(b"\n", 1)[0] + b"\n")
        texts = [json.loads(line)["text"] for line in sample.read_text(encoding="utf-8").splitlines()]
        pq.write_table(pa.table({"text": texts}), work / "sample.parquet", row_group_size=65536)
        with open(sample, "rb") as f, open(work / "sample.jsonl.zst", "wb") as out:
            zstandard.ZstdCompressor(level=3).copy_stream(f, out)
    out = {}
    for name in ("sample.jsonl", "sample.parquet", "sample.jsonl.zst"):
        start = time.perf_counter()
        chars = sum(len(t) for t in iter_texts([work / name]))
        seconds = time.perf_counter() - start
        out[name] = {"characters": chars, "mb_on_disk": round((work / name).stat().st_size / 1e6, 1),
                     "chars_per_second": round(chars / seconds)}
        print(name, out[name], flush=True)
    return out


def first_step(corpus: Path, cache: Path, work: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "langadapt.cli", "pretrain", "--model", "smollm2-135m", "--corpus",
                           str(corpus), "--cache-dir", str(cache), "--out", str(work / "first-step"), "--overwrite",
                           "--max-steps", "1", "--block-size", "256", "--batch-size", "1", "--eval-steps", "0",
                           "--save-steps", "100", "--progress", "false", "--stage", "lora"],
                          check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    return {"seconds_to_end_of_step_1": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--read-mb", type=int, default=64)
    ap.add_argument("--work", default="/tmp/cache-scale")
    ap.add_argument("--baselines", choices=("fast", "all"), default="fast",
                    help="fast: encode_batch_fast alone; all: also with the ids read out, and encode_batch")
    ap.add_argument("--json", default="benchmarks/bench_cache_scale.json")
    ap.add_argument("--build-once", nargs=3, metavar=("PATHS_JSON", "CACHE", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_once:
        build_once(json.loads(args.build_once[0]), args.build_once[1], int(args.build_once[2]))
        return

    work = Path(args.work)
    paths = write_corpus(work / "corpus", args.gb)
    result = {"gb": args.gb, "corpus_bytes": sum(p.stat().st_size for p in paths), "files": len(paths),
              "cpu_cores": os.cpu_count(), "load_average_before": os.getloadavg()}
    result["reading"] = reading(paths, work, args.read_mb)
    # The tokenizer alone before, between and after the two builds: the machine's speed drifts by up to 20%
    # over half an hour, so each build's cost is taken against the mean of the runs on either side of it.
    result["bare_tokenizer"] = [bare_tokenizer(paths, args.baselines == "all")]
    print("bare", result["bare_tokenizer"][-1], flush=True)
    builds = {}
    for workers in (1, 2):
        cache = work / f"cache-{workers}"
        shutil.rmtree(cache, ignore_errors=True)
        done = subprocess.run([sys.executable, __file__, "--build-once", json.dumps([str(p) for p in paths]),
                               str(cache), str(workers)], capture_output=True, text=True, check=True)
        builds[workers] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"workers {workers}", builds[workers], flush=True)
        result["bare_tokenizer"].append(bare_tokenizer(paths, False))
        print("bare", result["bare_tokenizer"][-1], flush=True)
    text_mb = result["bare_tokenizer"][0]["mb"]
    for workers, figures in builds.items():
        around = result["bare_tokenizer"][workers - 1:workers + 1]
        bare = {name: sum(run[name]["seconds"] for run in around if name in run)
                / sum(name in run for run in around) for name in around[0] if name != "mb"}
        result[f"cache_workers_{workers}"] = {
            "seconds": round(figures["seconds"], 1), "mb_per_second": round(text_mb / figures["seconds"], 2),
            "mb_per_second_per_worker": round(text_mb / figures["seconds"] / workers, 2),
            "cost_over_bare_tokenizer": {name: round(figures["seconds"] / seconds - 1, 3)
                                         for name, seconds in bare.items()},
            "cache_files": figures["files"], "peak_rss_gb": round(figures["peak_rss_gb"], 2),
            "disk_gb": round(figures["disk_gb"], 2)}
        print(f"workers {workers}", result[f"cache_workers_{workers}"], flush=True)
    result["first_step_on_built_cache"] = first_step(work / "corpus", work / "cache-2", work)
    print("first step", result["first_step_on_built_cache"], flush=True)
    result["load_average_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
