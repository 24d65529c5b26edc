"""Benchmark: instruction tuning, packed rows vs padded examples, side by side in one run.

    .venv/bin/python benchmarks/bench_sft.py [--data ../shared/data] [--examples 96] [--max-seq-len 512]
        [--batch-size 8] [--out FILE]

`langadapt sft` (stage lora, r 8 on q,k,v,o,gate,up,down + embeddings + LM head, fp32 on CPU,
template auto = ChatML) on SmolLM2-135M for one epoch over the same `--examples` short pCLUE
prompt-format examples (zh/prompts-pclue; without ../shared/data, the instruction pairs derived
from the embedded Korean corpus): (a) `pack: true` (rows of max_seq_len, attention kept within
each example), (b) `pack: false` (each example padded to the longest in its batch). Reported: wall
time of the epoch, optimizer steps, answer tokens trained per second, and the speed-up of (a).

Prints a Markdown table and writes JSON (default: bench_sft.json next to this file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=96)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).with_name("bench_sft.json")))
    args = p.parse_args()

    from langadapt.train.instructions import read_conversations
    from langadapt.train.recipe import SftRecipe, recipe_from_dict
    from langadapt.train.sft import sft

    with tempfile.TemporaryDirectory() as tmp:
        pclue = Path(args.data) / "zh" / "prompts-pclue"
        if pclue.is_dir():
            convs, _ = read_conversations([pclue])
            source = "zh/prompts-pclue"
        else:
            from langadapt.corpus.embedded import embedded_instructions

            path = Path(tmp) / "ko.json"
            path.write_text(json.dumps(embedded_instructions(), ensure_ascii=False), encoding="utf-8")
            convs, _ = read_conversations([path])
            source = "embedded:ko-instructions"
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n"
                                for c in convs[:args.examples]), encoding="utf-8")
        rows = {}
        for label, pack in (("packed rows", True), ("padded examples", False)):
            recipe = recipe_from_dict(dict(
                model=args.model, data=[str(data)], out=str(Path(tmp) / label.replace(" ", "-")), template="auto",
                max_seq_len=args.max_seq_len, batch_size=args.batch_size, grad_accum=1, epochs=1, lora_r=8,
                lora_alpha=16, heldout_share=0.0, pack=pack, eval_steps=0, save_steps=10_000, logging_steps=1000,
                progress=False, learning_rate=1e-4), cls=SftRecipe)
            summary, _ = sft(recipe)
            seconds = summary["seconds"]
            rows[label] = {"seconds": seconds, "steps": summary["steps"], "rows": summary["packed_rows"],
                           "answer_tokens": summary["train_examples"]["label_tokens"],
                           "tokens": summary["train_examples"]["tokens"],
                           "answer_tokens_per_s": round(summary["train_examples"]["label_tokens"] / seconds, 1)}
    speedup = rows["padded examples"]["seconds"] / rows["packed rows"]["seconds"]
    print(f"\nSmolLM2-135M, sft stage lora r 8, {args.examples} examples of {source}, max_seq_len "
          f"{args.max_seq_len}, batch {args.batch_size}, 1 epoch, CPU fp32\n")
    print("| data layout | optimizer steps | seconds (whole sft run) | answer tokens/s |\n|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['steps']} | {r['seconds']} | {r['answer_tokens_per_s']} |")
    print(f"\npacking speed-up: {speedup:.2f}x")
    Path(args.out).write_text(json.dumps({"source": source, "args": vars(args), "rows": rows,
                                          "speedup": round(speedup, 3)}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
