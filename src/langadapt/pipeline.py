"""`langadapt run`: the whole recipe from one YAML file.

A run recipe names the base model, the language, the data and one section per stage (see the
README, "Recipe format"). `plan` turns it into a list of steps, each an ordinary `langadapt`
command (so the plan can be printed, and every step re-run by hand):

    tokenizer merge|prune -> model extend|prune -> pretrain (each stage) -> merge -> sft -> merge
    -> tokenizer report + eval bpc of each model -> report.md

Each step has a signature: its command, the recipe it writes for `pretrain`/`sft`, and the
signatures of the earlier steps whose outputs it reads. `<out>/run-state.json` records the signature of every finished
step; a step whose output exists and whose signature matches is skipped, so an interrupted run
resumes, and a changed recipe redoes the changed step and everything after it. An interrupted
training step continues from its newest complete checkpoint.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import LangadaptError

SECTION_KEYS = {
    "": {"name", "description", "base", "lang", "out", "data", "tokenizer", "model", "pretrain", "sft", "eval"},
    "data": {"corpus", "heldout", "instructions", "instructions_note", "text_field", "column", "clean"},
    "tokenizer": {"method", "vocab_size", "add", "sample_sentences", "min_count", "compat"},
    "model": {"init", "pad_to_multiple_of"},
    "eval": {"max_chars", "context", "prompts", "max_new_tokens"},
}
TOKENIZER_METHODS = ("extend", "prune", "keep")
EVAL_DEFAULTS = {"max_chars": 20000, "context": 1024, "prompts": 3, "max_new_tokens": 64}
STATE_FILE = "run-state.json"


@dataclass
class Step:
    """One `langadapt` command of a run."""

    name: str
    argv: list[str]
    output: Path                      # exists once the step is done
    config: dict | None = None        # recipe written to <out>/recipes/<name>.yaml (pretrain, sft)
    signature: str = ""

    def command(self) -> str:
        return "langadapt " + " ".join(_quote(a) for a in self.argv)


def _quote(arg: str) -> str:
    return f"'{arg}'" if (not arg or any(c in arg for c in " '\"$*?")) else arg


# ----------------------------------------------------------------------------- recipe

def check_keys(section: dict, name: str, where: str) -> None:
    """Unknown keys of a recipe section: an error naming the nearest known key."""
    known = SECTION_KEYS[name]
    if not isinstance(section, dict):
        raise LangadaptError(f"{where}: '{name or 'the top level'}' must be a mapping of keys to values")
    for key in section:
        if key not in known:
            near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise LangadaptError(f"{where}: unknown key '{name + '.' if name else ''}{key}'{hint}")


def load_run_recipe(path: str | Path) -> dict:
    """Read and check the structure of a run recipe."""
    from langadapt.train.recipe import read_yaml_mapping

    path = Path(path)
    recipe = read_yaml_mapping(path, "run recipe")
    check_keys(recipe, "", str(path))
    for name in ("data", "tokenizer", "model", "eval"):
        check_keys(recipe.get(name) or {}, name, str(path))
    for key in ("base", "lang", "out"):
        if not recipe.get(key):
            raise LangadaptError(f"{path}: '{key}' is required")
    if not (recipe.get("data") or {}).get("corpus") and recipe.get("pretrain"):
        raise LangadaptError(f"{path}: data.corpus is required for the tokenizer and pretraining steps")
    method = (recipe.get("tokenizer") or {}).get("method", "extend")
    if method not in TOKENIZER_METHODS:
        raise LangadaptError(f"{path}: tokenizer.method must be one of {', '.join(TOKENIZER_METHODS)}, got '{method}'")
    if not isinstance(recipe.get("pretrain") or [], list):
        raise LangadaptError(f"{path}: 'pretrain' must be a list of stages (each a mapping of pretrain keys)")
    return recipe


def resolve_data_paths(values, out: Path, write: bool) -> list[str]:
    """Recipe data paths; `embedded:ko-instructions` is written to <out>/data (the corpus readers
    understand the other `embedded:` sets themselves)."""
    from langadapt.corpus.embedded import embedded_instructions
    from langadapt.outputs import write_json_atomic

    paths = []
    for value in [values] if isinstance(values, str) else (values or []):
        value = str(value)
        if value == "embedded:ko-instructions":
            target = out / "data" / "ko-instructions.json"
            if write and not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(target, embedded_instructions())
            paths.append(str(target))
        else:
            paths.append(value)
    return paths


# ----------------------------------------------------------------------------- plan

def plan(recipe: dict, recipe_path: Path, out: Path, write: bool = True) -> list[Step]:
    """The steps of a run recipe, in order, with their signatures."""
    from langadapt.train.recipe import Recipe, SftRecipe, recipe_from_dict

    where = str(recipe_path)
    base, lang = str(recipe["base"]), str(recipe["lang"])
    data = recipe.get("data") or {}
    corpus = resolve_data_paths(data.get("corpus"), out, write)
    heldout = resolve_data_paths(data.get("heldout"), out, write)
    reading = []
    for key, flag in (("text_field", "--field"), ("column", "--column"), ("clean", "--clean")):
        if data.get(key) is not None:
            reading += [flag, str(data[key])]
    tok_cfg, model_cfg = recipe.get("tokenizer") or {}, recipe.get("model") or {}
    method = tok_cfg.get("method", "extend")
    steps: list[Step] = []
    model = base

    if method == "extend":
        argv = ["tokenizer", "merge", "--base", base, "--lang", lang, "--out", str(out / "tokenizer"), *reading]
        if tok_cfg.get("add"):
            argv += ["--add", str(tok_cfg["add"])]
        else:
            if not tok_cfg.get("vocab_size"):
                raise LangadaptError(f"{where}: tokenizer.vocab_size (pieces to train) or tokenizer.add is required")
            argv += ["--corpus", *corpus, "--vocab-size", str(int(tok_cfg["vocab_size"]))]
        for key, flag in (("sample_sentences", "--sample-sentences"), ("compat", "--compat")):
            if tok_cfg.get(key) is not None:
                argv += [flag, str(tok_cfg[key])]
        steps.append(Step("tokenizer", argv, out / "tokenizer"))
        argv = ["model", "extend", "--base", base, "--tokenizer", str(out / "tokenizer"),
                "--init", str(model_cfg.get("init", "mean")), "--out", str(out / "model-extended")]
        if model_cfg.get("pad_to_multiple_of"):
            argv += ["--pad-to-multiple-of", str(int(model_cfg["pad_to_multiple_of"]))]
        steps.append(Step("model", argv, out / "model-extended"))
        model = str(out / "model-extended")
    elif method == "prune":
        argv = ["tokenizer", "prune", "--base", base, "--corpus", *corpus, "--lang", lang, *reading,
                "--min-count", str(int(tok_cfg.get("min_count", 1))), "--out", str(out / "tokenizer")]
        steps.append(Step("tokenizer", argv, out / "tokenizer"))
        steps.append(Step("model", ["model", "prune", "--base", base, "--tokenizer", str(out / "tokenizer"),
                                    "--out", str(out / "model-pruned")], out / "model-pruned"))
        model = str(out / "model-pruned")
    adapted_tokenizer = model
    models = [("base", base)] + ([("extended" if method == "extend" else "pruned", model)] if model != base else [])

    for i, stage_cfg in enumerate(recipe.get("pretrain") or []):
        if not isinstance(stage_cfg, dict):
            raise LangadaptError(f"{where}: pretrain[{i}] must be a mapping of pretrain keys")
        stage = stage_cfg.get("stage", "lora")
        name = f"pretrain-{stage}" if sum(s.get("stage", "lora") == stage for s in recipe["pretrain"]) == 1 \
            else f"pretrain-{i + 1}-{stage}"
        config = {"lang": lang, "heldout": heldout, **stage_cfg, "model": model, "corpus": corpus,
                  "out": str(out / name)}
        for key in ("text_field", "column", "clean"):
            if data.get(key) is not None:
                config.setdefault(key, data[key])
        recipe_from_dict(config, f"{where}: pretrain[{i}]", cls=Recipe)  # validates every key and value
        result = out / name / ("model" if stage == "full" else "adapter")
        steps.append(Step(name, ["pretrain", "--config", str(out / "recipes" / f"{name}.yaml")], result, config))
        model = str(result)
        if stage != "full":
            merged = out / f"model-{name}"
            steps.append(Step(f"merge-{name}", ["merge", "--adapter", str(result), "--out", str(merged)], merged))
            model = str(merged)
        models.append((name, model))

    if recipe.get("sft"):
        instructions = resolve_data_paths(data.get("instructions"), out, write)
        if not instructions:
            raise LangadaptError(f"{where}: data.instructions (instruction files) is required for the sft step")
        config = {**recipe["sft"], "model": model, "data": instructions, "out": str(out / "sft")}
        sft_recipe = recipe_from_dict(config, f"{where}: sft", cls=SftRecipe)
        result = out / "sft" / ("model" if sft_recipe.stage == "full" else "adapter")
        steps.append(Step("sft", ["sft", "--config", str(out / "recipes" / "sft.yaml")], result, config))
        model = str(result)
        if sft_recipe.stage != "full":
            steps.append(Step("merge-sft", ["merge", "--adapter", str(result), "--out", str(out / "model-sft")],
                              out / "model-sft"))
            model = str(out / "model-sft")
        models.append(("sft", model))

    ev = {**EVAL_DEFAULTS, **(recipe.get("eval") or {})}
    if heldout:
        evals = out / "eval"
        argv = ["tokenizer", "report", "--tokenizer", base, "--name", "base", "--corpus", *heldout, "--lang", lang,
                *reading, "--max-chars", str(ev["max_chars"]), "--json", str(evals / "tokenizers.json"),
                "--plot", str(evals / "tokenizers.png")]
        if adapted_tokenizer != base:
            argv += ["--tokenizer", adapted_tokenizer, "--name", "adapted"]
        steps.append(Step("eval-tokenizers", argv, evals / "tokenizers.json"))
        for label, path in models:
            steps.append(Step(f"eval-bpc-{label}", [
                "eval", "bpc", "--model", path, "--text", *heldout, "--lang", lang, "--max-chars",
                str(ev["max_chars"]), "--context", str(ev["context"]), "--stride", str(max(1, ev["context"] // 2)),
                "--json", str(evals / f"bpc-{label}.json")], evals / f"bpc-{label}.json"))
    steps.append(Step("report", ["(report)"], out / "report.md"))

    for i, step in enumerate(steps):
        uses = [earlier.signature for earlier in steps[:i] if _mentions(step, earlier.output)]
        blob = json.dumps([uses, step.argv, step.config], sort_keys=True, ensure_ascii=False)
        step.signature = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return steps


def _mentions(step: Step, path: Path) -> bool:
    """Whether `step` reads `path` (an argument or recipe value naming it or something inside it)."""
    values = list(step.argv)
    for value in (step.config or {}).values():
        values += value if isinstance(value, list) else [value]
    target = str(path)
    return any(str(v) == target or str(v).startswith(target + "/") for v in values)


# ----------------------------------------------------------------------------- run

def _read_state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"steps": {}}


def _write_state(out: Path, state: dict) -> None:
    from langadapt.outputs import write_json_atomic

    write_json_atomic(out / STATE_FILE, state)


def is_done(step: Step, state: dict) -> bool:
    """A step is done when its output exists and it finished with the same signature."""
    record = state["steps"].get(step.name) or {}
    return bool(record.get("done")) and record.get("signature") == step.signature and step.output.exists()


def run_cli(argv: list[str]) -> None:
    """Run one `langadapt` command in this process (errors propagate as exceptions)."""
    from langadapt.cli import build_parser

    args = build_parser().parse_args(argv)
    module, func = args._target.split(":")
    getattr(importlib.import_module(module), func)(args)


def _write_config(step: Step, out: Path, resume: bool) -> None:
    import yaml

    path = out / "recipes" / f"{step.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**step.config, "resume": resume, "overwrite": not resume}
    path.write_text(f"# written by `langadapt run` for step {step.name}; run it alone with: {step.command()}\n"
                    + yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def execute_step(step: Step, out: Path, state: dict, recipe: dict, steps: list[Step]) -> float:
    """Run one step (resuming an interrupted training step); return its seconds."""
    from langadapt.train.engine import latest_checkpoint

    start = time.time()
    if step.name == "report":
        from langadapt.report import write_report

        write_report(recipe, steps, out)
        return time.time() - start
    if step.config is not None:
        record = state["steps"].get(step.name) or {}
        resume = (record.get("signature") == step.signature and not record.get("done")
                  and latest_checkpoint(Path(step.config["out"]) / "checkpoints") is not None)
        _write_config(step, out, resume)
        if resume:
            print(f"  resuming from {latest_checkpoint(Path(step.config['out']) / 'checkpoints')}")
    argv = list(step.argv)
    if step.name.startswith("eval-"):
        step.output.parent.mkdir(parents=True, exist_ok=True)
    if step.config is None and step.argv[0] in ("tokenizer", "model", "merge") and step.argv[1] != "report":
        argv.append("--overwrite")  # an output with another signature is replaced (outputs are atomic)
    state["steps"][step.name] = {"signature": step.signature, "done": False, "command": step.command()}
    _write_state(out, state)
    run_cli(argv)
    seconds = time.time() - start
    state["steps"][step.name].update(done=True, seconds=round(seconds, 1))
    _write_state(out, state)
    return seconds


def check_plan(recipe: dict, steps: list[Step]) -> list[str]:
    """Dry-run checks beyond the recipe's own validation: inputs exist, formats are known."""
    from langadapt.corpus import expand_paths
    from langadapt.sources import ALIASES, looks_like_hub_id
    from langadapt.train.instructions import read_conversations

    notes = []
    base = str(recipe["base"])
    if base in ALIASES or Path(base).exists():
        notes.append(f"base model: {base} (local)")
    elif looks_like_hub_id(base):
        notes.append(f"base model: {base} (hub id: downloaded on first use, needs network and, for gated models, "
                     "a token)")
    else:
        raise LangadaptError(f"base '{base}' is neither a local path, an alias nor a hub id")
    data = recipe.get("data") or {}
    for key in ("corpus", "heldout"):
        if data.get(key):
            files = expand_paths(resolve_data_paths(data[key], Path("."), write=False))
            notes.append(f"data.{key}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    sft_step = next((s for s in steps if s.name == "sft"), None)
    if sft_step is not None:
        paths = [p for p in sft_step.config["data"] if Path(p).exists() or not p.endswith("ko-instructions.json")]
        if paths:
            _, stats = read_conversations(paths, skip_bad=bool(recipe["sft"].get("skip_bad")),
                                          fmt=recipe["sft"].get("data_format", "auto"))
            formats = sorted(set(stats.formats.values()))
            notes.append(f"data.instructions: {stats.conversations:,} conversations ({', '.join(formats)})")
        else:
            notes.append("data.instructions: derived from the embedded corpus when the run starts")
    return notes


def run_recipe(recipe_path: str | Path, out: str | None = None, dry_run: bool = False,
               from_step: str | None = None, overrides: dict | None = None) -> Path:
    """Run (or, with `dry_run`, check and print) a run recipe; return the report path."""
    recipe_path = Path(recipe_path)
    recipe = load_run_recipe(recipe_path)
    for dotted, value in (overrides or {}).items():  # e.g. {"pretrain.0.max_minutes": 2}
        _set_dotted(recipe, dotted, value)
    out_dir = Path(out or recipe["out"])
    steps = plan(recipe, recipe_path, out_dir, write=not dry_run)
    names = [s.name for s in steps]
    if from_step is not None and from_step not in names:
        raise LangadaptError(f"--from-step {from_step}: no such step; steps: {', '.join(names)}")
    state = _read_state(out_dir)
    if from_step is not None:
        for name in names[names.index(from_step):]:
            state["steps"].pop(name, None)

    print(f"run recipe {recipe_path}: {recipe.get('name', recipe_path.stem)}, base {recipe['base']}, "
          f"language {recipe['lang']}, out {out_dir}")
    if dry_run:
        for note in check_plan(recipe, steps):
            print(f"  ok  {note}")
    width = max(len(n) for n in names)
    for i, step in enumerate(steps, 1):
        status = "done" if is_done(step, state) else "to run"
        print(f"  {i:>2}. {step.name:<{width}}  [{status}]  {step.command() if step.name != 'report' else 'write ' + str(step.output)}")
    if dry_run:
        print("dry run: recipe, paths and hyperparameters are valid; nothing was trained")
        return out_dir / "report.md"

    out_dir.mkdir(parents=True, exist_ok=True)
    state["recipe"] = str(recipe_path)
    total = time.time()
    for i, step in enumerate(steps, 1):
        if step.name != "report" and is_done(step, state):
            print(f"\n[{i}/{len(steps)}] {step.name}: done before, skipped")
            continue
        print(f"\n[{i}/{len(steps)}] {step.name}: {step.command() if step.name != 'report' else 'report.md'}",
              flush=True)
        seconds = execute_step(step, out_dir, state, recipe, steps)
        print(f"  {step.name} finished in {seconds:.0f} s", flush=True)
    print(f"\nrun finished in {(time.time() - total) / 60:.1f} min; report: {out_dir / 'report.md'}")
    return out_dir / "report.md"


def _set_dotted(recipe: dict, dotted: str, value) -> None:
    node = recipe
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value


def run_command(args) -> int:
    """`langadapt run RECIPE.yaml`."""
    run_recipe(args.recipe, out=args.out, dry_run=args.dry_run, from_step=args.from_step)
    return 0

