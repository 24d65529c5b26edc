"""The training recipes of `pretrain` (`Recipe`) and `sft` (`SftRecipe`): one flat YAML mapping
each, every key also a `--key value` CLI option.

This module imports no torch, so the CLI can build its options from `Recipe` cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langadapt.errors import LangadaptError

STAGES = ("embeddings", "lora", "full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainKeys:
    """The keys `pretrain` and `sft` share: model, output, what trains and how."""

    model: str = ""                       # model dir/alias/.gguf; its tokenizer is used
    out: str = ""                         # run directory: checkpoints, logs, final adapter
    stage: str = "lora"                   # embeddings | lora | full
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8                   # blocks (pretrain) or examples (sft) per device per step
    grad_accum: int = 1
    max_steps: int = -1                   # -1: run `epochs` epochs
    max_minutes: float = 0.0              # stop after this much training time (0: no limit)
    epochs: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 200                 # held-out evaluation every N steps (0: only at the end)
    save_steps: int = 200
    save_total_limit: int = 3
    seed: int = 42
    gradient_checkpointing: bool = True
    precision: str = "auto"               # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    dataloader_workers: int = 0
    resume: bool = False                  # continue from the newest complete checkpoint in `out`
    overwrite: bool = False               # start over in an existing `out`
    progress: bool = True


@dataclass
class Recipe(TrainKeys):
    """Everything a `langadapt pretrain` run needs; defaults are the seed recipe's."""

    corpus: list = field(default_factory=list)   # training text paths
    heldout: list = field(default_factory=list)  # held-out text paths (bits per char at each eval)
    lang: str = "generic"
    text_field: str = "text"
    column: str | None = None
    clean: str = "none"
    cache_dir: str | None = None          # packed-block cache (default $LANGADAPT_HOME/blocks)
    cache_workers: int = 1                # processes tokenising files in parallel
    block_size: int = 1024
    new_rows_only: bool = False           # embeddings/head: train only rows of tokens added by `model extend`
    heldout_max_chars: int = 20000


@dataclass
class SftRecipe(TrainKeys):
    """Everything a `langadapt sft` run needs; defaults are Chinese-Alpaca-2's instruction tuning."""

    data: list = field(default_factory=list)     # instruction files
    data_format: str = "auto"
    heldout: list = field(default_factory=list)  # held-out instruction files (loss on answers)
    heldout_share: float = 0.02                  # without `heldout`: this share of `data`, at most 200 examples
    template: str = "auto"
    max_seq_len: int = 1024
    train_on_prompt: bool = False
    last_turn_only: bool = False
    truncate: bool = True
    pack: bool = False
    skip_bad: bool = False
    adapter: str | None = None            # continue training this adapter (on its base model)
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.03
    batch_size: int = 1
    grad_accum: int = 8




def field_names(cls: type = Recipe) -> list[str]:
    """The keys of a recipe class, in order."""
    return [f.name for f in dataclasses.fields(cls)]


HELP = {
    "model": "model dir, alias or .gguf to train (its tokenizer is used); e.g. the output of `model extend` "
             "(pretrain) or of `merge` (sft)",
    "corpus": "training text: files, directories, globs, .jsonl, .conllu, .csv/.tsv, .gz",
    "heldout": "held-out text scored in bits per char at each eval (must not overlap the corpus)",
    "lang": "language profile for reading and normalising text (bo, zh, ko, en, ...)",
    "text_field": "JSON field of .jsonl records", "column": "column of .csv/.tsv files",
    "clean": "markup cleaner: none or kangyur",
    "out": "run directory: checkpoints/, metrics.jsonl, curves.png, adapter/ (or model/ for stage full)",
    "cache_dir": "packed-block cache (default $LANGADAPT_HOME/blocks)",
    "cache_workers": "processes tokenising corpus files in parallel (1: the tokenizer's own threads only)",
    "block_size": "tokens per training block (at most the model's context)",
    "stage": "embeddings (embeddings + LM head), lora (LoRA + embeddings + LM head) or full",
    "new_rows_only": "train only the embedding/LM-head rows of tokens added by `model extend`",
    "lora_r": "LoRA rank", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "lora_targets": "module names that get LoRA",
    "learning_rate": "peak learning rate", "lr_scheduler": "transformers scheduler name (cosine, linear, ...)",
    "warmup_ratio": "share of the steps spent warming up", "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm", "batch_size": "blocks (pretrain) or examples/packed rows (sft) per "
                                                             "device per step",
    "grad_accum": "gradient accumulation steps", "max_steps": "optimizer steps (-1: use epochs)",
    "max_minutes": "stop once this many minutes of training have passed (held-out evaluation and "
                   "checkpoint saving not counted; 0: no limit); the lr schedule still follows max_steps",
    "epochs": "passes over the blocks when max_steps is -1", "logging_steps": "log the loss every N steps",
    "eval_steps": "held-out evaluation (pretrain: bits per char; sft: loss on answers) every N steps "
                  "(0: only at the end)",
    "save_steps": "checkpoint every N steps", "save_total_limit": "checkpoints kept",
    "heldout_max_chars": "score at most this many held-out characters", "seed": "random seed (data order, LoRA init)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30% slower)",
    "precision": "auto (bf16 on GPU, fp32 on CPU), fp32 or bf16",
    "dataloader_workers": "DataLoader worker processes",
    "resume": "continue from the newest complete checkpoint in out",
    "overwrite": "delete an existing run in out and start over", "progress": "show progress bars",
    # sft
    "data": "instruction files (.json array or JSON Lines): Alpaca, Firefly, prompt (input/target), messages, "
            "ShareGPT conversations, QA; the format is detected per file",
    "data_format": "force one format for every file instead of detecting it (auto)",
    "heldout_share": "without heldout files: hold out this share of data (at most 200 examples) for the loss on answers",
    "template": "chat template: alpaca, llama2-chat, firefly, chatml, auto (the tokenizer's own) or a .jinja file; "
                "see `langadapt sft --list-templates`",
    "max_seq_len": "tokens per example (longer ones: prompt cut from the left, answer from the right)",
    "train_on_prompt": "compute the loss on prompt tokens too (default: assistant turns only)",
    "last_turn_only": "compute the loss on the last assistant turn only (default: every assistant turn)",
    "truncate": "cut over-long examples within the budget (false: drop them, counted in the summary)",
    "pack": "pack several short examples into one row of max_seq_len (attention kept within each example)",
    "skip_bad": "skip malformed records (counted and reported) instead of stopping at the first",
    "adapter": "continue training this adapter dir (LoRA + rows) on the model it was trained on, instead of a new LoRA",
}


