"""Every `langadapt` command: its words, its one-line help and the module that holds it.

A command `tokenizer merge` in module `langadapt.tokenizer.merge` is the options class
`TokenizerMergeOptions` (its docstring is the command's description, its fields the flags and
recipe keys) and the function `tokenizer_merge_command(opts)`. `options_module` names where the
options class lives when it is not the function's module (the training options are kept free of
torch so that `--help` is instant). Modules are imported only when their command is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from langadapt.errors import LangadaptError

GROUPS = {
    "corpus": "read and inspect text corpora",
    "tokenizer": "train, extend (merge), prune and measure tokenizers",
    "model": "load, inspect, extend and prune models",
    "eval": "evaluate models",
    "export": "export models for other runtimes (llama.cpp GGUF)",
}


@dataclass(frozen=True)
class Command:
    words: str
    module: str
    help: str
    options_module: str | None = None

    @property
    def options_name(self) -> str:
        return "".join(part.capitalize() for w in self.words.split() for part in w.split("-")) + "Options"

    @property
    def function_name(self) -> str:
        return "_".join(self.words.replace("-", "_").split()) + "_command"

    def options_class(self) -> type:
        return getattr(importlib.import_module(self.options_module or self.module), self.options_name)

    def function(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.function_name)

    def run(self, opts) -> int:
        """Run the command on an options object."""
        return int(self.function()(opts) or 0)


COMMANDS = [
    Command("corpus stats", "langadapt.tokenizer.corpus_stats",
            "files, records, characters, units, script share, duplicates and bad bytes of a corpus"),
    Command("tokenizer train", "langadapt.tokenizer.train",
            "train a SentencePiece model (BPE or unigram) on target-language text"),
    Command("tokenizer merge", "langadapt.tokenizer.merge", "extend a base tokenizer with target-language pieces"),
    Command("tokenizer prune", "langadapt.tokenizer.prune",
            "keep only the tokens a corpus of the kept languages needs (LLMPruner for any fast BPE/Unigram)"),
    Command("tokenizer report", "langadapt.tokenizer.report",
            "compare tokenizers on a corpus or a sentence: tokens per unit, byte fallback, vocab used"),
    Command("model info", "langadapt.model.load",
            "print a model's facts: architecture, parameters, vocab, tokenizer, tied embeddings, chat template"),
    Command("model extend", "langadapt.model.extend",
            "resize a model's embeddings and LM head for an extended tokenizer and initialise the new rows"),
    Command("model prune", "langadapt.model.prune",
            "keep only the embedding and LM-head rows of a pruned tokenizer's tokens"),
    Command("pretrain", "langadapt.train.pretrain",
            "continued pretraining on packed blocks: stage embeddings, lora or full (transformers Trainer)",
            options_module="langadapt.train.recipe"),
    Command("merge", "langadapt.train.merge",
            "fold a pretrain or sft adapter (LoRA + trained embedding/head rows) into a full model dir"),
    Command("sft", "langadapt.train.sft",
            "instruction tuning: loss on assistant turns only, LoRA on a merged model or continuing an adapter",
            options_module="langadapt.train.recipe"),
    Command("eval bpc", "langadapt.eval.bpc",
            "bits per character and per byte of a text under a model (comparable across tokenizers)"),
    Command("eval mc", "langadapt.eval.mc",
            "multiple-choice accuracy (C-Eval/CMMLU, Ti-MMLU, JSONL), 0/k-shot, answers scored inside the prompt"),
    Command("eval export-lm-eval", "langadapt.eval.export_lm_eval",
            "write lm-evaluation-harness task YAMLs for the eval mc files (same prompt preset), for GPU users"),
    Command("eval generate", "langadapt.eval.generate",
            "answers of a model to held-out instructions, with generation speed (target-language characters/s)"),
    Command("export gguf", "langadapt.export.gguf",
            "write a Llama-architecture model as a GGUF file for llama.cpp/Ollama, tokenizer checked by llama.cpp"),
    Command("chat", "langadapt.serve.chat",
            "chat with a model in the terminal (streams each character; /reset, /system, /exit)"),
    Command("serve", "langadapt.serve.server",
            "serve a model over an OpenAI-compatible API (streaming), with an optional web chat at /ui"),
    Command("run", "langadapt.pipeline",
            "the whole recipe from one YAML file: tokenizer -> extend -> pretrain -> merge -> sft -> merge -> eval"),
    Command("demo", "langadapt.demo",
            "the whole recipe on the embedded default (SmolLM2-135M + embedded Korean corpus), ~10 min on CPU"),
]
BY_WORDS = {c.words: c for c in COMMANDS}


def find(words: str) -> Command:
    """The command called `words` (e.g. "eval bpc")."""
    if words not in BY_WORDS:
        raise LangadaptError(f"unknown command '{words}'; commands: {', '.join(BY_WORDS)}")
    return BY_WORDS[words]
