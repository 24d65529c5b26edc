"""Issue 5, benchmark 2: what the recipe buys, at the same wall-clock training budget.

(a) SmolLM2 extended with a Tibetan tokenizer (`langadapt model extend --init mean`), then
    `langadapt pretrain` stage embeddings (new rows only) followed by stage lora;
(b) SmolLM2 with its own tokenizer, stage lora only (the KoLlama2 approach).

Both arms train on bo/news-tibettimes-2016 for the same number of training minutes (recipe key
`max_minutes`: time inside training steps; model loading, the block cache, held-out evaluation
and checkpoint saving are not counted; arm (a) splits its budget between its two stages).
Every step is the project's own CLI in a fresh process (`langadapt model extend`, `pretrain`,
`merge`, `eval bpc`), run one after the other, never concurrently. Held-out figure: bits per char
on the first 20,000 characters of bo/dev-conllu, window 1024, stride 512, for every model.

    .venv/bin/python benchmarks/bench_recipe_compare.py --tokenizer /tmp/rr/tok-smollm2-bo \\
        --minutes 15 --work /tmp/recipe-compare
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bo"
LANGADAPT = str(ROOT / ".venv" / "bin" / "langadapt")


def sh(cmd: list[str], log: Path) -> float:
    """Run one CLI step (stdout/stderr to `log`); return its wall seconds."""
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return round(time.time() - start, 1)


def bpc(model: str, work: Path, name: str, max_chars: int) -> dict:
    """`langadapt eval bpc` on the first `max_chars` characters of bo/dev-conllu (window 1024, stride 512)."""
    out = work / f"bpc-{name}.json"
    if not out.is_file():
        sh([LANGADAPT, "eval", "bpc", "--model", model, "--text", str(DATA / "dev-conllu"), "--lang", "bo",
            "--max-chars", str(max_chars), "--context", "1024", "--stride", "512", "--json", str(out)],
           work / f"bpc-{name}.log")
    r = json.loads(out.read_text())
    return {k: r[k] for k in ("bits_per_char", "bits_per_byte", "tokens", "tokens_per_char", "seconds")}


def pretrain(work: Path, name: str, model: str, stage: str, minutes: float, max_steps: int, args, **extra) -> dict:
    """One `langadapt pretrain` run with a wall-clock budget; its summary plus the process wall time."""
    out = work / name
    cmd = [LANGADAPT, "pretrain", "--model", model, "--corpus", str(DATA / "news-tibettimes-2016"),
           "--heldout", str(DATA / "dev-conllu"), "--heldout-max-chars", str(args.curve_chars), "--lang", "bo",
           "--out", str(out), "--overwrite", "--stage", stage, "--block-size", "512",
           "--batch-size", str(args.batch_size), "--grad-accum", "1", "--max-steps", str(max_steps),
           "--max-minutes", str(minutes), "--lr-scheduler", "cosine", "--warmup-ratio", "0.05",
           "--logging-steps", "1", "--save-steps", "100000", "--precision", "fp32", "--progress", "false",
           "--gradient-checkpointing", "false",
           "--cache-dir", str(work / "blocks")]
    for key, value in extra.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    wall = sh(cmd, work / f"{name}.log")
    summary = json.loads((out / "adapter" / "adaptation.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    facts = summary["data"]
    chars_per_token = facts["characters"] / facts["tokens"]
    eval_s = sum(r.get("eval_seconds", 0.0) for r in rows)
    # The Trainer's own train_runtime (model loading and the block cache excluded) minus held-out evaluation.
    train_s = [r for r in rows if "train_runtime" in r and "loss" not in r][-1]["train_runtime"] - eval_s
    return {"stage": stage, "model": model, "budget_minutes": minutes, "max_steps": max_steps,
            "steps": summary["steps"], "stopped_by_max_minutes": summary.get("stopped_by_max_minutes"),
            "tokens_seen": summary["tokens_seen"], "chars_per_token": round(chars_per_token, 4),
            "chars_seen": round(summary["tokens_seen"] * chars_per_token),
            "train_seconds": round(train_s, 1), "eval_seconds_in_run": round(eval_s, 1),
            "tokens_per_s": round(summary["tokens_seen"] / train_s, 1),
            "chars_per_s": round(summary["tokens_seen"] * chars_per_token / train_s, 1),
            "final_lr": next((r["learning_rate"] for r in reversed(rows) if "learning_rate" in r), None),
            "train_loss": summary["train_loss"], "curve_bpc_end": summary["heldout_bpc"],
            "process_seconds": wall, "trainable_parameters": summary["trainable_parameters"],
            "extra": extra, "metrics": rows}


def merge(work: Path, run: str) -> tuple[str, float]:
    """`langadapt merge` of a run's adapter into a model dir."""
    out = work / f"{run}-model"
    seconds = sh([LANGADAPT, "merge", "--adapter", str(work / run / "adapter"), "--out", str(out), "--overwrite"],
                 work / f"{run}-merge.log")
    return str(out), seconds


