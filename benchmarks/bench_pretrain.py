"""Benchmark: continued-pretraining throughput (packed blocks vs padded lines) and cache build speed.

    .venv/bin/python benchmarks/bench_pretrain.py [--data ../shared/data] [--model smollm2-135m]
        [--block-size 512] [--batch-size 4] [--steps 6] [--cache-mb 50] [--out FILE]

1. Cache build: a ~`--cache-mb` MB Tibetan corpus (bo/news-tibettimes-2016 and
   bo/literature-tibetcm repeated into files in a temp dir, outside the repo) tokenised into the
   packed-block cache in a fresh process: MB/s and peak resident memory; then the same again
   (the cache is reused: seconds to the first block).
2. Throughput of stage lora (r 64, q,k,v,o,gate,up,down + embeddings + LM head, the recipe's
   gradient checkpointing, fp32 on CPU) on SmolLM2 with its own tokenizer, block 512:
   (a) packed blocks (this project); (b) the seed scripts' SFT-style data: one line
   (paragraph) per example, truncated to the block size, padded to the longest in the batch,
   no packing, padding masked out of the loss. Same model set-up, optimizer and batch size;
   the first step is warm-up and not timed. Reported: trained (non-padding) tokens/s and
   target-language characters/s, and the ratio.

Prints a Markdown table and writes JSON (default: bench_pretrain.json next to this file).
The 2 CPU cores may be shared with other work: absolute figures understate the machine, the
ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CACHE_SNIPPET = """
import json, sys, time
from langadapt.tokenizer.load import load_tokenizer
from langadapt.sources import resolve_model_source
from langadapt.corpus import ReadingOptions
from langadapt.train.data import CorpusSpec, load_blocks
tok = load_tokenizer(str(resolve_model_source(sys.argv[1])))
start = time.perf_counter()
data = load_blocks(tok, CorpusSpec([sys.argv[2]], ReadingOptions(lang="bo")), 512, sys.argv[3], progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, **data.facts()}))
"""


def run_measured(cmd: list[str]) -> dict:
    """Run `cmd` in a fresh process; its JSON stdout plus wall time and peak RSS (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return {"wall_s": round(time.perf_counter() - start, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            **json.loads(out.strip().splitlines()[-1])}


def make_corpus(data: Path, folder: Path, mb: int) -> int:
    """Write ~`mb` MB of Tibetan text into `folder` as 5 MB files; return the bytes written."""
    sources = sorted((data / "bo" / "news-tibettimes-2016").glob("*.txt")) + \
        sorted((data / "bo" / "literature-tibetcm").glob("*"))
    text = "".join(p.read_text(encoding="utf-8") + "\n" for p in sources if p.is_file())
    folder.mkdir(parents=True)
    written, i = 0, 0
    while written < mb * 1_000_000:
        chunk = text.encode("utf-8")[:5_000_000]
        (folder / f"part-{i:03d}.txt").write_bytes(chunk.decode("utf-8", "ignore").encode("utf-8"))
        written += len(chunk)
        text = text[len(text) // 7:] + text[:len(text) // 7]  # rotate so files differ
        i += 1
    return written


class PaddedLines:
    """The baseline's data: one line per example, truncated to block_size (no packing)."""

    def __init__(self, tokenizer, lines: list[str], block_size: int):
        ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
        # Characters a truncated line still holds: its share of the line's tokens (approximately).
        self.items = [(seq[:block_size - 1] + [tokenizer.eos_token_id],
                       round(len(t) * min(1.0, (block_size - 1) / max(len(seq), 1)))) for seq, t in zip(ids, lines)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ids, chars = self.items[i]
        return {"input_ids": ids, "chars": chars}


def pad_collate(pad_id: int):
    import torch

    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = labels[i, :k] = torch.tensor(b["input_ids"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "n_chars": sum(b["chars"] for b in batch)}
    return collate


def throughput(recipe, dataset, collate, count_batch) -> dict:
    """Train `recipe.max_steps` steps; tokens and chars per second over the steps after the first."""
    from transformers import TrainerCallback, set_seed

    from langadapt.model.load import load_model
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.pretrain import PretrainTrainer, prepare_model, training_arguments

    source = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(str(source))
    set_seed(recipe.seed)
    model = prepare_model(load_model(str(source), dtype="float32"), recipe, None)
    counts = {"tokens": 0, "chars": 0}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t0 = time.perf_counter()
                counts.update(tokens=0, chars=0)
            self.t1 = time.perf_counter()

    timer = Timer()
    args = training_arguments(recipe, Path(recipe.out) / "checkpoints", False)
    args.save_strategy = "no"
    trainer = PretrainTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                              processing_class=tokenizer, callbacks=[timer], peft=True, new_rows_only=False,
                              heldout_text="", block_size=recipe.block_size)
    inner = trainer.training_step

    def step(model, inputs, *a, **k):  # count what each step trains on
        t, c = count_batch(inputs)
        counts["tokens"] += t
        counts["chars"] += c
        return inner(model, inputs, *a, **k)

    trainer.training_step = step
    trainer.train()
    seconds = timer.t1 - timer.t0
    # counts were reset at the end of step 1, so they cover steps 2..N (the timed ones)
    return {"timed_steps": recipe.max_steps - 1, "seconds": round(seconds, 2), "tokens": counts["tokens"],
            "chars": counts["chars"], "tokens_per_s": round(counts["tokens"] / seconds, 1),
            "chars_per_s": round(counts["chars"] / seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not timed)")
    ap.add_argument("--cache-mb", type=int, default=50, help="0 skips the cache benchmark")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()

    import torch

    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.corpus import ReadingOptions
    from langadapt.train.data import CorpusSpec, load_blocks
    from langadapt.train.recipe import recipe_from_dict

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    results: dict = {"model": args.model, "threads": torch.get_num_threads(), "block_size": args.block_size}
    try:
        if args.cache_mb:
            corpus = work / "corpus"
            size = make_corpus(args.data, corpus, args.cache_mb)
            cmd = [sys.executable, "-c", CACHE_SNIPPET, args.model, str(corpus), str(work / "cache")]
            first, second = run_measured(cmd), run_measured(cmd)
            results["cache"] = {"corpus_mb": round(size / 1e6, 1), "build": first, "reuse": second,
                                "mb_per_s": round(size / 1e6 / first["seconds"], 2)}
            print(json.dumps(results["cache"], indent=1), file=sys.stderr)

        if not args.skip_throughput:
            news = args.data / "bo" / "news-tibettimes-2016"
            base = dict(model=args.model, corpus=[str(news)], lang="bo", out=str(work / "run"), stage="lora",
                        block_size=args.block_size, batch_size=args.batch_size, max_steps=args.steps,
                        logging_steps=1000, progress=False, cache_dir=str(work / "cache-news"))
            recipe = recipe_from_dict(base, "bench")
            tokenizer = load_tokenizer(str(resolve_model_source(args.model)))
            blocks = load_blocks(tokenizer, CorpusSpec([news], ReadingOptions(lang="bo")), args.block_size, work / "cache-news",
                                 progress=False)
            facts = blocks.facts()
            chars_per_token = facts["characters"] / facts["tokens"]
            packed = throughput(recipe, blocks, None,
                                lambda b: (b["input_ids"].numel(), round(b["input_ids"].numel() * chars_per_token)))
            spec = CorpusSpec([news], ReadingOptions(lang="bo"))
            lines = list(spec.reading.iter_texts(spec.files()))
            padded_data = PaddedLines(tokenizer, lines, args.block_size)
            def count_padded(b):
                return int(b["attention_mask"].sum()), b.pop("n_chars")

            padded = throughput(recipe, padded_data, pad_collate(tokenizer.pad_token_id or tokenizer.eos_token_id),
                                count_padded)
            lengths = sorted(len(ids) for ids, _ in padded_data.items)
            results["throughput"] = {
                "corpus": "bo/news-tibettimes-2016", "chars_per_token": round(chars_per_token, 4),
                "lines": len(lines), "median_line_tokens": lengths[len(lengths) // 2],
                "batch_size": args.batch_size, "gradient_checkpointing": recipe.gradient_checkpointing,
                "packed": packed, "padded_lines": padded,
                "ratio_tokens_per_s": round(packed["tokens_per_s"] / padded["tokens_per_s"], 2),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if "cache" in results:
        c = results["cache"]
        print(f"| cache build | {c['corpus_mb']} MB | {c['build']['seconds']:.1f} s | {c['mb_per_s']} MB/s | "
              f"peak RSS {c['build']['peak_rss_mib']} MiB | reuse {c['reuse']['seconds']:.2f} s |")
    if "throughput" in results:
        t = results["throughput"]
        print("| data | trained tokens/s | Tibetan chars/s |\n|---|---|---|")
        for name in ("packed", "padded_lines"):
            print(f"| {name} | {t[name]['tokens_per_s']} | {t[name]['chars_per_s']} |")
        print(f"ratio packed / padded: {t['ratio_tokens_per_s']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
