"""Break-even of a Korean tokenizer extension against the control arm, with learning curves.

Question: SmolLM2-135M already reads Korean through its byte pieces. With LoRA, does an extended
vocabulary (4,000 new Korean tokens, `init: fit`) ever catch up with the control arm (the base
vocabulary, the same LoRA stage, the same number of training tokens), and after how many tokens?
docs/benchmarks.md ("Korean with 13x the text") measured one budget, 18,432 tokens: extension 5.312
bits/char, control 4.598. This benchmark follows both arms to 18k, 74k and 300k tokens in one
`langadapt run` and reports where their learning curves cross (or the extrapolated crossing).

    nice .venv/bin/python benchmarks/bench_break_even.py            # the full run (about 2 h on 2 cores)
    nice .venv/bin/python benchmarks/bench_break_even.py --max-tokens 8192 --curve-points 2 \\
        --vocab-size 300 --fit-tokens 2048 --heldout-chars 1500 --max-minutes 10 --work /tmp/be-smoke \\
        --json /tmp/be-smoke/out.json --png /tmp/be-smoke/out.png     # smoke test: 30 min on loaded cores

What it does:

1. Builds the corpus from `../shared/data/ko` into the work dir (default /tmp/break-even), as
   docs/benchmarks.md describes: training text = the unique sentences of KorNLI's
   `xnli.dev.ko.tsv` (premises and hypotheses), the news of `ko/news-parallel`
   (`northkorean-english.dev.nk` and `korean-english-park.dev.ko` from the park dev tar.gz) and the
   reviews of the 150 NSMC files (`reviews-nsmc/raw/*.json`), one record per line, duplicates
   dropped; held-out = the unique premises of `xnli.test.ko.tsv`. A held-out premise that also
   occurs in the training text is taken out of the training text (one XNLI dev sentence is a
   test premise), which gives docs/benchmarks.md's 3,317 + 1,893 + 9,941 lines, ~648,900
   characters; then no overlap is asserted.
2. Writes `<work>/recipe.yaml`: base smollm2-135m, lang ko, no sft, tokenizer extend
   (`--vocab-size`), model init fit (fit_l2 1, `--fit-tokens`), one LoRA pretraining stage as in
   the demo (block 256, batch 4, lr 3e-4, warmup_ratio 0.05, r 64, alpha 128, no gradient
   checkpointing), `arms: [ext-N]` (the control arm comes with `arms:`), `eval.curve_points`
   held-out scores during pretraining (the first `--heldout-chars` characters, window 256, stride
   128) plus one before the first step, and the final models scored by `eval bpc` (context 512,
   stride 256, the same characters).
3. Runs it in this process (`langadapt.pipeline.run_recipe`; running the same command again
   continues where it stopped: finished steps are skipped, a training step resumes from its
   checkpoint if one was written), then prints a table of the curves, the break-even sentence of
   `report.json` and writes `--json` (default benchmarks/bench_break_even.json) and copies the
   learning-curve plot to `--png` (default benchmarks/bench_break_even.png).

The budget. The curve interval is a whole number of optimizer steps (block 256 x batch 4 = 1,024
tokens a step) and the budget is rounded to `--curve-points` whole intervals, so that the last
curve point is the end of training: 300,000 / 16 -> 18 steps = 18,432 tokens an interval, budget
294,912 tokens; the curve points land on 18,432 (the docs' budget), 73,728 and 294,912 tokens. Each
arm trains on as many of *its own* tokens (`budget: tokens`); the extension's tokens cover more
characters, which the JSON reports (chars seen).

The learning-rate schedule. `--lr-scheduler constant` (the default) keeps the learning rate flat
and has no warmup (transformers' `constant` ignores warmup_ratio), so every curve point is exactly
the model a separate run with that smaller budget would give (same seed, same LoRA init, the same
first blocks in the same order): the 18k and 74k points are comparable to separate shorter runs.
`--lr-scheduler cosine` (the demo's) decays over the whole budget: its earlier points are
mid-schedule models, higher than a finished run of that budget would score (the last point is a
finished run; the docs' 18,432-token figures are cosine over 18 steps). Any other transformers
scheduler name is passed through (e.g. constant_with_warmup, whose warmup is 5% of the whole
budget, so it too differs from shorter runs at the start).

Time. `--max-minutes` caps each training stage's training time (held-out scoring not counted);
the curve then stops where it got, the JSON says so (stopped_by_max_minutes) and the schedule is
cut (with cosine, not annealed). Measured: the smoke command above (8 steps per arm, 30.4 min in
all) trained at 12.8 (extension) and 20.2 (control) tokens/s on this machine's 2 cores, but under
`nice` with five other training jobs on the same cores (load average 8-9), and each held-out
scoring of 1,500 characters took 70-130 s; so it only says how slow a loaded machine is. On idle
cores the project measured 133-145 tokens/s for a similar stage (LoRA r 64 + embeddings + head,
fp32, 2 threads, no gradient checkpointing, blocks of 512 x batch 2; docs/benchmarks.md,
"Pretraining: what the recipe buys").
At ~140 tokens/s the full run is: tokenizer merge (seconds) + model extend with fit over 65,536
tokens (~8 min) + 2 x 294,912 training tokens (~35 min each) + 2 x 17 held-out scorings of 6,000
characters (~15 min together) + 3 `eval bpc` and the tokenizer report (~4 min): ~100 min. The
default cap, 45 min per arm, lets each arm finish at >= 110 tokens/s and keeps the whole run near
2 h; on a loaded machine the cap stops the curves early (at 13-20 tokens/s: 35k-54k tokens).
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import tarfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BLOCK_SIZE, BATCH_SIZE = 256, 4
PER_STEP = BLOCK_SIZE * BATCH_SIZE
TARGETS = (18_000, 74_000, 300_000)  # the budgets the question is about; the nearest curve points are marked


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="full run: nice .venv/bin/python benchmarks/bench_break_even.py; re-running "
                                       "the same command continues an interrupted run (see the module docstring)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="the shared data folder (holds ko/kornli, ko/news-parallel, "
                                                     "ko/reviews-nsmc)")
    p.add_argument("--work", default="/tmp/break-even", help="work dir: corpus files, recipe.yaml, run/ (the "
                                                              "`langadapt run` output); never inside the repo")
    p.add_argument("--max-tokens", type=int, default=300_000,
                   help="training tokens per arm (each arm's own tokens); rounded to --curve-points whole intervals "
                        "of 1,024-token steps so that the last curve point is the end of training")
    p.add_argument("--curve-points", type=int, default=16,
                   help="held-out scores at this many equal intervals of training tokens (plus one before the first "
                        "step); 16 over 300k puts points at 18,432, 73,728 and 294,912")
    p.add_argument("--vocab-size", type=int, default=4000, help="new Korean tokens of the extension arm "
                                                                 "(tokenizer merge on the training text)")
    p.add_argument("--fit-tokens", type=int, default=65536,
                   help="model extend --init fit: tokens of the regression sample for the new output rows "
                        "(65,536 takes ~8 min on 2 cores; lower only for a smoke test)")
    p.add_argument("--lr-scheduler", default="constant",
                   help="learning-rate schedule of the pretraining stage: constant (no warmup; every curve point "
                        "equals a separate run of that budget), cosine (decays over the whole budget: earlier points "
                        "are mid-schedule), or any transformers scheduler name")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate (the demo's)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="pretrain --precision (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--max-minutes", type=float, default=45.0,
                   help="safety cap on each arm's training minutes (held-out scoring not counted; 0: none); the "
                        "default lets both arms finish 295k tokens at >= 110 tokens/s and keeps the whole run near "
                        "2 h on 2 cores")
    p.add_argument("--heldout-chars", type=int, default=6000,
                   help="held-out characters scored, both on the curves (window 256) and by eval bpc (context 512)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "bench_break_even.json"), help="result JSON")
    p.add_argument("--png", default=str(ROOT / "benchmarks" / "bench_break_even.png"),
                   help="copy of the learning-curve plot (run/eval/curves.png)")
    p.add_argument("--dry-run", action="store_true", help="build the corpus and recipe, check every step "
                                                          "(`langadapt run --dry-run`), train nothing")
    args = p.parse_args(argv)
    for name in ("max_tokens", "curve_points", "vocab_size", "heldout_chars"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    work = Path(args.work).resolve()
    if work == ROOT or ROOT in work.parents:
        p.error(f"--work {work} is inside the repository; use a folder outside it (default /tmp/break-even)")
    return args


# ----------------------------------------------------------------------------- corpus

def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _line(text: str) -> str:
    """One record per line: strip, no line breaks inside."""
    return text.replace("\r", " ").replace("\n", " ").strip()


def _tsv_rows(path: Path) -> list[list[str]]:
    """KorNLI TSV rows (sentence1, sentence2, gold_label) without the header; quotes are text, not quoting."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    bad = [r for r in rows if len(r) != 3]
    if bad:
        sys.exit(f"bench_break_even: {path}: {len(bad)} rows without 3 tab-separated fields, e.g. {bad[0]!r}")
    return rows