def curve(run: dict, offset: float = 0.0) -> tuple[list, list, list, list]:
    """(training seconds, loss) and (training seconds, held-out bpc) of a run; evaluation time removed."""
    loss_x, loss_y, bpc_x, bpc_y, eval_so_far = [], [], [], [], 0.0
    for r in run["metrics"]:
        if "eval_bpc" in r:
            eval_so_far += r.get("eval_seconds", 0.0)
            bpc_x.append(offset + r["wall_s"] - eval_so_far)
            bpc_y.append(r["eval_bpc"])
        elif "loss" in r:
            loss_x.append(offset + r["wall_s"] - eval_so_far)
            loss_y.append(r["loss"])
    return loss_x, loss_y, bpc_x, bpc_y


def plot(result: dict, png: Path) -> None:
    """Held-out bpc (in-run set) and training loss against training minutes for both arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    a_emb, a_lora, b = result["runs"]["a_embeddings"], result["runs"]["a_lora"], result["runs"]["b_lora"]
    for run, offset, color, label in ((a_emb, 0.0, "tab:green", "(a) stage embeddings"),
                                      (a_lora, a_emb["train_seconds"], "tab:blue", "(a) stage lora"),
                                      (b, 0.0, "tab:red", "(b) own tokenizer, lora")):
        lx, ly, bx, by = curve(run, offset)
        ax1.plot([x / 60 for x in bx], by, "o-", color=color, label=label)
        # nats per token -> bits per training character, so the two tokenizers share one scale
        ax2.plot([x / 60 for x in lx], [y / math.log(2) / run["chars_per_token"] for y in ly], color=color,
                 alpha=0.8, label=label)
    e = result["bpc"]
    for key, color, label in (("base", "tab:red", "base SmolLM2"), ("a_extended", "tab:green", "extended, untrained"),
                              ("a_after_lora", "tab:blue", "(a) end"), ("b_after_lora", "tab:red", "(b) end")):
        if key in e:
            ax1.axhline(e[key]["bits_per_char"], color=color, ls=":", lw=1)
            ax1.text(0.01, e[key]["bits_per_char"], f"{label}: {e[key]['bits_per_char']:.2f} (first 20k chars, window 1024)",
                     transform=ax1.get_yaxis_transform(), fontsize=7, color=color, va="bottom")
    ax1.set_xlabel("training minutes (evaluation excluded)")
    ax1.set_ylabel("held-out bits per char")
    ax1.set_title(f"bo/dev-conllu: lines = first {result['curve_chars']:,} chars, window 512", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("training minutes (evaluation excluded)")
    ax2.set_ylabel("training loss, bits per training char")
    ax2.set_title("training loss / ln 2 / (chars per token of the corpus)", fontsize=9)
    ax2.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M on Tibetan news, {result['minutes']} training minutes per arm, 2 CPU threads, fp32")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="extended tokenizer dir (from `langadapt tokenizer merge`)")
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per arm")
    p.add_argument("--embeddings-share", type=float, default=1 / 3, help="share of arm (a)'s budget for stage embeddings")
    p.add_argument("--embeddings-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--est-steps-per-minute", type=float, nargs=3, default=[11.0, 8.0, 8.5],
                   metavar=("EMB", "A_LORA", "B_LORA"),
                   help="expected steps per minute, to set max_steps (the cosine horizon); max_minutes stops the run")
    p.add_argument("--eval-every", type=int, nargs=3, default=[12, 20, 32], metavar=("EMB", "A_LORA", "B_LORA"))
    p.add_argument("--curve-chars", type=int, default=5000, help="held-out characters scored during training")
    p.add_argument("--max-chars", type=int, default=20000, help="held-out characters scored before/after")
    p.add_argument("--base-bpc", default=None, help="reuse base SmolLM2's figure from this bench JSON (same text/window)")
    p.add_argument("--work", type=Path, default=Path("/tmp/recipe-compare"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "bench_recipe_compare.json")
    p.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "bench_recipe_compare.png")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from --json and stop")
    args = p.parse_args()
    if args.plot_only:
        return plot(json.loads(args.json.read_text()), args.png)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([sys.executable, *sys.argv]), "minutes": args.minutes,
              "curve_chars": args.curve_chars, "max_chars": args.max_chars, "batch_size": args.batch_size,
              "block_size": 512, "threads": 2, "tokenizer": str(args.tokenizer),
              "tokenizer_record": json.loads((Path(args.tokenizer) / "adaptation.json").read_text()),
              "bpc": {}, "runs": {}, "seconds_outside_budget": {}, "started": time.strftime("%H:%M:%S", time.gmtime())}

    def save() -> None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    # Untimed preparation: the extension (not part of either arm's budget).
    extended = work / "smollm2-bo"
    if not extended.is_dir():
        result["seconds_outside_budget"]["model_extend"] = sh(
            [LANGADAPT, "model", "extend", "--base", "smollm2-135m", "--tokenizer", str(args.tokenizer),
             "--init", "mean", "--out", str(extended)], work / "extend.log")
    if args.base_bpc:
        result["bpc"]["base"] = {**json.loads(Path(args.base_bpc).read_text())["bpc"]["base"], "reused_from": args.base_bpc}
    else:
        result["bpc"]["base"] = bpc("smollm2-135m", work, "base", args.max_chars)
    result["bpc"]["a_extended"] = bpc(str(extended), work, "a-extended", args.max_chars)
    save()

    emb_min = round(args.minutes * args.embeddings_share, 3)
    lora_min = round(args.minutes - emb_min, 3)
    spm = args.est_steps_per_minute
    # Arm (a), stage embeddings: only the new (Tibetan) rows learn, the transformer is frozen.
    result["runs"]["a_embeddings"] = pretrain(
        work, "a-emb", str(extended), "embeddings", emb_min, max(1, round(spm[0] * emb_min)), args,
        new_rows_only="true", learning_rate=args.embeddings_lr, eval_steps=args.eval_every[0])
    a_emb_model, result["seconds_outside_budget"]["merge_a_embeddings"] = merge(work, "a-emb")
    result["bpc"]["a_after_embeddings"] = bpc(a_emb_model, work, "a-after-emb", args.max_chars)
    save()
    # Arm (a), stage lora from the merged stage-1 model; seed 43 so it does not replay stage 1's block order.
    result["runs"]["a_lora"] = pretrain(
        work, "a-lora", a_emb_model, "lora", lora_min, max(1, round(spm[1] * lora_min)), args,
        learning_rate=2e-4, eval_steps=args.eval_every[1], seed=43)
    a_model, result["seconds_outside_budget"]["merge_a_lora"] = merge(work, "a-lora")
    result["bpc"]["a_after_lora"] = bpc(a_model, work, "a-after-lora", args.max_chars)
    save()
    # Arm (b): SmolLM2's own tokenizer, stage lora for the whole budget.
    result["runs"]["b_lora"] = pretrain(
        work, "b-lora", "smollm2-135m", "lora", args.minutes, max(1, round(spm[2] * args.minutes)), args,
        learning_rate=2e-4, eval_steps=args.eval_every[2])
    b_model, result["seconds_outside_budget"]["merge_b_lora"] = merge(work, "b-lora")
    result["bpc"]["b_after_lora"] = bpc(b_model, work, "b-after-lora", args.max_chars)

    a_runs = (result["runs"]["a_embeddings"], result["runs"]["a_lora"])
    result["arms"] = {
        "a": {"tokens_seen": sum(r["tokens_seen"] for r in a_runs), "chars_seen": sum(r["chars_seen"] for r in a_runs),
              "train_seconds": round(sum(r["train_seconds"] for r in a_runs), 1),
              "bpc": result["bpc"]["a_after_lora"]["bits_per_char"]},
        "b": {k: result["runs"]["b_lora"][k] for k in ("tokens_seen", "chars_seen", "train_seconds")}
        | {"bpc": result["bpc"]["b_after_lora"]["bits_per_char"]},
    }
    result["finished"] = time.strftime("%H:%M:%S", time.gmtime())
    save()
    plot(result, args.png)
    print(json.dumps({"bpc": {k: v["bits_per_char"] for k, v in result["bpc"].items()}, "arms": result["arms"]}, indent=1))


if __name__ == "__main__":
    main()
