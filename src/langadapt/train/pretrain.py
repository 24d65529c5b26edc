"""`langadapt pretrain`: continued pretraining on packed blocks with transformers' Trainer.

The stages, the run directory and the sequence (`engine.run_training`) are shared with `sft`.
What pretraining adds: the packed-block cache of the corpus (`train/data.py`), and a held-out
evaluation in bits per character (a sliding window, comparable across tokenizers, unlike the loss
per token).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from accelerate import PartialState
from transformers import Trainer

from langadapt.corpus import expand_paths
from langadapt.errors import LangadaptError
from langadapt.model.score import bpc_of_text
from langadapt.train.data import CorpusSpec, load_blocks, unseen_heldout
from langadapt.train.engine import TrainingData, added_row_ids, prepare_model, run_training
from langadapt.train.recipe import PretrainOptions


class PretrainTrainer(Trainer):
    """A Trainer whose evaluation is the held-out text in bits per char."""

    def __init__(self, *args, heldout_text: str, block_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.heldout_text, self.block_size = heldout_text, block_size

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict:
        """Bits per char of the held-out text (sliding window of block_size, stride block_size/2)."""
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


class PretrainTask:
    """Packed blocks of the corpus; held-out bits per char (see `engine.TrainingTask`)."""

    step = "pretrain"
    tokenizer_spec = None

    def __init__(self, options: PretrainOptions):
        self.options = options
        self.model_spec, self.sequence_length = options.model, options.block_size
        self.heldout_text, self.new_rows = "", None

    def load_data(self, tokenizer, state) -> TrainingData:
        o = self.options
        corpus = CorpusSpec(o.corpus, o.reading, bpe_dropout=o.bpe_dropout, seed=o.seed)
        with state.main_process_first():  # one process tokenises; the others then read the cache
            blocks = load_blocks(tokenizer, corpus, o.block_size, o.cache_dir,
                                 progress=o.progress and state.is_main_process, workers=o.cache_workers)
        if o.heldout:
            self.heldout_text = self._heldout_text(blocks, state)
        return TrainingData(blocks, o.block_size, bool(self.heldout_text), {"data": blocks.facts()})

    def _heldout_text(self, blocks, state) -> str:
        """The held-out records joined with newlines, without those that also occur in the training blocks."""
        held = CorpusSpec(self.options.heldout, self.options.reading)
        records = [r for f in held.files() for r in _records_or_empty(held, f)]
        records, seen = unseen_heldout(blocks, expand_paths(self.options.heldout), records)
        if seen and state.is_main_process:
            print(f"held-out text: {seen} records also appear in the training corpus and are left out of the "
                  f"held-out score ({len(records)} kept)", file=sys.stderr)
        if not records:
            raise LangadaptError("every held-out record also appears in the training corpus; choose other held-out text")
        return "\n".join(records)[:self.options.heldout_max_chars]

    def prepare(self, model, source):
        rows = model.get_input_embeddings().weight.shape[0]
        if self.options.new_rows_only:
            self.new_rows = added_row_ids(source, rows)
            if not self.new_rows:
                raise LangadaptError(f"new_rows_only: {source} has no added rows to train")
        return prepare_model(model, self.options, self.new_rows)

    def make_trainer(self, model, args, data, tokenizer, callbacks):
        # The "eval dataset" is the held-out text itself: `PretrainTrainer.evaluate` scores it with the
        # sliding window (bits per char), which is comparable across tokenizers, unlike eval loss.
        return PretrainTrainer(model=model, args=args, train_dataset=data.rows,
                               eval_dataset=[self.heldout_text] if self.heldout_text else None,
                               processing_class=tokenizer, callbacks=callbacks, heldout_text=self.heldout_text,
                               block_size=self.options.block_size)

    def before_training(self, trainer, resumed: bool) -> dict:
        return {}  # the untrained model's bits per char is `eval bpc`'s job

    def after_training(self, trainer) -> dict:
        """Held-out bits per char of the final weights (the last evaluation, if it was at the end)."""
        facts = {"new_rows_only": self.new_rows is not None,
                 "trained_rows": [self.new_rows[0], self.new_rows[-1] + 1] if self.new_rows else None}
        if not self.heldout_text:
            return {**facts, "heldout_bpc": None}
        evals = [r for r in trainer.state.log_history if "eval_bpc" in r]
        last = evals[-1] if evals and evals[-1]["step"] == trainer.state.global_step else trainer.evaluate()
        return {**facts, "heldout_bpc": last["eval_bpc"]}


def pretrain(options: PretrainOptions) -> tuple[dict, object]:
    """Run one pretraining recipe end to end; return its summary (also in adaptation.json) and the model."""
    return run_training(options, PretrainTask(options))


def _records_or_empty(corpus, path):
    try:
        return list(corpus.records(path))
    except LangadaptError as e:
        if "no text records" in str(e):
            return []
        raise


def pretrain_command(opts: PretrainOptions) -> int:
    """Continued pretraining from a recipe (YAML + command-line overrides); prints the summary."""
    summary, _ = pretrain(opts)
    if PartialState().is_main_process:
        keys = ("stage", "steps", "tokens_seen", "train_loss", "heldout_bpc", "trainable_parameters", "seconds")
        print(json.dumps({"out": opts.out, **{k: summary[k] for k in keys}}, indent=2))
        print(f"wrote {Path(opts.out) / ('model' if opts.stage == 'full' else 'adapter')}", file=sys.stderr)
    return 0
