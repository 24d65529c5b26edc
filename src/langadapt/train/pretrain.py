"""`langadapt pretrain`: continued pretraining on packed blocks with transformers' Trainer.

The stages and the run directory are described in `train/engine.py`. Pretraining adds the
packed-block cache of the corpus (`train/data.py`) and evaluates the held-out text in bits per
character (a sliding window, comparable across tokenizers, unlike the loss per token).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer

from langadapt.errors import LangadaptError
from langadapt.train.adapter import base_facts
from langadapt.train.engine import (COMPLETE_MARK, added_row_ids, check_sharding, finish_run, latest_checkpoint,
                                    load_model_for_training, open_run_dir, prepare_model, run_callbacks, run_facts,
                                    train_or_explain, training_arguments)
from langadapt.train.recipe import Recipe, recipe_from_args

__all__ = ["COMPLETE_MARK", "PretrainTrainer", "latest_checkpoint", "prepare_model", "pretrain", "training_arguments"]


class PretrainTrainer(Trainer):
    """A Trainer whose evaluation is the held-out text in bits per char."""

    def __init__(self, *args, heldout_text: str, block_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.heldout_text, self.block_size = heldout_text, block_size

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict:
        """Bits per char of the held-out text (sliding window of block_size, stride block_size/2)."""
        from langadapt.model.score import bpc_of_text

        model = self.model
        was_training = model.training
        model.eval()
        started = time.time()
        result = bpc_of_text(model, self.processing_class, self.heldout_text, context=self.block_size,
                             stride=max(1, self.block_size // 2), progress=False)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_bpc": result["bits_per_char"],
                   f"{metric_key_prefix}_bits_per_byte": result["bits_per_byte"],
                   f"{metric_key_prefix}_nll_per_token": round(result["nll_nats"] / max(result["tokens_scored"], 1), 5),
                   f"{metric_key_prefix}_seconds": round(time.time() - started, 2)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics



def _check_recipe_inputs(recipe: Recipe) -> None:
    for name in ("model", "out"):
        if not getattr(recipe, name):
            raise LangadaptError(f"recipe key '{name}' is required (in the YAML or as --{name})")
    if not recipe.corpus:
        raise LangadaptError("recipe key 'corpus' is required: the training text paths")


def pretrain(recipe: Recipe) -> tuple[dict, torch.nn.Module]:
    """Run one pretraining recipe end to end; return its summary (also in adaptation.json) and the model."""
    from accelerate import PartialState
    from transformers import AutoConfig, set_seed

    from langadapt.corpus import expand_paths
    from langadapt.model.score import window_spans
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, load_blocks, unseen_heldout

    _check_recipe_inputs(recipe)
    start = time.time()
    state = PartialState()
    check_sharding(state, recipe.stage)
    out = Path(recipe.out)
    resume_from = open_run_dir(recipe, state)

    source = resolve_model_source(recipe.model)
    tokenizer = load_tokenizer(str(source))
    cfg = AutoConfig.from_pretrained(str(source)).get_text_config()
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and recipe.block_size > max_pos:
        raise LangadaptError(f"block_size {recipe.block_size} is beyond the model's context of {max_pos} positions")

    corpus = CorpusSpec(recipe.corpus, recipe.lang, recipe.text_field, recipe.column,
                        None if recipe.clean == "none" else recipe.clean)
    with state.main_process_first():  # one process tokenises; the others then read the cache
        data = load_blocks(tokenizer, corpus, recipe.block_size, recipe.cache_dir,
                           progress=recipe.progress and state.is_main_process, workers=recipe.cache_workers)
    heldout_text = ""
    if recipe.heldout:
        held = CorpusSpec(recipe.heldout, recipe.lang, recipe.text_field, recipe.column, corpus.clean)
        records = [r for f in held.files() for r in _records_or_empty(held, f)]
        records, seen = unseen_heldout(data, expand_paths(recipe.heldout), records)
        if seen and state.is_main_process:
            print(f"held-out text: {seen} records also appear in the training corpus and are left out of the "
                  f"held-out score ({len(records)} kept)", file=sys.stderr)
        if not records:
            raise LangadaptError("every held-out record also appears in the training corpus; choose other held-out text")
        heldout_text = "\n".join(records)[:recipe.heldout_max_chars]
        window_spans(2, recipe.block_size, max(1, recipe.block_size // 2))

    model = load_model_for_training(source, tokenizer)
    base = base_facts(model)
    vocab_rows = base["vocab_rows"]
    new_rows = added_row_ids(source, vocab_rows) if recipe.new_rows_only else None
    if new_rows is not None and not new_rows:
        raise LangadaptError(f"new_rows_only: {source} has no added rows to train")
    set_seed(recipe.seed)  # LoRA's initial weights are random: the same seed, the same run
    model = prepare_model(model, recipe, new_rows)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    args = training_arguments(recipe, out / "checkpoints", bool(heldout_text))
    # The "eval dataset" is the held-out text itself: `PretrainTrainer.evaluate` scores it with the
    # sliding window (bits per char), which is comparable across tokenizers, unlike eval loss.
    trainer = PretrainTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=[heldout_text] if heldout_text else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(recipe, resume_from, state), heldout_text=heldout_text, block_size=recipe.block_size)
    result = train_or_explain(trainer, resume_from, out)
    final = {}
    if heldout_text:  # held-out bpc of the final weights (reuse the last eval if it was at the end)
        evals = [r for r in trainer.state.log_history if "eval_bpc" in r]
        if evals and evals[-1]["step"] == trainer.state.global_step:
            final = {"eval_bpc": evals[-1]["eval_bpc"]}
        else:
            final = trainer.evaluate()

    summary = {
        "stage": recipe.stage, "base": recipe.model, **run_facts(trainer, result, recipe, source),
        **base, "new_rows_only": new_rows is not None, "trained_rows": [new_rows[0], vocab_rows] if new_rows else None,
        "trainable_parameters": trainable, "heldout_bpc": final.get("eval_bpc"), "data": data.facts(),
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds": round(time.time() - start, 1), "recipe": dataclasses.asdict(recipe),
    }
    finish_run(model, tokenizer, recipe, source, summary, f"pretrain-{recipe.stage}", state)
    return summary, model


def _records_or_empty(corpus, path):
    try:
        return list(corpus.records(path))
    except LangadaptError as e:
        if "no text records" in str(e):
            return []
        raise


def run_pretrain(args) -> int:
    """`langadapt pretrain`: continued pretraining from a recipe (YAML + command-line overrides)."""
    recipe = recipe_from_args(args)
    summary, _ = pretrain(recipe)
    from accelerate import PartialState

    if PartialState().is_main_process:
        keys = ("stage", "steps", "tokens_seen", "train_loss", "heldout_bpc", "trainable_parameters", "seconds")
        print(json.dumps({"out": recipe.out, **{k: summary[k] for k in keys}}, indent=2))
        print(f"wrote {Path(recipe.out) / ('model' if recipe.stage == 'full' else 'adapter')}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # `accelerate launch -m langadapt.train.pretrain --config ...`
    from langadapt.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