def build_corpus(data: Path, work: Path) -> dict:
    """train.txt and held.txt under `work` (see the module docstring); return their facts."""
    ko = data / "ko"
    dev = ko / "kornli" / "KorNLI" / "xnli.dev.ko.tsv"
    test = ko / "kornli" / "KorNLI" / "xnli.test.ko.tsv"
    nk = ko / "news-parallel" / "northkorean-english.dev.nk"
    park = ko / "news-parallel" / "korean-english-park.dev.tar.gz"
    reviews = sorted(glob.glob(str(ko / "reviews-nsmc" / "raw" / "*.json")))
    for path in (dev, test, nk, park):
        if not path.is_file():
            sys.exit(f"bench_break_even: {path} is missing (see {data / 'SOURCES.md'})")
    if len(reviews) != 150:
        sys.exit(f"bench_break_even: expected the 150 NSMC review files under {ko / 'reviews-nsmc' / 'raw'}, "
                 f"found {len(reviews)}")

    xnli = [_line(t) for row in _tsv_rows(dev) for t in row[:2]]
    news = [_line(t) for t in nk.read_text(encoding="utf-8").splitlines()]
    with tarfile.open(park) as tar:
        member = tar.extractfile("korean-english-park.dev.ko")
        news += [_line(t) for t in member.read().decode("utf-8").splitlines()]
    nsmc = [_line(r["review"]) for path in reviews for r in json.loads(Path(path).read_text(encoding="utf-8"))]
    heldout = list(dict.fromkeys(t for t in (_line(row[0]) for row in _tsv_rows(test)) if t))

    held_keys = {_nfc(t) for t in heldout}
    seen: set[str] = set()
    sources, removed = {}, []
    train: list[str] = []
    for name, lines in (("xnli_dev_sentences", xnli), ("news_lines", news), ("nsmc_reviews", nsmc)):
        kept = 0
        for text in lines:
            key = _nfc(text)
            if not text or key in seen:
                continue
            seen.add(key)
            if key in held_keys:  # a held-out premise is never trained on
                removed.append(text)
                continue
            train.append(text)
            kept += 1
        sources[name] = kept
    overlap = held_keys & {_nfc(t) for t in train}
    assert not overlap, f"{len(overlap)} held-out premises are in the training text"

    work.mkdir(parents=True, exist_ok=True)
    train_path, held_path = work / "train.txt", work / "held.txt"
    train_path.write_text("".join(t + "\n" for t in train), encoding="utf-8")
    held_path.write_text("".join(t + "\n" for t in heldout), encoding="utf-8")
    return {"train": str(train_path), "heldout": str(held_path), "train_lines": len(train),
            "train_chars": sum(len(t) + 1 for t in train), "train_lines_by_source": sources,
            "removed_from_train_as_heldout": removed, "heldout_premises": len(heldout),
            "heldout_chars": sum(len(t) + 1 for t in heldout), "overlap_train_heldout": 0,
            "files": {"xnli_dev": str(dev), "xnli_test": str(test), "news_nk": str(nk),
                      "news_park": f"{park}:korean-english-park.dev.ko", "nsmc": f"{len(reviews)} files "
                      f"{ko / 'reviews-nsmc' / 'raw'}/*.json"}}


