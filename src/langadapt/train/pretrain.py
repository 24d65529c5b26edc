"""`langadapt pretrain`: continued pretraining on packed blocks with transformers' Trainer.

The stages, the run directory and the sequence (`engine.run_training`) are shared with `sft`.
What pretraining adds: the packed-block cache of the corpus (`train/data.py`), and a held-out
evaluation in bits per character (a sliding window, comparable across tokenizers, unlike the loss
per token). Options of pretraining only: `new_input_rows_only` (EEVE: new input rows + whole LM
head, `train/adapter.py`), `block_order` (a curriculum: blocks read in the order of
`train/curriculum.py`), `edge_layers` (stage full on the first and last N layers,
`engine.edge_layer_names`) and `mtp_heads` (multi-token prediction heads as an auxiliary loss,
`train/mtp.py`; trained, checkpointed, dropped at save time).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from accelerate import PartialState
from torch.utils.data import SequentialSampler, Subset
from transformers import Trainer

from langadapt.corpus import expand_paths
from langadapt.errors import LangadaptError
from langadapt.model.extend import is_tied
from langadapt.model.fingerprint import model_fingerprint
from langadapt.model.score import bpc_of_text
from langadapt.train.data import CorpusSpec, load_blocks, unseen_heldout
from langadapt.train import mtp
from langadapt.train.curriculum import (budget_blocks, cached_block_losses, curriculum_order,
                                        document_length_per_block)
from langadapt.train.engine import TrainingData, added_row_ids, budget_steps, prepare_model, run_training
from langadapt.tokenizer.load import load_tokenizer
from langadapt.train.recipe import PretrainOptions

BUDGET_SAMPLE_CHARS = 1_000_000  # corpus characters on which a budget tokenizer's tokens per character are measured


class PretrainTrainer(Trainer):
    """A Trainer whose evaluation is the held-out text in bits per char; `sequential` reads the
    training rows in their order (a curriculum); `mtp_weight` weighs the loss of multi-token heads
    attached to the model (`train/mtp.py`), which go into each checkpoint and come back on resume."""

    def __init__(self, *args, heldout_text: str, block_size: int, sequential: bool = False, mtp_weight: float = 0.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.heldout_text, self.block_size = heldout_text, block_size
        self.sequential, self.mtp_weight = sequential, mtp_weight

    def _get_train_sampler(self, train_dataset=None):
        if self.sequential:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The next-token loss, plus `mtp_weight` x the multi-token heads' loss when there are heads."""
        heads = mtp.heads_of(self.model)
        if heads is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        captured = {}
        hook = mtp.base_of(self.model).get_output_embeddings().register_forward_hook(
            lambda module, args, output: captured.__setitem__("hidden", args[0]))
        try:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            hook.remove()
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None  # as the next-token loss is
        count = num_items_in_batch if scaled else (labels[:, 1:] != -100).sum()
        aux = mtp.mtp_loss(heads, mtp.base_of(self.model).get_output_embeddings(), captured["hidden"], labels, count)
        if scaled and self.args.average_tokens_across_devices:
            aux = aux * self.accelerator.num_processes
        loss = loss + self.mtp_weight * aux.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        heads = mtp.heads_of(self.model)
        if heads is not None:
            from safetensors.torch import save_file

            folder = Path(output_dir if output_dir is not None else self.args.output_dir)
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()},
                      str(folder / mtp.MTP_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        heads = mtp.heads_of(self.model)
        if heads is not None:
            from safetensors.torch import load_file

            path = Path(resume_from_checkpoint) / mtp.MTP_FILE
            if not path.is_file():
                raise LangadaptError(f"--resume: {path} is missing; the run was started without mtp_heads")
            heads.load_state_dict(load_file(str(path)))

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
        self.blocks, self.eos_id, self.read, self.order, self.order_facts = None, None, None, None, {}

    def load_data(self, tokenizer, state) -> TrainingData:
        o = self.options
        corpus = CorpusSpec(o.corpus, o.reading, bpe_dropout=o.bpe_dropout, seed=o.seed)
        # The cache is built once: by the main process first; then by each node's first process (which finds
        # it built on a shared filesystem, or builds the same bytes on its own disk); then every other rank
        # memory-maps it, and the sampler gives each rank its own blocks.
        with state.main_process_first(), state.local_main_process_first():
            blocks = load_blocks(tokenizer, corpus, o.block_size, o.cache_dir,
                                 progress=o.progress and state.is_local_main_process, workers=o.cache_workers)
        if o.heldout:
            self.heldout_text = self._heldout_text(blocks, state)
        self.blocks, self.eos_id = blocks, tokenizer.eos_token_id
        facts = {"data": blocks.facts()}
        max_tokens = None
        if o.budget_tokenizer and o.max_tokens and o.budget_tokenizer != o.model:
            per_char = tokens_per_char(load_tokenizer(o.budget_tokenizer), o.reading.iter_texts(o.corpus))
            own = facts["data"]["tokens"] / max(facts["data"]["characters"], 1)
            max_tokens = max(1, round(o.max_tokens * own / per_char))
            facts["budget"] = {"tokenizer": o.budget_tokenizer, "its_tokens": o.max_tokens,
                               "characters": round(o.max_tokens / per_char), "own_tokens": max_tokens}
        if o.block_order != "shuffled":
            steps = budget_steps(o, o.block_size, state.num_processes, max_tokens)
            rows = steps * o.batch_size * o.grad_accum * state.num_processes if steps > 0 else None
            self.read = budget_blocks(len(blocks), rows, o.seed)
        if o.block_order == "length":
            lengths = document_length_per_block(blocks, tokenizer.eos_token_id)
            self._set_order(lengths[self.read], "mean_document_tokens")
        return TrainingData(blocks, o.block_size, bool(self.heldout_text), facts, max_tokens=max_tokens)

    def _set_order(self, measure: np.ndarray, name: str) -> None:
        """Read the blocks `self.read` (whose `measure` this is) by ascending measure."""
        ranks = curriculum_order(measure, self.options.seed)
        self.order = self.read[ranks]
        self.order_facts = {"block_order_measure": name, "block_order_blocks": len(self.read),
                            "block_order_first": round(float(measure[ranks[0]]), 4),
                            "block_order_last": round(float(measure[ranks[-1]]), 4),
                            "block_order_head": self.order[:8].tolist()}

    def _order_by_loss(self, model, source) -> None:
        """Score the blocks the budget reads with the start model (the main process first; the others
        read its cache)."""
        state = PartialState()
        model.to(state.device)
        with state.main_process_first():
            losses = cached_block_losses(model, model_fingerprint(source), self.blocks, self.read,
                                         self.options.batch_size, state.device,
                                         progress=self.options.progress and state.is_main_process)
        self._set_order(losses, "start_model_loss")

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
        o = self.options
        rows = model.get_input_embeddings().weight.shape[0]
        if o.new_input_rows_only and (model.get_output_embeddings() is None or is_tied(model)):
            raise LangadaptError(f"new_input_rows_only trains the whole LM head apart from the input rows, but "
                                 f"{source} ties them; untie with `langadapt model extend --init fit`")
        option = "new_input_rows_only" if o.new_input_rows_only else "new_rows_only"
        if o.new_rows_only or o.new_input_rows_only:
            self.new_rows = added_row_ids(source, rows, option)
            if not self.new_rows:
                raise LangadaptError(f"{option}: {source} has no added rows to train")
        if o.block_order == "loss":
            self._order_by_loss(model, source)  # the start model, before anything is wrapped or trains
        model = prepare_model(model, o, self.new_rows)
        if o.mtp_heads:
            mtp.attach_heads(model, o.mtp_heads)
        return model

    def make_trainer(self, model, args, data, tokenizer, callbacks):
        # The "eval dataset" is the held-out text itself: `PretrainTrainer.evaluate` scores it with the
        # sliding window (bits per char), which is comparable across tokenizers, unlike eval loss.
        rows = data.rows if self.order is None else Subset(data.rows, self.order.tolist())
        return PretrainTrainer(model=model, args=args, train_dataset=rows,
                               eval_dataset=[self.heldout_text] if self.heldout_text else None,
                               processing_class=tokenizer, callbacks=callbacks, heldout_text=self.heldout_text,
                               block_size=self.options.block_size, sequential=self.order is not None,
                               mtp_weight=self.options.mtp_weight)

    def before_training(self, trainer, resumed: bool) -> dict:
        return {}  # the untrained model's bits per char is `eval bpc`'s job

    def after_training(self, trainer) -> dict:
        """Held-out bits per char of the final weights (the last evaluation, if it was at the end), and
        the pretraining options' facts. The multi-token heads are removed here, before the save."""
        o = self.options
        heads = mtp.heads_of(trainer.model)
        facts = {"new_rows_only": o.new_rows_only, "new_input_rows_only": o.new_input_rows_only,
                 "trained_rows": [self.new_rows[0], self.new_rows[-1] + 1] if self.new_rows else None,
                 "block_order": o.block_order, **self.order_facts, "edge_layers": o.edge_layers,
                 "mtp_heads": o.mtp_heads, "mtp_weight": o.mtp_weight if o.mtp_heads else None,
                 "mtp_head_parameters_dropped": sum(p.numel() for p in heads.parameters()) if heads is not None else 0}
        mtp.detach_heads(trainer.model)
        if not self.heldout_text:
            return {**facts, "heldout_bpc": None}
        evals = [r for r in trainer.state.log_history if "eval_bpc" in r]
        last = evals[-1] if evals and evals[-1]["step"] == trainer.state.global_step else trainer.evaluate()
        return {**facts, "heldout_bpc": last["eval_bpc"]}


def tokens_per_char(tokenizer, records, max_chars: int = BUDGET_SAMPLE_CHARS) -> float:
    """Tokens per character of `records` (up to `max_chars` characters) as the block cache counts them: each
    record's tokens plus its end-of-sequence token."""
    tokens = chars = 0
    for text in records:
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        chars += len(text)
        if chars >= max_chars:
            break
    if not chars:
        raise LangadaptError("budget_tokenizer: the corpus has no text to measure tokens per character on")
    return tokens / chars


def pretrain(options: PretrainOptions) -> tuple[dict, object]:
    """Run one pretraining recipe end to end; return its summary (also in adaptation.json) and the model."""
    return run_training(options, PretrainTask(options))


def _records_or_empty(corpus, path):
    try:
        return list(corpus.reading.iter_texts([path]))
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
