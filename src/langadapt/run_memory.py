"""The memory plan of a run's training steps (`run --dry-run`, `--plan-json`): `train.memory`'s
arithmetic on each step's model config.json, found without running anything: a model directory's own
file, a hub model's (built-in sizes, the hub cache, or a download of config.json alone), or, for a model
an earlier step will make, that step's input (an extension is its base with the new rows)."""

from __future__ import annotations

import json
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.sources import ALIASES, looks_like_hub_id


def _planned_config(model: str, steps: list, hub: dict) -> tuple[dict, int] | None:
    """(config.json, added rows) of the model a step trains, without loading it: read from its directory,
    or, when an earlier step of the run makes it, from that step's input (an extension adds its
    tokenizer's new tokens: the tokenizer's size once it exists, else at most the merge's vocab_size).
    `hub` holds the hub configs looked up so far (one lookup per id)."""
    from langadapt.sources import resolve_model_source

    maker = next((s for s in steps if str(s.output) == str(model) and not s.trains), None)
    if maker is None:
        trained = next((s for s in steps if s.trains and str(model).startswith(str(s.options.out))), None)
        if trained is not None:
            return _planned_config(trained.options.model, steps, hub)
        if looks_like_hub_id(model) and not Path(model).exists() and model not in ALIASES:
            if model not in hub:
                hub[model] = _hub_config(model)
            return (hub[model], 0) if hub[model] else None
        try:
            return json.loads((Path(resolve_model_source(model)) / "config.json").read_text(encoding="utf-8")), 0
        except (LangadaptError, OSError, ValueError):
            return None
    if maker.command == "merge":
        adapter = str(maker.options.adapter)
        trained = next((s for s in steps if s.trains and adapter.startswith(str(s.options.out))), None)
        return _planned_config(trained.options.model, steps, hub) if trained else None
    if maker.command == "model extend":
        base = _planned_config(maker.options.base, steps, hub)
        if base is None:
            return None
        tokenizer = Path(maker.options.tokenizer)
        if (tokenizer / "tokenizer.json").is_file():
            from langadapt.tokenizer.load import load_tokenizer

            added = len(load_tokenizer(str(tokenizer))) - base[0].get("vocab_size", 0)
        else:
            merge = next((s for s in steps if str(s.output) == str(tokenizer)), None)
            added = getattr(merge.options, "vocab_size", None) or 0 if merge else 0
        unties = maker.options.init in ("fit", "distill")  # they fit or distil an untied LM head
        config = base[0] | {"vocab_size": base[0]["vocab_size"] + max(added, 0)}
        return (config | {"tie_word_embeddings": False} if unties else config), max(added, 0)
    return None


def _hub_config(repo: str) -> dict | None:
    """A hub model's config.json sizes (no weights): `model.known_configs`, else the hub cache, else one
    download; None when none of them has it (offline)."""
    from langadapt.model.known_configs import KNOWN_CONFIGS

    if repo in KNOWN_CONFIGS:
        return KNOWN_CONFIGS[repo]
    from transformers import AutoConfig

    for local_only in (True, False):
        try:
            return AutoConfig.from_pretrained(repo, local_files_only=local_only).to_dict()
        except (OSError, ValueError):
            continue
    return None


def memory_plans(steps: list, world_size: int = 1, zero_stage: int = 0) -> list[dict]:
    """The planned peak memory per device of every training step (`train.memory`), with the tokens it
    processes; a step whose model config cannot be read without running earlier steps says so."""
    from langadapt.train.memory import ModelShape, memory_plan, training_shape

    plans, hub = [], {}
    for step in steps:
        if not step.trains:
            continue
        o = step.options
        found = _planned_config(o.model, steps, hub)
        entry = {"name": step.name, "tokens": o.max_tokens or None}
        if found is None:
            plans.append({**entry, "memory_gib": None, "why": f"no config.json for {o.model} before earlier steps run"})
            continue
        config, added = found
        try:
            shape = ModelShape.from_config(config)
        except ValueError as e:
            plans.append({**entry, "memory_gib": None, "why": str(e)})
            continue
        plan = memory_plan(shape, training_shape(o, added_rows=added, world_size=world_size, zero_stage=zero_stage))
        plans.append({**entry, "memory_gib": {k: plan[k] for k in ("weights", "trainable", "optimizer", "activations",
                                                                    "total")},
                      "params": plan["params"], "trainable_params": plan["trainable_params"]})
    return plans


def print_memory_plans(plans: list[dict]) -> None:
    if not plans:
        return
    print("memory plan, peak per device (GiB; train/memory.py: no runtime overhead):")
    for p in plans:
        m = p["memory_gib"]
        tokens = f"{p['tokens']:,} tokens" if p["tokens"] else "epochs"
        if m is None:
            print(f"  {p['name']}: {p['why']}")
            continue
        print(f"  {p['name']}: {m['total']:.2f} = weights {m['weights']:.2f} + trainable and gradients "
              f"{m['trainable']:.2f} + optimizer {m['optimizer']:.2f} + activations {m['activations']:.2f}; "
              f"{p['trainable_params']:,} of {p['params']:,} parameters train; {tokens}")