# ----------------------------------------------------------------------------- recipe

def budget(args) -> tuple[int, int]:
    """(tokens per curve interval, total budget): whole steps per interval, whole intervals per budget."""
    steps = max(1, round(args.max_tokens / args.curve_points / PER_STEP))
    return steps * PER_STEP, steps * PER_STEP * args.curve_points


def write_recipe(args, corpus: dict, work: Path, total: int) -> tuple[Path, str]:
    import yaml

    arm = f"ext-{args.vocab_size}"
    stage = {"stage": "lora", "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE,
             "learning_rate": args.learning_rate, "lr_scheduler": args.lr_scheduler, "warmup_ratio": 0.05,
             "lora_r": 64, "lora_alpha": 128, "max_tokens": total, "heldout_max_chars": args.heldout_chars,
             "gradient_checkpointing": False, "precision": args.precision, "save_steps": 100_000,
             "keep_checkpoints": False, "logging_steps": 6}
    if args.max_minutes:
        stage["max_minutes"] = args.max_minutes
    recipe = {
        "name": f"break-even: control vs {arm} (SmolLM2-135M, Korean, 13x the embedded corpus)",
        "description": "Control arm (base vocabulary, LoRA) against a Korean tokenizer extension on KorNLI dev, "
                       "news and NSMC reviews; held-out XNLI test premises. Written by "
                       "benchmarks/bench_break_even.py.",
        "base": "smollm2-135m", "lang": "ko", "out": str(work / "run"),
        "data": {"corpus": [corpus["train"]], "heldout": [corpus["heldout"]]},
        "tokenizer": {"method": "extend", "vocab_size": args.vocab_size},
        "model": {"init": "fit", "fit_tokens": args.fit_tokens, "fit_l2": 1.0},
        "pretrain": [stage],
        "arms": [{"name": arm}],
        "eval": {"max_chars": args.heldout_chars, "context": 512, "prompts": 0, "intermediate": False,
                 "curve_points": args.curve_points},
    }
    path = work / "recipe.yaml"
    path.write_text("# written by benchmarks/bench_break_even.py\n"
                    + yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, arm


# ----------------------------------------------------------------------------- results

def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stage_facts(run: Path, prefix: str) -> dict:
    """Training facts of one arm's pretrain stage: steps, tokens, chars seen, training tokens/s."""
    rec = _load(run / prefix / "pretrain-lora" / "adapter" / "adaptation.json") or {}
    rows = [json.loads(line) for line in (run / prefix / "pretrain-lora" / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()] if (run / prefix / "pretrain-lora" / "metrics.jsonl").is_file() else []
    eval_s = sum(r.get("eval_seconds") or 0.0 for r in rows)
    runtime = [r["train_runtime"] for r in rows if "train_runtime" in r]
    data = rec.get("data") or {}
    per_token = data["characters"] / data["tokens"] if data.get("tokens") else None
    train_s = runtime[-1] - eval_s if runtime else None
    tokens = rec.get("tokens_seen")
    return {"steps": rec.get("steps"), "tokens_seen": tokens,
            "chars_per_token": round(per_token, 4) if per_token else None,
            "chars_seen": round(tokens * per_token) if tokens and per_token else None,
            "corpus_tokens": data.get("tokens"), "train_seconds": round(train_s, 1) if train_s else None,
            "heldout_eval_seconds": round(eval_s, 1), "heldout_evals": sum(1 for r in rows if "eval_bpc" in r),
            "tokens_per_second": round(tokens / train_s, 1) if tokens and train_s else None,
            "stopped_by_max_minutes": rec.get("stopped_by_max_minutes"), "heldout_bpc_at_end": rec.get("heldout_bpc")}


def curve_table(curves: dict, arm: str, targets: tuple[int, ...]) -> tuple[list[str], list[dict]]:
    control = dict(curves.get("control") or [])
    ext = dict(curves.get(arm) or [])
    xs = sorted(set(control) | set(ext))
    marked = {min(xs, key=lambda x: abs(x - t)) for t in targets if xs and min(abs(x - t) for x in xs) <= 0.1 * t}
    rows, lines = [], [f"| training tokens | control bits/char | {arm} bits/char | gap ({arm} - control) |",
                       "|---:|---:|---:|---:|"]
    for x in xs:
        c, e = control.get(x), ext.get(x)
        gap = e - c if c is not None and e is not None else None
        rows.append({"tokens": int(x), "control": c, arm: e, "gap": gap})
        cell = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append(f"| {'**' if x in marked else ''}{int(x):,}{'**' if x in marked else ''} | {cell(c, '.3f')} | "
                     f"{cell(e, '.3f')} | {cell(gap, '+.3f')} |")
    return lines, rows


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    if not (data / "ko").is_dir():
        sys.exit(f"bench_break_even: {data / 'ko'} not found: this benchmark needs ../shared/data "
                 "(pass --data DIR)")
    work = Path(args.work).resolve()
    interval, total = budget(args)
    corpus = build_corpus(data, work)
    print(f"corpus: {corpus['train_lines']:,} training lines ({corpus['train_lines_by_source']}), "
          f"{corpus['train_chars']:,} characters; held-out: {corpus['heldout_premises']:,} XNLI test premises "
          f"({corpus['heldout_chars']:,} characters, the first {args.heldout_chars:,} scored); "
          f"{len(corpus['removed_from_train_as_heldout'])} held-out premise(s) taken out of the training text; "
          "overlap after: 0", flush=True)
    if total != args.max_tokens:
        print(f"budget: {args.max_tokens:,} tokens rounded to {args.curve_points} intervals of {interval:,} tokens "
              f"({interval // PER_STEP} steps of {PER_STEP:,}) = {total:,} tokens per arm, so that the last curve "
              "point is the end of training")
    schedule_note = (f"lr schedule {args.lr_scheduler}: flat, no warmup, so each curve point is the model a separate "
                     "run of that many tokens would give (same seed and data order)"
                     if args.lr_scheduler == "constant" else
                     f"lr schedule {args.lr_scheduler} over the whole {total:,} tokens: the points before the end are "
                     "mid-schedule models, not what a run with that smaller budget would give (its schedule would "
                     "have finished); only the last point is a finished run")
    print(schedule_note, flush=True)
    recipe_path, arm = write_recipe(args, corpus, work, total)

    import torch

    from langadapt.arms import BreakEven
    from langadapt.outputs import write_json_atomic
    from langadapt.pipeline import run_recipe

    start = time.time()
    run_recipe(recipe_path, dry_run=args.dry_run)
    if args.dry_run:
        print(f"dry run: corpus and {recipe_path} written; nothing trained")
        return 0
    minutes = (time.time() - start) / 60
    run = work / "run"
    report = _load(run / "report.json") or {}
    curves = report.get("curves") or {}
    if "control" not in curves or arm not in curves:
        sys.exit(f"bench_break_even: {run / 'report.json'} has no learning curves for control and {arm}; "
                 f"see {run / 'report.md'}")
    table, rows = curve_table(curves, arm, TARGETS)
    budget_reached = int(max(x for x, _ in curves[arm]))
    sentences = [BreakEven(**e).sentence(budget_reached) for e in report.get("break_even") or []]
    state = _load(run / "run-state.json") or {"steps": {}}
    facts = {"control": stage_facts(run, "control"), arm: stage_facts(run, arm)}
    final = {r["arm"]: r.get("bits_per_char") for r in report.get("arms") or []}
    capped = [name for name, f in facts.items() if f.get("stopped_by_max_minutes")]

    print(f"\nLearning curves (held-out bits/char, the first {args.heldout_chars:,} characters of the XNLI test "
          f"premises, window {BLOCK_SIZE}, stride {BLOCK_SIZE // 2}; bold: nearest to "
          f"{', '.join(f'{t:,}' for t in TARGETS)} tokens; {args.lr_scheduler} schedule):\n")
    print("\n".join(table))
    print(f"\nFinal models (eval bpc, context 512, stride 256): " + ", ".join(
        f"{name} {v:.3f}" for name, v in final.items() if v is not None))
    for name, f in facts.items():
        print(f"  {name}: {f['tokens_seen']:,} tokens ({f['chars_seen']:,} characters, {f['chars_per_token']} "
              f"chars/token) in {f['train_seconds']} s of training = {f['tokens_per_second']} tokens/s; "
              f"{f['heldout_evals']} held-out scorings took {f['heldout_eval_seconds']} s")
    print("\nBreak-even (report.json):")
    for s in sentences:
        print(f"  {s}.")
    if capped:
        print(f"\n**The --max-minutes cap ({args.max_minutes:g}) stopped {', '.join(capped)} before "
              f"{total:,} tokens**: the curves end where training stopped, and the figures depend on this machine's "
              "speed.")
    print(f"\n{schedule_note}.")

    result = {
        "command": "benchmarks/bench_break_even.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "question": "tokens at which the extension arm's held-out bits/char reach the control arm's",
        "settings": {"base": "smollm2-135m", "lang": "ko", "arm": arm, "vocab_size": args.vocab_size,
                     "init": "fit", "fit_tokens": args.fit_tokens, "fit_l2": 1.0, "stage": "lora", "lora_r": 64,
                     "lora_alpha": 128, "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE,
                     "learning_rate": args.learning_rate, "lr_scheduler": args.lr_scheduler,
                     "warmup_ratio": 0.05, "max_tokens_requested": args.max_tokens, "max_tokens": total,
                     "curve_points": args.curve_points, "curve_interval_tokens": interval,
                     "max_minutes": args.max_minutes, "precision": args.precision,
                     "heldout_chars": args.heldout_chars, "eval_context": 512, "curve_window": BLOCK_SIZE,
                     "budget": "tokens (each arm's own tokens)"},
        "schedule_note": schedule_note,
        "corpus": corpus,
        "curves": curves, "table": rows,
        "break_even": report.get("break_even"), "break_even_sentences": sentences,
        "final_bits_per_char": final, "arms": report.get("arms"), "verdict": report.get("verdict"),
        "training": facts, "stopped_by_max_minutes": capped,
        "step_seconds": {name: s.get("seconds") for name, s in state["steps"].items()},
        "minutes_this_invocation": round(minutes, 1),
        "host": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "run_dir": str(run), "report": str(run / "report.md"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, result)
    plot = run / "eval" / "curves.png"
    if plot.is_file():
        png = Path(args.png)
        png.parent.mkdir(parents=True, exist_ok=True)
        tmp = png.with_name(png.name + ".tmp")
        shutil.copyfile(plot, tmp)
        tmp.replace(png)
        print(f"wrote {args.json} and {png} (run: {run / 'report.md'})")
    else:
        print(f"wrote {args.json}; no curves plot at {plot} (run: {run / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
