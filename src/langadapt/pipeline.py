"""`langadapt run`: the whole recipe from one YAML file.

A run recipe names the base model, the language, the data and one section per stage (README,
"Recipe format"). `plan` turns it into steps, each a `langadapt` command with its options
object, built and checked up front (so `--dry-run` is exactly "build and check every step"):

    tokenizer merge|prune -> model extend|prune -> pretrain (each stage) -> merge -> sft -> merge
    [-> the control arm: pretrain lora on the base with the same tokens -> merge -> sft -> merge]
    -> tokenizer report, eval bpc of each model, eval generate (sample answers) -> report.md

Each step has a signature: its command and options, and the signatures of the earlier steps
whose outputs it reads. `<out>/run-state.json` records the signature of every finished step; a
step whose output exists and whose signature matches is skipped, so an interrupted run resumes,
and a changed recipe redoes the changed step and everything that reads its output. An
interrupted training step continues from its newest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from langadapt.commands import find
from langadapt.corpus import ReadingOptions, expand_paths
from langadapt.corpus.embedded import embedded_instructions
from langadapt.errors import LangadaptError
from langadapt.eval.bpc import EvalBpcOptions
from langadapt.eval.generate import EvalGenerateOptions
from langadapt.eval.mc import EvalMcOptions
from langadapt.export.gguf import ExportGgufOptions
from langadapt.model.extend import ModelExtendOptions
from langadapt.model.prune import ModelPruneOptions
from langadapt.options import (Options, OptionError, embed, from_mapping, option, read_yaml_mapping, to_argv,
                               to_mapping, unknown_key_error)
from langadapt.outputs import OutputOptions, write_json_atomic
from langadapt.run_report import write_report
from langadapt.sources import ALIASES, looks_like_hub_id
from langadapt.tokenizer.merge import TokenizerMergeOptions
from langadapt.tokenizer.prune import TokenizerPruneOptions
from langadapt.tokenizer.report import TokenizerReportOptions
from langadapt.train.engine import latest_checkpoint
from langadapt.train.instructions import read_conversations
from langadapt.train.merge import MergeOptions
from langadapt.train.recipe import PretrainOptions, SftOptions

TOP_KEYS = ("name", "description", "base", "lang", "out", "data", "tokenizer", "model", "pretrain", "sft",
            "control", "eval", "export")
TOKENIZER_METHODS = ("extend", "prune", "keep")
STATE_FILE = "run-state.json"


@dataclass
class DataOptions(Options):
    """The `data:` section: where the text is and how to read it (the language is the recipe's `lang`)."""

    corpus: list[str] = option([], help="tokenizer and pretraining text")
    heldout: list[str] = option([], help="never trained on: bits per char, tokenizer report")
    instructions: list[str] = option([], help="instruction files for sft")
    instructions_note: str | None = option(None, help="where the instruction data comes from (shown in the report)")
    reading: ReadingOptions = embed(ReadingOptions)


@dataclass
class EvalOptions(Options):
    """The `eval:` section: how the models are compared."""

    max_chars: int = option(20000, help="held-out characters scored")
    context: int = option(1024, help="scoring window (tokens)")
    stride: int | None = option(None, help="tokens the scoring window moves by (default: context / 2)")
    prompts: int = option(3, help="held-out instructions answered by each model (sample answers, generation speed)")
    max_new_tokens: int = option(64, help="tokens per sample answer")
    repetition_penalty: float = option(1.0, help="repetition penalty of the sample answers (1: none)")
    intermediate: bool = option(True, help="also score the models between steps (after model extend and each "
                                           "pretrain stage), not only the base and each arm's final model")
    mc: list[str] = option([], help="multiple-choice files or folders (eval mc) asked of every arm")
    mc_shots: int = option(0, help="shots per multiple-choice question (from the dev split)")
    mc_preset: str = option("cmmlu", help="multiple-choice prompt preset (eval mc --preset)")
    mc_limit: int = option(0, help="multiple-choice questions per subject (0: all)")
    tasks: list[str] = option([], help="generation task files (eval generate: ROUGE-L / exact match per task)")
    tasks_limit: int = option(20, help="answers per generation task")


@dataclass
class Step:
    """One `langadapt` command of a run."""

    name: str
    command: str                  # e.g. "tokenizer merge"
    options: Options
    output: Path                  # exists once the step is done
    signature: str = ""

    def argv(self) -> list[str]:
        return self.command.split() + to_argv(self.options)

    def text(self) -> str:
        return "langadapt " + " ".join(_quote(a) for a in self.argv())

    @property
    def trains(self) -> bool:
        return self.command in ("pretrain", "sft")

    @property
    def writes(self) -> str:
        """Where the step writes: its run directory for a training step, else its output."""
        return str(self.options.out if self.trains else self.output)


def _quote(arg: str) -> str:
    return f"'{arg}'" if (not arg or any(c in arg for c in " '\"$*?")) else arg


# ----------------------------------------------------------------------------- the recipe

def load_run_recipe(path: str | Path) -> dict:
    """A run recipe's top-level mapping, its keys checked (the sections are checked by `plan`)."""
    path = Path(path)
    recipe = read_yaml_mapping(path, "run recipe")
    for key in recipe:
        if key not in TOP_KEYS:
            raise unknown_key_error(str(key), list(TOP_KEYS), str(path))
    for key in ("base", "lang", "out"):
        if not recipe.get(key):
            raise LangadaptError(f"{path}: '{key}' is required")
    if not isinstance(recipe.get("pretrain") or [], list):
        raise LangadaptError(f"{path}: 'pretrain' must be a list of stages (each a mapping of pretrain keys)")
    return recipe


def _section(cls: type, given, filled: dict, where: str, section: str):
    """A step's options from a recipe section (`given`) plus what the run fills in; keys the run fills in
    may not be given."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise LangadaptError(f"{where}: {section}: must be a mapping of keys to values")
    for key in given:
        if key in filled:
            raise LangadaptError(f"{where}: {section}: '{key}' is set by `langadapt run`, not in the recipe")
    return from_mapping(cls, {**given, **filled}, where, section=section)


def resolve_data_paths(values: list[str], out: Path, write: bool) -> list[str]:
    """Recipe data paths; `embedded:ko-instructions` is written to <out>/data (the corpus readers
    understand the other `embedded:` sets themselves)."""
    paths = []
    for value in values:
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
    """The steps of a run recipe, in order, every options object built and checked, with signatures."""
    where = str(recipe_path)
    base, lang = str(recipe["base"]), str(recipe["lang"])
    data_section = dict(recipe.get("data") or {})
    if "lang" in data_section:
        raise LangadaptError(f"{where}: data: 'lang' is set at the top level of the recipe")
    data = from_mapping(DataOptions, {**data_section, "lang": lang}, where, section="data")
    reading = to_mapping(data.reading)
    corpus = resolve_data_paths(data.corpus, out, write)
    heldout = resolve_data_paths(data.heldout, out, write)
    evals = from_mapping(EvalOptions, recipe.get("eval") or {}, where, section="eval")
    replace = {"overwrite": True}  # a step's output with another signature is replaced (outputs are atomic)
    steps: list[Step] = []

    tok_section = dict(recipe.get("tokenizer") or {})
    method = tok_section.pop("method", "extend")
    if method not in TOKENIZER_METHODS:
        raise LangadaptError(f"{where}: tokenizer.method must be one of {', '.join(TOKENIZER_METHODS)}, got '{method}'")
    if method != "keep" and not corpus:
        raise LangadaptError(f"{where}: data.corpus is required for tokenizer.method {method}")
    model = base
    if method == "extend":
        filled = {"base": base, "out": str(out / "tokenizer"), **replace, **reading,
                  **({} if tok_section.get("add") else {"corpus": corpus})}
        steps.append(Step("tokenizer", "tokenizer merge", _section(TokenizerMergeOptions, tok_section, filled, where,
                                                                   "tokenizer"), out / "tokenizer"))
        model = str(out / "model-extended")
        filled = {"base": base, "tokenizer": str(out / "tokenizer"), "out": model, "corpus": corpus, **reading,
                  **replace}
        steps.append(Step("model", "model extend", _section(ModelExtendOptions, recipe.get("model"), filled, where,
                                                            "model"), Path(model)))
    elif method == "prune":
        filled = {"base": base, "corpus": corpus, "out": str(out / "tokenizer"), **replace, **reading}
        steps.append(Step("tokenizer", "tokenizer prune", _section(TokenizerPruneOptions, tok_section, filled, where,
                                                                   "tokenizer"), out / "tokenizer"))
        model = str(out / "model-pruned")
        filled = {"base": base, "tokenizer": str(out / "tokenizer"), "out": model, **replace}
        steps.append(Step("model", "model prune", _section(ModelPruneOptions, recipe.get("model"), filled, where,
                                                           "model"), Path(model)))
    adapted_tokenizer = model
    models = [("base", base)] + ([("extended" if method == "extend" else "pruned", model)] if model != base else [])

    stages = recipe.get("pretrain") or []
    names = [s.get("stage", "lora") if isinstance(s, dict) else "" for s in stages]
    for i, stage_section in enumerate(stages):
        name = f"pretrain-{names[i]}" if names.count(names[i]) == 1 else f"pretrain-{i + 1}-{names[i]}"
        filled = {"model": model, "corpus": corpus, "heldout": heldout, "out": str(out / name), **reading}
        model = _train(steps, name, "pretrain", _section(PretrainOptions, stage_section, filled, where,
                                                         f"pretrain[{i}]"), out)
        models.append((name, model))

    sft_section = recipe.get("sft")
    instructions = resolve_data_paths(data.instructions, out, write)
    if sft_section is not None:
        if not instructions:
            raise LangadaptError(f"{where}: data.instructions (instruction files) is required for the sft step")
        filled = {"model": model, "data": instructions, "out": str(out / "sft")}
        sft = _section(SftOptions, sft_section, filled, where, "sft")
        model = _train(steps, "sft", "sft", sft, out)
        models.append(("sft", model))
    arms = [("base", base), ("adapted", model)]

    control = recipe.get("control")
    if control is not None:
        arm = _control_arm(steps, control, base, corpus, heldout, reading, sft_section, instructions, where, out)
        models.append(("control", arm))
        arms.append(("control", arm))

    if heldout:
        report_filled = {"tokenizer": [base] + ([adapted_tokenizer] if adapted_tokenizer != base else []),
                         "name": ["base"] + (["adapted"] if adapted_tokenizer != base else []),
                         "corpus": heldout, **reading, "max_chars": evals.max_chars,
                         "json": str(out / "eval" / "tokenizers.json"), "plot": str(out / "eval" / "tokenizers.png")}
        steps.append(Step("eval-tokenizers", "tokenizer report", from_mapping(TokenizerReportOptions, report_filled,
                                                                              where), out / "eval" / "tokenizers.json"))
        scored = models if evals.intermediate else [(label, path) for label, path in models
                                                    if path in dict(arms).values()]
        for label, path in scored:
            result = out / "eval" / f"bpc-{label}.json"
            steps.append(Step(f"eval-bpc-{label}", "eval bpc", EvalBpcOptions(
                model=path, text=heldout, reading=ReadingOptions(**reading), max_chars=evals.max_chars,
                context=evals.context, stride=evals.stride or max(1, evals.context // 2), json=str(result)), result))
    if sft_section is not None and evals.prompts > 0 and (sft.heldout or sft.heldout_share > 0):
        for label, path in arms:
            result = out / "eval" / f"generate-{label}.json"
            steps.append(Step(f"eval-generate-{label}", "eval generate", EvalGenerateOptions(
                model=path, data=[str(out / "sft" / "heldout.jsonl")], reading=ReadingOptions(**reading),
                limit=evals.prompts, max_new_tokens=evals.max_new_tokens,
                repetition_penalty=evals.repetition_penalty, json=str(result)), result))
    steps += eval_suite_steps(evals, arms, reading, out)
    if recipe.get("export") is not None:
        steps.append(_export_step(recipe["export"], model, where, out))
    _sign(steps)
    return steps


def eval_suite_steps(evals: EvalOptions, arms: list[tuple[str, str]], reading: dict, out: Path) -> list[Step]:
    """`eval mc` (eval.mc) and `eval generate` on task files (eval.tasks) for each arm (base, adapted, control)."""
    steps = []
    for label, path in arms:
        if evals.mc:
            result = out / "eval" / f"mc-{label}.json"
            steps.append(Step(f"eval-mc-{label}", "eval mc", EvalMcOptions(
                model=path, data=list(evals.mc), shots=evals.mc_shots, preset=evals.mc_preset, limit=evals.mc_limit,
                json=str(result), predictions=str(result.with_suffix(".jsonl"))), result))
        if evals.tasks:
            result = out / "eval" / f"tasks-{label}.json"
            steps.append(Step(f"eval-tasks-{label}", "eval generate", EvalGenerateOptions(
                model=path, data=list(evals.tasks), reading=ReadingOptions(**reading), limit=evals.tasks_limit,
                max_new_tokens=evals.max_new_tokens, json=str(result), predictions=str(result.with_suffix(".jsonl"))),
                result))
    return steps


def _train(steps: list[Step], name: str, command: str, options, out: Path) -> str:
    """Add a training step (and, for an adapter, its merge); return the resulting model dir."""
    result = out / name / ("model" if options.stage == "full" else "adapter")
    steps.append(Step(name, command, options, result))
    if options.stage == "full":
        return str(result)
    merged = out / f"model-{name}"
    steps.append(Step(f"merge-{name}", "merge", MergeOptions(adapter=str(result), output=OutputOptions(
        out=str(merged), overwrite=True)), merged))
    return str(merged)


def _control_arm(steps: list[Step], section, base: str, corpus: list[str], heldout: list[str], reading: dict,
                 sft_section, instructions: list[str], where: str, out: Path) -> str:
    """The control arm: the base with its own vocabulary, LoRA-trained on the same corpus for the same
    number of tokens as every pretrain stage of the adapted arm together, then the same sft."""
    section = {} if section is True else section
    if not isinstance(section, dict):
        raise LangadaptError(f"{where}: control: must be true or a mapping of pretrain keys for the control arm")
    stages = [s.options for s in steps if s.command == "pretrain"]
    if not stages:
        raise LangadaptError(f"{where}: control: needs pretrain stages to match")
    filled = {"model": base, "corpus": corpus, "heldout": heldout, "out": str(out / "pretrain-control"), **reading,
              "max_tokens": sum(_budget_tokens(s, where) for s in stages)}
    # bpe_dropout is for a tokenizer extended on the corpus; on the base vocabulary it costs the
    # control arm 0.08 bits/char (docs/benchmarks.md), so the control trains on the plain cut.
    inherited = {k: v for k, v in to_mapping(stages[-1]).items()
                 if k not in filled and k not in ("max_steps", "epochs", "new_rows_only", "bpe_dropout", "resume",
                                                  "overwrite")}
    options = _section(PretrainOptions, {**inherited, "stage": "lora", **section}, filled, where, "control")
    model = _train(steps, "pretrain-control", "pretrain", options, out)
    if sft_section is not None:
        filled = {"model": model, "data": instructions, "out": str(out / "sft-control")}
        model = _train(steps, "sft-control", "sft", _section(SftOptions, sft_section, filled, where, "sft"), out)
    return model


def _export_step(section, model: str, where: str, out: Path) -> Step:
    """The adapted model as a GGUF file for llama.cpp/Ollama: `export: {gguf: TYPE}` plus any export gguf key."""
    if not isinstance(section, dict):
        raise LangadaptError(f"{where}: export: must be a mapping, e.g. {{gguf: q8_0}}")
    section = dict(section)
    kind = section.pop("gguf", "q8_0")
    path = out / "export" / f"model.{kind}.gguf"
    filled = {"model": model, "out": str(path), "overwrite": True}
    return Step("export-gguf", "export gguf", _section(ExportGgufOptions, {"type": kind, **section}, filled, where,
                                                       "export"), path)


def _budget_tokens(options: PretrainOptions, where: str) -> int:
    """The tokens a pretrain stage trains on, known before it runs (max_tokens, or max_steps x tokens per step)."""
    if options.max_tokens:
        return options.max_tokens
    if options.max_steps > 0:
        return options.max_steps * options.batch_size * options.grad_accum * options.block_size
    raise LangadaptError(f"{where}: control: the pretrain stages must be budgeted in max_tokens or max_steps, so "
                         "that the control arm can train on as many tokens")


def _sign(steps: list[Step]) -> None:
    """Each step's signature: its command and options, and the signatures of the steps whose outputs it reads."""
    for i, step in enumerate(steps):
        options = to_mapping(step.options)
        values = [str(v) for value in options.values() for v in (value if isinstance(value, list) else [value])]
        uses = [e.signature for e in steps[:i] if any(v == e.writes or v.startswith(e.writes + "/") for v in values)]
        blob = json.dumps([uses, step.command, options], sort_keys=True, ensure_ascii=False)
        step.signature = hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- checks (--dry-run)

def check_inputs(recipe: dict, recipe_path: Path, steps: list[Step]) -> list[str]:
    """What `--dry-run` checks beyond the options: the base exists, the data paths exist, formats are known."""
    where = str(recipe_path)
    base = str(recipe["base"])
    if base in ALIASES or Path(base).exists():
        notes = [f"base model: {base} (local)"]
    elif looks_like_hub_id(base):
        notes = [f"base model: {base} (hub id: downloaded on first use, needs network and, for gated models, a token)"]
    else:
        raise LangadaptError(f"{where}: base '{base}' is neither a local path, an alias nor a hub id")
    data = recipe.get("data") or {}
    for key in ("corpus", "heldout"):
        if data.get(key):
            try:
                files = expand_paths(data[key])
            except LangadaptError as e:
                raise LangadaptError(f"{where}: data: {key}: {e}") from e
            notes.append(f"data.{key}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    sft = next((s.options for s in steps if s.name == "sft"), None)
    if sft is not None:
        files = [p for p in sft.data if not p.endswith("data/ko-instructions.json")]
        if files:
            try:
                _, stats = read_conversations(files, skip_bad=sft.skip_bad, fmt=sft.data_format)
            except LangadaptError as e:
                raise LangadaptError(f"{where}: data: instructions: {e}") from e
            notes.append(f"data.instructions: {stats.conversations:,} conversations "
                         f"({', '.join(sorted(set(stats.formats.values())))})")
        else:
            notes.append("data.instructions: derived from the embedded corpus when the run starts")
    return notes


# ----------------------------------------------------------------------------- run

def _read_state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"steps": {}}


def is_done(step: Step, state: dict) -> bool:
    """A step is done when its output exists and it finished with the same signature."""
    record = state["steps"].get(step.name) or {}
    return bool(record.get("done")) and record.get("signature") == step.signature and step.output.exists()


def execute_step(step: Step, out: Path, state: dict) -> float:
    """Run one step in this process (an interrupted training step resumes); return its seconds."""
    start = time.time()
    options = step.options
    if step.trains:
        record = state["steps"].get(step.name) or {}
        checkpoint = latest_checkpoint(Path(options.out) / "checkpoints")
        resume = record.get("signature") == step.signature and not record.get("done") and checkpoint is not None
        options = dataclasses.replace(options, resume=resume, overwrite=not resume)
        if resume:
            print(f"  resuming from {checkpoint}")
        _write_accelerate_recipe(step, options, out)
    elif step.name.startswith("eval-"):
        step.output.parent.mkdir(parents=True, exist_ok=True)
    state["steps"][step.name] = {"signature": step.signature, "done": False, "command": step.text()}
    write_json_atomic(out / STATE_FILE, state)
    find(step.command).run(options)
    seconds = time.time() - start
    state["steps"][step.name].update(done=True, seconds=round(seconds, 1))
    write_json_atomic(out / STATE_FILE, state)
    return seconds


def _write_accelerate_recipe(step: Step, options, out: Path) -> None:
    """<out>/recipes/<step>.yaml: the training step as a recipe, for `accelerate launch` on many GPUs."""
    path = out / "recipes" / f"{step.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# step {step.name} of `langadapt run`; on several GPUs: accelerate launch --config_file "
                    f"configs/accelerate/ddp.yaml -m langadapt.cli {step.command} --config {path}\n"
                    + yaml.safe_dump(to_mapping(options), allow_unicode=True, sort_keys=False), encoding="utf-8")