def _type_of(name: str, cls: type = Recipe) -> type:
    default = cls().__dict__[name]
    if isinstance(default, bool):
        return bool
    if isinstance(default, list):
        return list
    if isinstance(default, (int, float)):
        return type(default)
    return str


def _coerce(name: str, value: Any, where: str, cls: type) -> Any:
    """Check and convert one value to the type of `cls.<name>`."""
    kind = _type_of(name, cls)
    if value is None:
        return None
    if kind is list:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1"):
            return True
        if str(value).lower() in ("false", "no", "0"):
            return False
    else:
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise LangadaptError(f"{where}: '{name}' must be {kind.__name__}, got {value!r}")


def unknown_key_error(key: str, where: str, cls: type = Recipe) -> LangadaptError:
    """'unknown key' with the nearest known key suggested."""
    names = field_names(cls)
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(names)}"
    return LangadaptError(f"{where}: unknown key '{key}'{hint}")


def recipe_from_dict(data: dict, where: str = "recipe", base=None, cls: type | None = None):
    """A recipe (`cls`, default `Recipe`) from a mapping (keys checked, values type-checked),
    over `base` or the defaults."""
    cls = cls or (type(base) if base is not None else Recipe)
    values = dataclasses.asdict(base) if base is not None else {}
    names = set(field_names(cls))
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in names:
            raise unknown_key_error(key, where, cls)
        values[key] = _coerce(key, value, where, cls)
    recipe = cls(**values)
    validate(recipe, where)
    return recipe


def read_yaml_mapping(path: str | Path, what: str = "recipe") -> dict:
    """The top-level mapping of a YAML file, with one-line errors for a missing file, invalid YAML
    or another top level."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LangadaptError(f"{what} {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LangadaptError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise LangadaptError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def load_recipe(path: str | Path | None, overrides: dict | None = None, cls: type = Recipe):
    """Read a YAML recipe and apply command-line overrides (None values are not overrides)."""
    data = read_yaml_mapping(path) if path is not None else {}
    where = str(path) if path else "command line"
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return recipe_from_dict(data, where, cls=cls)


def validate(r: TrainKeys, where: str) -> None:
    """Value checks that need no model or data."""
    if r.stage not in STAGES:
        raise LangadaptError(f"{where}: stage must be one of {', '.join(STAGES)}, got '{r.stage}'")
    if r.precision not in ("auto", "fp32", "bf16"):
        raise LangadaptError(f"{where}: precision must be auto, fp32 or bf16, got '{r.precision}'")
    for name in ("block_size", "max_seq_len", "batch_size", "grad_accum", "logging_steps", "save_steps", "lora_r",
                 "cache_workers"):
        if getattr(r, name, 1) < 1:
            raise LangadaptError(f"{where}: {name} must be a positive integer, got {getattr(r, name)}")
    if r.max_steps == 0 or r.max_steps < -1:
        raise LangadaptError(f"{where}: max_steps must be positive (or -1 to use epochs), got {r.max_steps}")
    if r.max_minutes < 0:
        raise LangadaptError(f"{where}: max_minutes must be 0 (no limit) or positive, got {r.max_minutes}")
    if not 0 <= r.lora_dropout < 1:
        raise LangadaptError(f"{where}: lora_dropout must be in [0, 1), got {r.lora_dropout}")
    if not 0 <= getattr(r, "heldout_share", 0) < 1:
        raise LangadaptError(f"{where}: heldout_share must be in [0, 1), got {r.heldout_share}")
    if isinstance(r, SftRecipe) and r.train_on_prompt and r.last_turn_only:
        raise LangadaptError(f"{where}: train_on_prompt and last_turn_only contradict each other; choose one")


def add_recipe_args(p: argparse.ArgumentParser, cls: type = Recipe) -> None:
    """Add `--config` and a `--key` option for every key of `cls` (absent from the Namespace when not given)."""
    p.add_argument("--config", metavar="RECIPE.yaml", default=None, help="the recipe (YAML mapping)")
    defaults = cls()
    for name in field_names(cls):
        kind, default = _type_of(name, cls), getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        text = f"{HELP[name]} [recipe default: {default}]".replace("%", "%%")
        if kind is list:
            p.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, help=text)
        elif kind is bool:
            p.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="true|false", nargs="?",
                           const="true", help=text)
        else:
            p.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=text)


def recipe_from_args(args: argparse.Namespace, cls: type = Recipe):
    """The recipe (`cls`) of a `langadapt pretrain` or `sft` command line."""
    return load_recipe(args.config, {name: getattr(args, name, None) for name in field_names(cls)}, cls)
