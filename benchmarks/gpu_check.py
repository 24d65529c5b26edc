"""What only a GPU can check of training (issue 23), on the embedded model, in a few minutes on one GPU:

    python benchmarks/gpu_check.py [--json benchmarks/gpu_check.json]

1. bf16 LoRA throughput: tokens/s over the steps after the first few, and MFU: model FLOPs per
   token 6 N + 12 L d T (N the weights of every matrix product, the LM head's included; L layers, d
   hidden size, T tokens per block: PaLM's convention, which also counts the weight gradients that
   LoRA leaves out), over the card's dense bf16 peak (`--peak-tflops`, else the card's name).
2. The memory plan (`run --dry-run`'s figures, from config.json alone) against
   `torch.cuda.max_memory_allocated` for LoRA (bf16, with and without gradient checkpointing), full
   and QLoRA nf4, and the saving of QLoRA over LoRA.
3. FSDP (stage full) and DeepSpeed ZeRO-2 (stage lora) through the Trainer: `langadapt pretrain` under
   `accelerate launch` with the config `run` generates for the strategy, on this one GPU: the loss
   falls and the result is saved. ZeRO-2 is skipped where deepspeed is not installed.

Every case is `langadapt pretrain` in a fresh process, so each peak is its own. It needs
`pip install -e '.[train,qlora]'` (and deepspeed for ZeRO-2). `--cpu` runs the same cases on the CPU
with a model of your choice and no memory or sharding figures: it keeps this script working where no
GPU is lent (tests/test_gpu_check.py runs it on a tiny model).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 peak TFLOP/s by a word of the card's name (SXM parts).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}

# name: pretrain options beyond the common ones
MEMORY_CASES = {
    "lora bf16, checkpointing": dict(stage="lora", precision="bf16", gradient_checkpointing=True),
    "lora bf16, no checkpointing": dict(stage="lora", precision="bf16", gradient_checkpointing=False),
    "full bf16, checkpointing": dict(stage="full", precision="bf16", gradient_checkpointing=True,
                                     learning_rate=2e-5),
    "QLoRA nf4 bf16, checkpointing": dict(stage="lora", precision="bf16", quantization="nf4",
                                          gradient_checkpointing=True),
}
SHARDED_CASES = {"fsdp": dict(stage="full", learning_rate=2e-5), "zero2": dict(stage="lora")}


def _options(model: str, out: str, cache: str, case: dict, steps: int, block: int, batch: int):
    from langadapt.train.recipe import PretrainOptions

    return PretrainOptions(model=model, corpus=["embedded:ko-train"], out=out, cache_dir=cache, max_steps=steps,
                           block_size=block, batch_size=batch, eval_steps=0, save_steps=10 * steps,
                           logging_steps=1, keep_checkpoints=False, progress=False, **case)


def child(options_json: str) -> None:
    """One case in this process: train, then print the summary's figures and the GPU's peak memory."""
    import torch

    from langadapt.options import from_mapping
    from langadapt.train.pretrain import pretrain
    from langadapt.train.recipe import PretrainOptions

    summary, _ = pretrain(from_mapping(PretrainOptions, json.loads(options_json), "--child"))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    print(json.dumps({"peak_bytes": peak, "attention": summary["attention"], "steps": summary["steps"]}))


def _run_child(options) -> dict:
    from langadapt.options import to_mapping

    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(to_mapping(options))],
                            check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the case failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def throughput(run: Path, skip: int) -> float:
    """Tokens per second from the step-`skip` log to the last step's (warm-up left out)."""
    steps = [r for r in _log(run) if "loss" in r and "num_input_tokens_seen" in r]
    first, last = steps[min(skip, len(steps) - 2)], steps[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["wall_s"] - first["wall_s"])


def model_flops_per_token(config: dict, block: int) -> float:
    """6 N + 12 L d T: PaLM's model FLOPs of one trained token."""
    from langadapt.train.memory import ModelShape

    shape = ModelShape.from_config(config)
    matmul_params = shape.layers * shape.layer_linear_params + shape.vocab * shape.hidden
    return 6 * matmul_params + 12 * shape.layers * shape.hidden * block


def planned(options, config: dict, on_gpu: bool) -> dict:
    from langadapt.train.memory import ModelShape, memory_plan, training_shape

    return memory_plan(ModelShape.from_config(config), training_shape(options, on_gpu=on_gpu))