def run_recipe(recipe_path: str | Path, out: str | None = None, dry_run: bool = False,
               from_step: str | None = None, overrides: dict | None = None) -> Path:
    """Run (or, with `dry_run`, check and print) a run recipe; return the report path."""
    recipe_path = Path(recipe_path)
    recipe = load_run_recipe(recipe_path)
    for dotted, value in (overrides or {}).items():  # e.g. {"pretrain.0.max_tokens": 20000}
        _set_dotted(recipe, dotted, value)
    out_dir = Path(out or recipe["out"])
    steps = plan(recipe, recipe_path, out_dir, write=not dry_run)
    names = [s.name for s in steps] + ["report"]
    if from_step is not None and from_step not in names:
        raise LangadaptError(f"--from-step {from_step}: no such step; steps: {', '.join(names)}")
    state = _read_state(out_dir)
    if from_step is not None:
        for name in names[names.index(from_step):]:
            state["steps"].pop(name, None)

    print(f"run recipe {recipe_path}: {recipe.get('name', recipe_path.stem)}, base {recipe['base']}, "
          f"language {recipe['lang']}, out {out_dir}")
    if dry_run:
        for note in check_inputs(recipe, recipe_path, steps):
            print(f"  ok  {note}")
    width = max(map(len, names))
    for i, step in enumerate(steps, 1):
        print(f"  {i:>2}. {step.name:<{width}}  [{'done' if is_done(step, state) else 'to run'}]  {step.text()}")
    print(f"  {len(names):>2}. {'report':<{width}}  [to run]  write {out_dir / 'report.md'}")
    if dry_run:
        print("dry run: recipe, paths and hyperparameters are valid; nothing was trained")
        return out_dir / "report.md"

    out_dir.mkdir(parents=True, exist_ok=True)
    state["recipe"] = str(recipe_path)
    total = time.time()
    for i, step in enumerate(steps, 1):
        if is_done(step, state):
            print(f"\n[{i}/{len(names)}] {step.name}: done before, skipped")
            continue
        print(f"\n[{i}/{len(names)}] {step.name}: {step.text()}", flush=True)
        seconds = execute_step(step, out_dir, state)
        print(f"  {step.name} finished in {seconds:.0f} s", flush=True)
    print(f"\n[{len(names)}/{len(names)}] report: {out_dir / 'report.md'}")
    write_report(recipe, steps, out_dir)
    print(f"\nrun finished in {(time.time() - total) / 60:.1f} min; report: {out_dir / 'report.md'}")
    return out_dir / "report.md"


def _set_dotted(recipe: dict, dotted: str, value) -> None:
    node = recipe
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value


@dataclass
class RunOptions(Options):
    """Run every step of a run recipe (see recipes/ and the README's 'Recipe format'): train and merge (or
    prune) the tokenizer, extend (or prune) the model, continued pretraining (stage embeddings, then lora),
    merge, instruction tuning, merge, an optional control arm, and an evaluation (tokenizer report, held-out
    bits per char of every model, sample answers and generation speed). Writes <out>/report.md with tables and
    PNG plots. A step whose output exists and was made from the same recipe is skipped, so an interrupted run
    resumes where it stopped."""

    recipe: str = option(None, metavar="RECIPE.yaml", positional=True, required=True, help="the run recipe")
    dry_run: bool = option(False, help="build and check every step (paths, formats, every hyperparameter), print "
                                       "the plan, train nothing")
    out: str | None = option(None, metavar="DIR", help="override the recipe's out")
    from_step: str | None = option(None, metavar="STEP", help="redo this step and every later one")


def run_command(opts: RunOptions) -> int:
    """Run (or check) a run recipe."""
    run_recipe(opts.recipe, out=opts.out, dry_run=opts.dry_run, from_step=opts.from_step)
    return 0
