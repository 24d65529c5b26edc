"""`langadapt sft`: instruction tuning with the loss on assistant turns only.

The same engine, stages, checkpoints and outputs as `pretrain` (`train/engine.py`). What is
particular to SFT: instruction files (`train/instructions.py`) rendered with a chat template and
masked so only answers are learned (`train/sft_data.py`), and the held-out evaluation is the loss
on the answers of held-out conversations (held-out files, or a seeded share of the data).

Start either from a model dir (usually the merge of a pretrain adapter; a new LoRA is trained) or
from an adapter (`adapter: DIR`), whose LoRA and rows keep training on the base it was made on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import sys
import time
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.train.recipe import SftRecipe, recipe_from_args

HELDOUT_MAX_EXAMPLES = 200


def split_heldout(conversations: list, share: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded random `share` of the conversations, at most 200, held out."""
    n = min(HELDOUT_MAX_EXAMPLES, int(round(len(conversations) * share)))
    if share > 0 and len(conversations) >= 2:
        n = max(n, 1)
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return ([c for i, c in enumerate(conversations) if i not in held],
            [c for i, c in enumerate(conversations) if i in held])


def _load_conversations(recipe: SftRecipe):
    from langadapt.train.instructions import read_conversations

    train, stats = read_conversations(recipe.data, skip_bad=recipe.skip_bad, fmt=recipe.data_format)
    if recipe.heldout:
        held, held_stats = read_conversations(recipe.heldout, skip_bad=recipe.skip_bad, fmt=recipe.data_format)
        return train, held, {"train": stats.__dict__, "heldout": held_stats.__dict__}
    train, held = split_heldout(train, recipe.heldout_share, recipe.seed)
    return train, held, {"train": stats.__dict__, "heldout": f"{len(held)} conversations held out of data"}


def sft(recipe: SftRecipe) -> tuple[dict, object]:
    """Run one instruction-tuning recipe end to end; return its summary (also in adaptation.json) and the model."""
    from accelerate import PartialState
    from transformers import set_seed

    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.tokenizer.templates import resolve_template
    from transformers import Trainer

    from langadapt.train.adapter import base_facts, read_adapter
    from langadapt.train.engine import (check_sharding, finish_run, load_model_for_training, open_run_dir,
                                        prepare_model, run_callbacks, run_facts, train_or_explain,
                                        training_arguments)
    from langadapt.train.sft_data import collate, encode_conversations, pack

    record = read_adapter(recipe.adapter) if recipe.adapter else None
    model_spec = recipe.model or (record or {}).get("base_source")
    if not model_spec or not recipe.out:
        raise LangadaptError("recipe keys 'model' (or 'adapter') and 'out' are required (in the YAML or as --key)")
    if not recipe.data:
        raise LangadaptError("recipe key 'data' is required: the instruction files")
    start = time.time()
    state = PartialState()
    check_sharding(state, recipe.stage)
    source = resolve_model_source(model_spec)
    tokenizer = load_tokenizer(str(recipe.adapter or source))
    template = resolve_template(tokenizer, recipe.template)
    train_convs, held_convs, read_stats = _load_conversations(recipe)
    options = dict(train_on_prompt=recipe.train_on_prompt, last_turn_only=recipe.last_turn_only,
                   truncate_long=recipe.truncate)
    progress = recipe.progress and state.is_main_process
    train_examples, train_stats = encode_conversations(tokenizer, template, train_convs, recipe.max_seq_len,
                                                       progress=progress, **options)
    held_examples, held_stats = encode_conversations(tokenizer, template, held_convs, recipe.max_seq_len, **options)
    if not train_examples:
        raise LangadaptError(f"no training example fits in max_seq_len {recipe.max_seq_len}: "
                             f"{train_stats.dropped_reasons}")
    rows = pack(train_examples, recipe.max_seq_len) if recipe.pack else train_examples

    out = Path(recipe.out)
    resume_from = open_run_dir(recipe, state)
    model = load_model_for_training(source, tokenizer)
    max_pos = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if max_pos is not None and recipe.max_seq_len > max_pos:
        raise LangadaptError(f"max_seq_len {recipe.max_seq_len} is beyond the model's context of {max_pos} positions")
    model.config.use_cache = False  # a cache would hide the packed-sequence boundaries from the attention mask
    base = base_facts(model)
    set_seed(recipe.seed)
    model = prepare_model(model, recipe, None, adapter_dir=recipe.adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(
        model=model, args=training_arguments(recipe, out / "checkpoints", bool(held_examples)),
        train_dataset=rows, eval_dataset=held_examples or None, processing_class=tokenizer,
        data_collator=functools.partial(collate, pad_id=pad_id),
        callbacks=run_callbacks(recipe, resume_from, state))
    before = trainer.evaluate() if held_examples and not resume_from else {}
    result = train_or_explain(trainer, resume_from, out)
    after = trainer.evaluate() if held_examples else {}

    summary = {
        "stage": recipe.stage, "base": model_spec, "continued_adapter": recipe.adapter,
        **run_facts(trainer, result, recipe, source),
        **base, "template": recipe.template, "read": read_stats, "train_examples": train_stats.facts(),
        "heldout_examples": held_stats.facts(), "packed_rows": len(rows) if recipe.pack else None,
        "trainable_parameters": trainable,
        "heldout_answer_loss_before": before.get("eval_loss"), "heldout_answer_loss": after.get("eval_loss"),
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds": round(time.time() - start, 1), "recipe": dataclasses.asdict(recipe),
    }
    finish_run(model, tokenizer, recipe, recipe.adapter or source, summary, f"sft-{recipe.stage}", state)
    return summary, model


def list_templates() -> str:
    """The template names and what each renders, one per line."""
    from langadapt.tokenizer.templates import TEMPLATE_HELP

    width = max(map(len, TEMPLATE_HELP))
    return "\n".join(f"{name:<{width}}  {text}" for name, text in TEMPLATE_HELP.items()) + \
        "\n" + f"{'FILE.jinja':<{width}}  a Jinja chat template of your own (Hugging Face variables)"


def run_sft(args) -> int:
    """`langadapt sft`: instruction tuning from a recipe (YAML + command-line overrides)."""
    if getattr(args, "list_templates", False):
        print(list_templates())
        return 0
    recipe = recipe_from_args(args, SftRecipe)
    summary, _ = sft(recipe)
    from accelerate import PartialState

    if PartialState().is_main_process:
        keys = ("stage", "steps", "train_loss", "heldout_answer_loss_before", "heldout_answer_loss",
                "train_examples", "trainable_parameters", "seconds")
        print(json.dumps({"out": recipe.out, **{k: summary[k] for k in keys}}, indent=2))
        print(f"wrote {Path(recipe.out) / ('model' if recipe.stage == 'full' else 'adapter')}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # `accelerate launch -m langadapt.train.sft --config ...`
    from langadapt.cli import main

    sys.exit(main(["sft", *sys.argv[1:]]))
