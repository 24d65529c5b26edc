"""`eval mc` with and without the shared prefix run once (the header and the k shots of a subject, their KV
cache reused for every question), side by side in one run: questions/s at 0 and 5 shots, and the largest
difference between the two paths' log-likelihoods.

    PYTHONPATH=src python benchmarks/bench_eval_mc.py --json benchmarks/bench_eval_mc.json

SmolLM2-135M-Instruct (float32), preset cmmlu, --max-length 2048, the first --limit test questions of CMMLU
agronomy and genetics from ../shared/data (shots from their dev split), as docs/benchmarks.md's evaluation
table. Each configuration is run once after a warm-up; the machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from langadapt.eval.mc import PRESETS, evaluate_mc, load_subjects
from langadapt.model.load import load_model
from langadapt.tokenizer.load import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/zh/mc-cmmlu/test")
    ap.add_argument("--subjects", nargs="+", default=["agronomy", "genetics"])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--json", default="benchmarks/bench_eval_mc.json")
    args = ap.parse_args()

    model = load_model("smollm2-135m", dtype="float32").eval()
    tokenizer = load_tokenizer("smollm2-135m")
    files = [str(Path(args.data) / f"{s}.csv") for s in args.subjects]
    result = {"model": "smollm2-135m", "threads": torch.get_num_threads(), "limit": args.limit,
              "subjects": args.subjects, "load_average_before": os.getloadavg(), "shots": {}}
    evaluate_mc(model, tokenizer, load_subjects(files[:1], 0, 2), PRESETS["cmmlu"], 2048, progress=False)  # warm-up
    for shots in (0, 5):
        subjects = load_subjects(files, shots, args.limit)
        runs = {}
        for reuse in (False, True):
            summary, records = evaluate_mc(model, tokenizer, subjects, PRESETS["cmmlu"], 2048, progress=False,
                                           reuse_prefix=reuse)
            runs[reuse] = (summary, records)
        (plain, plain_records), (reused, reused_records) = runs[False], runs[True]
        result["shots"][str(shots)] = {
            "questions": plain["overall"]["n"],
            "mean_context_tokens": round(sum(r["context_tokens"] for r in plain_records) / len(plain_records)),
            "questions_per_second_whole_prompts": plain["questions_per_second"],
            "questions_per_second_prefix_reused": reused["questions_per_second"],
            "speed_up": round(reused["questions_per_second"] / plain["questions_per_second"], 2),
            "max_abs_loglikelihood_difference": max(abs(a - b) for p, r in zip(plain_records, reused_records)
                                                    for a, b in zip(p["loglikelihoods"], r["loglikelihoods"])),
            "same_predictions": [p["prediction"] for p in plain_records] == [r["prediction"] for r in reused_records],
            "accuracy": plain["overall"]["accuracy"]}
        print(shots, json.dumps(result["shots"][str(shots)]), flush=True)
    result["load_average_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
