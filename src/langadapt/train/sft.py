"""`langadapt sft`: instruction tuning with the loss on assistant turns only.

The same engine, stages, checkpoints and outputs as `pretrain` (`engine.run_training`). What is
particular to SFT: instruction files (`train/instructions.py`) rendered with a chat template and
masked so only answers are learned (`train/sft_data.py`), and the held-out evaluation is the loss
on the answers of held-out conversations (held-out files, or a seeded share of the data, written
to `<out>/heldout.jsonl` so that evaluations can answer the same conversations). The template
trained with is saved as the result's chat template, so chat, serve and eval use the same one.

Start either from a model dir (usually the merge of a pretrain adapter; a new LoRA is trained) or
from an adapter (`adapter: DIR`), whose LoRA and rows keep training on the base it was made on.
"""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path

from accelerate import PartialState
from transformers import Trainer

from langadapt.errors import LangadaptError
from langadapt.tokenizer.templates import TEMPLATE_HELP, resolve_template
from langadapt.train.adapter import read_adapter
from langadapt.train.engine import TrainingData, prepare_model, run_training
from langadapt.train.instructions import read_conversations
from langadapt.train.recipe import SftOptions
from langadapt.train.sft_data import collate, encode_conversations, pack

HELDOUT_MAX_EXAMPLES = 200
HELDOUT_FILE = "heldout.jsonl"


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


class SftTask:
    """Conversations rendered with a chat template, loss on answers (see `engine.TrainingTask`)."""

    step = "sft"

    def __init__(self, options: SftOptions):
        self.options = options
        record = read_adapter(options.adapter) if options.adapter else {}
        self.model_spec = options.model or record.get("base_source")
        if not self.model_spec:
            raise LangadaptError(f"{options.adapter}: its adaptation.json names no base model; give `model`")
        self.tokenizer_spec = options.adapter
        self.sequence_length = options.max_seq_len
        self.heldout: list[dict] = []

    def load_data(self, tokenizer, state) -> TrainingData:
        o = self.options
        self.template = resolve_template(tokenizer, o.template)
        tokenizer.chat_template = self.template  # saved with the result: chat and eval render the same way
        train, stats = read_conversations(o.data, skip_bad=o.skip_bad, fmt=o.data_format)
        if o.heldout:
            held, held_stats = read_conversations(o.heldout, skip_bad=o.skip_bad, fmt=o.data_format)
            read = {"train": stats.__dict__, "heldout": held_stats.__dict__}
        else:
            train, held = split_heldout(train, o.heldout_share, o.seed)
            read = {"train": stats.__dict__, "heldout": f"{len(held)} conversations held out of data"}
        options = dict(train_on_prompt=o.train_on_prompt, last_turn_only=o.last_turn_only, truncate_long=o.truncate)
        examples, train_stats = encode_conversations(tokenizer, self.template, train, o.max_seq_len,
                                                     progress=o.progress and state.is_main_process, **options)
        self.heldout, held_stats = encode_conversations(tokenizer, self.template, held, o.max_seq_len, **options)
        if not examples:
            raise LangadaptError(f"no training example fits in max_seq_len {o.max_seq_len}: "
                                 f"{train_stats.dropped_reasons}")
        rows = pack(examples, o.max_seq_len) if o.pack else examples
        facts = {"template": o.template, "read": read, "train_examples": train_stats.facts(),
                 "heldout_examples": held_stats.facts(), "packed_rows": len(rows) if o.pack else None,
                 "continued_adapter": o.adapter}
        files = {HELDOUT_FILE: "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in held)}
        return TrainingData(rows, sum(len(r["input_ids"]) for r in rows) / len(rows), bool(self.heldout), facts,
                            files if held else {})

    def prepare(self, model, source):
        model.config.use_cache = False  # a cache would hide the packed-sequence boundaries from the attention mask
        return prepare_model(model, self.options, None, adapter_dir=self.options.adapter)

    def make_trainer(self, model, args, data, tokenizer, callbacks):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return Trainer(model=model, args=args, train_dataset=data.rows, eval_dataset=self.heldout or None,
                       processing_class=tokenizer, data_collator=functools.partial(collate, pad_id=pad_id),
                       callbacks=callbacks)

    def before_training(self, trainer, resumed: bool) -> dict:
        loss = trainer.evaluate().get("eval_loss") if self.heldout and not resumed else None
        return {"heldout_answer_loss_before": loss}

    def after_training(self, trainer) -> dict:
        return {"heldout_answer_loss": trainer.evaluate().get("eval_loss") if self.heldout else None}


def sft(options: SftOptions) -> tuple[dict, object]:
    """Run one instruction-tuning recipe end to end; return its summary (also in adaptation.json) and the model."""
    return run_training(options, SftTask(options))


def list_templates() -> str:
    """The template names and what each renders, one per line."""
    width = max(map(len, TEMPLATE_HELP))
    return "\n".join(f"{name:<{width}}  {text}" for name, text in TEMPLATE_HELP.items()) + \
        "\n" + f"{'FILE.jinja':<{width}}  a Jinja chat template of your own (Hugging Face variables)"


def sft_command(opts: SftOptions) -> int:
    """Instruction tuning from a recipe (YAML + command-line overrides); prints the summary."""
    summary, _ = sft(opts)
    if PartialState().is_main_process:
        keys = ("stage", "steps", "train_loss", "heldout_answer_loss_before", "heldout_answer_loss",
                "train_examples", "trainable_parameters", "seconds")
        print(json.dumps({"out": opts.out, **{k: summary[k] for k in keys}}, indent=2))
        print(f"wrote {Path(opts.out) / ('model' if opts.stage == 'full' else 'adapter')}", file=sys.stderr)
    return 0
