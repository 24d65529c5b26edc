"""The memory plan (`langadapt.train.memory`, printed by `run --dry-run`) against the measured peak
memory of real `langadapt pretrain` runs of SmolLM2-135M on this CPU.

    .venv/bin/python benchmarks/bench_memory_plan.py [--json benchmarks/bench_memory_plan.json]

Each case runs `langadapt pretrain` on the embedded Korean corpus (2 optimizer steps, no held-out
text, no checkpoint) in a fresh process and reads the process's peak resident memory
(`ru_maxrss`), with glibc's mmap threshold fixed (`--mmap-threshold`) so that freed tensors leave
the resident set as they do a GPU allocator's count. The baseline is a process that imports the same modules and loads the tokenizer and
the block cache, without the model: measured = peak - baseline, which leaves out the runtime as
the plan does. The plan reads only the model's config.json. On a GPU, `benchmarks/gpu_check.py`
compares the plan with `torch.cuda.max_memory_allocated` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {  # name: pretrain options beyond the common ones
    "lora, block 512 x 4, no checkpointing": dict(stage="lora", block_size=512, batch_size=4,
                                                 gradient_checkpointing=False),
    "lora, block 512 x 4, checkpointing": dict(stage="lora", block_size=512, batch_size=4,
                                              gradient_checkpointing=True),
    "lora, block 256 x 2, no checkpointing": dict(stage="lora", block_size=256, batch_size=2,
                                                 gradient_checkpointing=False),
    "full, block 512 x 4, no checkpointing": dict(stage="full", block_size=512, batch_size=4,
                                                 gradient_checkpointing=False),
    "embeddings, block 512 x 4": dict(stage="embeddings", block_size=512, batch_size=4, gradient_checkpointing=False),
    "QLoRA nf4, block 512 x 4, no checkpointing": dict(stage="lora", quantization="nf4", block_size=512, batch_size=4,
                                                      gradient_checkpointing=False),
}

CHILD = r"""
import json, resource, sys
mode, argv = sys.argv[1], json.loads(sys.argv[2])
from langadapt.cli import main
if mode == "baseline":
    import peft, transformers  # what pretrain imports, and its data: tokenizer and block cache
    import langadapt.train.pretrain
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, load_blocks
    tok = load_tokenizer("smollm2-135m")
    size = int(argv[argv.index("--block-size") + 1])
    load_blocks(tok, CorpusSpec(["embedded:ko-train"]), size, argv[argv.index("--cache-dir") + 1], progress=False)
else:
    assert main(argv) == 0
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak_gib(mode: str, argv: list[str], mmap_threshold: int | None) -> float:
    env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else {}))
    out = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(argv)], capture_output=True, text=True,
                         check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_kib"] / 1024 ** 2


def _planned(options) -> dict:
    from langadapt.sources import resolve_model_source
    from langadapt.train.memory import ModelShape, memory_plan, training_shape

    config = json.loads((Path(resolve_model_source("smollm2-135m")) / "config.json").read_text())
    return memory_plan(ModelShape.from_config(config), training_shape(options, on_gpu=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "bench_memory_plan.json"))
    p.add_argument("--only", default="", help="run only the cases whose name holds this text")
    p.add_argument("--mmap-threshold", type=int, default=65536,
                   help="glibc's MALLOC_MMAP_THRESHOLD_ for the measured processes (0: glibc's default). With the "
                        "default, glibc raises its threshold as large blocks are freed and keeps later ones in its "
                        "heap, so the peak resident memory overstates the peak of live tensors; a fixed threshold "
                        "gives large tensors back to the system when they are freed")
    args = p.parse_args()
    from langadapt.options import to_argv
    from langadapt.train.recipe import PretrainOptions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            if args.only not in name:
                continue
            options = PretrainOptions(model="smollm2-135m", corpus=["embedded:ko-train"], out=f"{tmp}/{len(rows)}",
                                      max_steps=2, eval_steps=0, save_steps=100, keep_checkpoints=False,
                                      progress=False, cache_dir=f"{tmp}/cache", **case)
            argv = ["pretrain", *to_argv(options)]
            base = _peak_gib("baseline", argv, args.mmap_threshold)
            peak = _peak_gib("train", argv, args.mmap_threshold)
            plan = _planned(options)
            measured = peak - base
            rows.append({"case": name, "baseline_gib": round(base, 3), "peak_gib": round(peak, 3),
                         "measured_gib": round(measured, 3), "planned_gib": plan["total"],
                         "plan": {k: plan[k] for k in ("weights", "trainable", "optimizer", "activations")},
                         "error_pct": round(100 * (plan["total"] - measured) / measured, 1)})
            print(f"{name:<40} measured {measured:6.2f} GiB (peak {peak:.2f} - baseline {base:.2f})   planned "
                  f"{plan['total']:6.2f}   error {rows[-1]['error_pct']:+.1f}%", flush=True)
    Path(args.json).write_text(json.dumps({"mmap_threshold": args.mmap_threshold, "cases": rows}, indent=1) + "\n",
                               encoding="utf-8")


if __name__ == "__main__":
    main()
