"""The pretraining recipe: one flat YAML mapping, every key also a `--key value` CLI option.

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
class Recipe:
    """Everything a `langadapt pretrain` run needs; defaults are the seed recipe's."""

    model: str = ""                       # model dir/alias/.gguf; its tokenizer is used
    corpus: list = field(default_factory=list)   # training text paths
    heldout: list = field(default_factory=list)  # held-out text paths (bits per char at each eval)
    lang: str = "generic"
    text_field: str = "text"
    column: str | None = None
    clean: str = "none"
    out: str = ""                         # run directory: checkpoints, logs, final adapter
    cache_dir: str | None = None          # packed-block cache (default $LANGADAPT_HOME/blocks)
    cache_workers: int = 1                # processes tokenising files in parallel
    block_size: int = 1024
    stage: str = "lora"                   # embeddings | lora | full
    new_rows_only: bool = False           # embeddings/head: train only rows of tokens added by `model extend`
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8                   # blocks per device per step
    grad_accum: int = 1
    max_steps: int = -1                   # -1: run `epochs` epochs
    max_minutes: float = 0.0              # stop after this much training time (0: no limit)
    epochs: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 200                 # held-out bits per char every N steps (0: only at the end)
    save_steps: int = 200
    save_total_limit: int = 3
    heldout_max_chars: int = 20000
    seed: int = 42
    gradient_checkpointing: bool = True
    precision: str = "auto"               # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    dataloader_workers: int = 0
    resume: bool = False                  # continue from the newest complete checkpoint in `out`
    overwrite: bool = False               # start over in an existing `out`
    progress: bool = True


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}

HELP = {
    "model": "model dir, alias or .gguf to train (its tokenizer is used); e.g. the output of `model extend`",
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
    "max_grad_norm": "gradient clipping norm", "batch_size": "blocks per device per step",
    "grad_accum": "gradient accumulation steps", "max_steps": "optimizer steps (-1: use epochs)",
    "max_minutes": "stop once this many minutes of training have passed (held-out evaluation and "
                   "checkpoint saving not counted; 0: no limit); the lr schedule still follows max_steps",
    "epochs": "passes over the blocks when max_steps is -1", "logging_steps": "log the loss every N steps",
    "eval_steps": "held-out bits per char every N steps (0: only at the end)",
    "save_steps": "checkpoint every N steps", "save_total_limit": "checkpoints kept",
    "heldout_max_chars": "score at most this many held-out characters", "seed": "random seed (data order, LoRA init)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30% slower)",
    "precision": "auto (bf16 on GPU, fp32 on CPU), fp32 or bf16",
    "dataloader_workers": "DataLoader worker processes",
    "resume": "continue from the newest complete checkpoint in out",
    "overwrite": "delete an existing run in out and start over", "progress": "show progress bars",
}


def _type_of(name: str) -> type:
    default = Recipe().__dict__[name]
    if isinstance(default, bool):
        return bool
    if isinstance(default, list):
        return list
    if isinstance(default, (int, float)):
        return type(default)
    return str


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert one value to the type of `Recipe.<name>`."""
    kind = _type_of(name)
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


def unknown_key_error(key: str, where: str) -> LangadaptError:
    """'unknown key' with the nearest known key suggested."""
    near = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(FIELDS)}"
    return LangadaptError(f"{where}: unknown key '{key}'{hint}")


def recipe_from_dict(data: dict, where: str = "recipe", base: Recipe | None = None) -> Recipe:
    """A `Recipe` from a mapping (keys checked, values type-checked), over `base` or the defaults."""
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in FIELDS:
            raise unknown_key_error(key, where)
        values[key] = _coerce(key, value, where)
    recipe = Recipe(**values)
    validate(recipe, where)
    return recipe


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe and apply command-line overrides (None values are not overrides)."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LangadaptError(f"recipe {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise LangadaptError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise LangadaptError(f"{path}: expected a mapping of keys to values at the top level")
    where = str(path) if path else "command line"
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return recipe_from_dict(data, where)


def validate(r: Recipe, where: str) -> None:
    """Value checks that need no model or data."""
    if r.stage not in STAGES:
        raise LangadaptError(f"{where}: stage must be one of {', '.join(STAGES)}, got '{r.stage}'")
    if r.precision not in ("auto", "fp32", "bf16"):
        raise LangadaptError(f"{where}: precision must be auto, fp32 or bf16, got '{r.precision}'")
    for name in ("block_size", "batch_size", "grad_accum", "logging_steps", "save_steps", "lora_r", "cache_workers"):
        if getattr(r, name) < 1:
            raise LangadaptError(f"{where}: {name} must be a positive integer, got {getattr(r, name)}")
    if r.max_steps == 0 or r.max_steps < -1:
        raise LangadaptError(f"{where}: max_steps must be positive (or -1 to use epochs), got {r.max_steps}")
    if r.max_minutes < 0:
        raise LangadaptError(f"{where}: max_minutes must be 0 (no limit) or positive, got {r.max_minutes}")
    if not 0 <= r.lora_dropout < 1:
        raise LangadaptError(f"{where}: lora_dropout must be in [0, 1), got {r.lora_dropout}")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Add `--config` and a `--key` option for every recipe key (absent from the Namespace when not given)."""
    p.add_argument("--config", metavar="RECIPE.yaml", default=None, help="the recipe (YAML mapping)")
    defaults = Recipe()
    for name in FIELDS:
        kind, default = _type_of(name), getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        text = f"{HELP[name]} [recipe default: {default}]".replace("%", "%%")
        if kind is list:
            p.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, help=text)
        elif kind is bool:
            p.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="true|false", nargs="?",
                           const="true", help=text)
        else:
            p.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=text)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe of a `langadapt pretrain` command line."""
    return load_recipe(args.config, {name: getattr(args, name, None) for name in FIELDS})