def sharded(strategy: str, options, tmp: Path) -> dict:
    """`langadapt pretrain` under `accelerate launch` with the config `run` generates for `strategy`, one process."""
    import yaml

    from langadapt.options import to_argv
    from langadapt.train.launch import DistributedOptions, accelerate_config

    config = tmp / f"accelerate-{strategy}.yaml"
    config.write_text(yaml.safe_dump(accelerate_config(DistributedOptions(strategy=strategy), 1, "bf16")))
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "-m", "langadapt.cli", "pretrain", *to_argv(options)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        return {"ok": False, "error": result.stderr[-3000:]}
    losses = [r["loss"] for r in _log(Path(options.out)) if "loss" in r]
    saved = Path(options.out) / ("model" if options.stage == "full" else "adapter")
    return {"ok": losses[-1] < losses[0] and saved.is_dir(), "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4), "saved": saved.is_dir()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: from its name)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU: throughput only (fp32), no memory or "
                                                      "sharding figures; checks the script itself")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    import torch

    from langadapt.sources import resolve_model_source

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        sys.exit("gpu_check: no GPU is visible; --cpu checks the script on the CPU")
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the children too
    card = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in card), None)
    config = json.loads((Path(resolve_model_source(args.model)) / "config.json").read_text())
    figures: dict = {"device": card, "model": args.model, "steps": args.steps, "block_size": args.block_size,
                     "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def options(name: str, case: dict):
            if not cuda:
                case = {**case, "precision": "fp32"}
            return _options(args.model, str(tmp / name), str(tmp / "cache"), case, args.steps, args.block_size,
                            args.batch_size)

        first = options("throughput", MEMORY_CASES["lora bf16, checkpointing"])
        found = _run_child(first)
        rate = throughput(Path(first.out), skip=max(args.steps // 5, 1))
        mfu = rate * model_flops_per_token(config, args.block_size) / (peak * 1e12) if peak else None
        figures["lora"] = {"tokens_per_s": round(rate, 1), "mfu": round(mfu, 4) if mfu else None,
                           "attention": found["attention"], "peak_tflops": peak}
        print(f"{card}: LoRA ({'bf16' if cuda else 'fp32'}, {found['attention']}) {rate:,.0f} tokens/s"
              + (f", MFU {100 * mfu:.1f}% of {peak:g} TFLOP/s" if mfu else ""), flush=True)

        figures["memory"] = []
        for name, case in MEMORY_CASES.items():
            if not cuda:
                break
            opts = options(name.replace(" ", "_").replace(",", ""), case)
            measured = _run_child(opts)["peak_bytes"] / 1024 ** 3
            plan = planned(opts, config, on_gpu=True)
            error = 100 * (plan["total"] - measured) / measured
            figures["memory"].append({"case": name, "measured_gib": round(measured, 3), "planned_gib": plan["total"],
                                      "error_pct": round(error, 1)})
            print(f"  {name:<32} measured {measured:6.2f} GiB  planned {plan['total']:6.2f}  error {error:+.1f}%",
                  flush=True)
        if figures["memory"]:
            by = {row["case"]: row["measured_gib"] for row in figures["memory"]}
            print(f"  QLoRA nf4 saves {by['lora bf16, checkpointing'] - by['QLoRA nf4 bf16, checkpointing']:.2f} GiB "
                  "over bf16 LoRA (the base's decoder in 4 bits)")
        else:
            print("  memory plan against torch.cuda.max_memory_allocated: needs a GPU (on a CPU: "
                  "benchmarks/bench_memory_plan.py)")

        figures["sharded"] = {}
        for strategy, case in SHARDED_CASES.items():
            if not cuda:
                why = "needs a GPU (accelerate enables FSDP and DeepSpeed on GPUs only)"
            elif strategy == "zero2" and importlib.util.find_spec("deepspeed") is None:
                why = "deepspeed is not installed"
            else:
                why = None
            if why:
                figures["sharded"][strategy] = {"skipped": why}
                print(f"  {strategy}: skipped, {why}")
                continue
            figures["sharded"][strategy] = row = sharded(strategy, options(strategy, case), tmp)
            print(f"  {strategy} through the Trainer, stage {case['stage']}: "
                  + (f"loss {row['first_loss']} -> {row['last_loss']}, saved {row['saved']}" if "first_loss" in row
                     else f"FAILED\n{row['error']}"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
