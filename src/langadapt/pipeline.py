"""`langadapt run`: the whole recipe from one YAML file.

A run recipe names the base model, the language, the data and one section per stage (README,
"Recipe format"), and optionally `arms:`, named variants of those sections (`langadapt.arms`).
`plan_run` turns it into steps, each a `langadapt` command with its options object, built and
checked up front (so `--dry-run` is exactly "build and check every step"). For each arm:

    tokenizer merge|prune -> model extend|prune -> pretrain (each stage) -> merge -> sft -> merge

(the control arm: pretrain lora on the base with the same tokens -> merge -> sft -> merge; a step
that an earlier arm already planned with the same command and options is not planned again, so
arms share it), then for every arm, `base` included:

    tokenizer report, eval bpc, eval generate (sample answers, speed), eval mc/tasks -> report.md

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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from langadapt.arms import ArmSpec, arm_specs
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
from langadapt.outputs import OutputOptions, atomic_output_file, write_json_atomic
from langadapt.run_memory import memory_plans, print_memory_plans
from langadapt.run_report import write_report
from langadapt.sources import ALIASES, looks_like_hub_id
from langadapt.tokenizer.merge import TokenizerMergeOptions
from langadapt.tokenizer.prune import TokenizerPruneOptions
from langadapt.tokenizer.report import TokenizerReportOptions
from langadapt.train.engine import latest_checkpoint
from langadapt.train.instructions import read_conversations
from langadapt.train.launch import (STRATEGIES, ZERO_STAGES, DistributedOptions, accelerate_config, check_distributed,
                                    launch_argv, launched_from_outside, visible_gpus)
from langadapt.train.merge import MergeOptions
from langadapt.train.recipe import PretrainOptions, SftOptions

TOP_KEYS = ("name", "description", "base", "lang", "out", "data", "tokenizer", "model", "pretrain", "sft",
            "arms", "budget", "control", "eval", "export", "distributed")
BUDGETS = ("tokens", "characters")
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
    curve_points: int = option(4, help="held-out scores during each arm's pretraining, at equal intervals of training "
                                       "tokens, plus one before the first step: the learning curves and the break-even "
                                       "of the report (sets eval_steps of the stages that do not set it; 0: none)")
    verdict_tolerance: float = option(0.10, help="the verdict names the fastest arm within this many bits/char of "
                                                 "the best")

    def __post_init__(self):
        super().__post_init__()
        if self.curve_points < 0:
            raise OptionError("curve_points", f"must be 0 or positive, got {self.curve_points}")
        if self.verdict_tolerance < 0:
            raise OptionError("verdict_tolerance", f"must be 0 or positive, got {self.verdict_tolerance}")


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

@dataclass
class Arm:
    """A planned arm: its final model and the steps that made it (see `langadapt.arms`)."""

    name: str
    model: str                    # its final model (the base model itself for `base`)
    tokenizer: str                # the model dir whose tokenizer it uses
    stages: list[str] = field(default_factory=list)    # its pretrain steps, in order (shared ones included)
    training: list[str] = field(default_factory=list)  # every training step it depends on
    scored: list[tuple[str, str]] = field(default_factory=list)  # (label, model) scored before its final model
    control: bool = False


@dataclass
class RunPlan:
    steps: list[Step]
    arms: list[Arm]
    evals: EvalOptions


@dataclass
class _Context:
    """What every arm of a run shares."""

    where: str
    out: Path
    base: str
    corpus: list[str]
    heldout: list[str]
    reading: dict
    instructions: list[str]
    evals: EvalOptions
    steps: list[Step] = field(default_factory=list)
    keys: dict = field(default_factory=dict)      # content key -> step (a step two arms share runs once)
    budget: int | None = None                     # training tokens of every arm's pretrain stages together
    budget_in_characters: bool = False            # those tokens counted in the base tokenizer's tokens


def plan(recipe: dict, recipe_path: Path, out: Path, write: bool = True) -> list[Step]:
    """The steps of a run recipe, in order, every options object built and checked, with signatures."""
    return plan_run(recipe, recipe_path, out, write).steps


def plan_run(recipe: dict, recipe_path: Path, out: Path, write: bool = True) -> RunPlan:
    """The steps and arms of a run recipe: each arm's steps (those two arms share planned once), then the
    evaluation of every arm, the report's inputs."""
    where = str(recipe_path)
    base, lang = str(recipe["base"]), str(recipe["lang"])
    data_section = dict(recipe.get("data") or {})
    if "lang" in data_section:
        raise LangadaptError(f"{where}: data: 'lang' is set at the top level of the recipe")
    data = from_mapping(DataOptions, {**data_section, "lang": lang}, where, section="data")
    evals = from_mapping(EvalOptions, recipe.get("eval") or {}, where, section="eval")
    ctx = _Context(where, out, base, resolve_data_paths(data.corpus, out, write),
                   resolve_data_paths(data.heldout, out, write), to_mapping(data.reading),
                   resolve_data_paths(data.instructions, out, write), evals)
    if recipe.get("budget", "tokens") not in BUDGETS:
        raise LangadaptError(f"{where}: budget must be tokens (every arm trains on as many of its own tokens) or "
                             f"characters (on as many corpus characters), got '{recipe['budget']}'")
    ctx.budget_in_characters = recipe.get("budget") == "characters"
    own = recipe.get("pretrain") or []
    if own:
        ctx.budget = _stages_budget(own, [f"pretrain[{i}]" for i in range(len(own))], ctx, {})
    arms = [Arm("base", base, base)]
    for spec in arm_specs(recipe, where):
        arms.append(_plan_arm(spec, ctx))
    steps = ctx.steps
    steps += _evaluation_steps(ctx, arms)
    if recipe.get("export") is not None:
        steps.append(_export_step(recipe["export"], arms, where, out))
    _sign(steps)
    return RunPlan(steps, arms, evals)


def _add(ctx: _Context, step: Step) -> Step:
    """Add `step` unless an earlier arm planned the same work (same command and options, its own
    output paths aside); return the step the arm goes on from."""
    known = {s.writes: k for k, s in ctx.keys.items()}

    def neutral(value):
        if isinstance(value, list):
            return [neutral(v) for v in value]
        if not isinstance(value, str):
            return value
        for path, key in known.items():
            if value == path or value.startswith(path + "/"):
                return key + value[len(path):]
        own = value == step.writes or value.startswith(step.writes + "/")
        return "<own>" + value[len(step.writes):] if own else value

    blob = json.dumps([step.command, {k: neutral(v) for k, v in to_mapping(step.options).items()}], sort_keys=True,
                      ensure_ascii=False, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()
    if key not in ctx.keys:
        ctx.keys[key] = step
        ctx.steps.append(step)
    return ctx.keys[key]


def _plan_arm(spec: ArmSpec, ctx: _Context) -> Arm:
    """The steps of one arm: tokenizer and model surgery, pretrain stages (each merged), sft (merged)."""
    where, out, p = ctx.where, ctx.out, spec.prefix
    at = "control: " if spec.control else (f"arms: {spec.name}: " if p else "")
    replace = {"overwrite": True}  # a step's output with another signature is replaced (outputs are atomic)
    tok_section = dict(spec.tokenizer)
    method = tok_section.pop("method", "extend")
    method = "keep" if method == "none" else method
    if method not in TOKENIZER_METHODS:
        raise LangadaptError(f"{where}: {at}tokenizer.method must be one of extend, prune, keep (or none), "
                             f"got '{method}'")
    if method != "keep" and not ctx.corpus:
        raise LangadaptError(f"{where}: data.corpus is required for tokenizer.method {method}")
    arm = Arm(spec.name, ctx.base, ctx.base, control=spec.control)
    model = ctx.base
    if method in ("extend", "prune"):
        tok_dir = str(out / f"{p}tokenizer")
        if method == "extend":
            filled = {"base": ctx.base, "out": tok_dir, **replace, **ctx.reading,
                      **({} if tok_section.get("add") else {"corpus": ctx.corpus})}
            tok = str(_add(ctx, Step(f"{p}tokenizer", "tokenizer merge", _section(
                TokenizerMergeOptions, tok_section, filled, where, f"{at}tokenizer"), Path(tok_dir))).output)
            filled = {"base": ctx.base, "tokenizer": tok, "out": str(out / f"{p}model-extended"), "corpus": ctx.corpus,
                      **ctx.reading, **replace}
            model = str(_add(ctx, Step(f"{p}model", "model extend", _section(
                ModelExtendOptions, spec.model, filled, where, f"{at}model"), out / f"{p}model-extended")).output)
        else:
            filled = {"base": ctx.base, "corpus": ctx.corpus, "out": tok_dir, **replace, **ctx.reading}
            tok = str(_add(ctx, Step(f"{p}tokenizer", "tokenizer prune", _section(
                TokenizerPruneOptions, tok_section, filled, where, f"{at}tokenizer"), Path(tok_dir))).output)
            filled = {"base": ctx.base, "tokenizer": tok, "out": str(out / f"{p}model-pruned"), **replace}
            model = str(_add(ctx, Step(f"{p}model", "model prune", _section(
                ModelPruneOptions, spec.model, filled, where, f"{at}model"), out / f"{p}model-pruned")).output)
        arm.scored.append(("extended" if method == "extend" else "pruned", model))
    arm.tokenizer = model

    stages = spec.stages
    names = [s.get("stage", "lora") if isinstance(s, dict) else "" for s in stages]
    sections = ["control" if spec.control else f"{at}pretrain[{i}]" for i in range(len(stages))]
    if spec.control and not ctx.budget:
        raise LangadaptError(f"{where}: pretrain: the stages must be budgeted in max_tokens or max_steps, so that the "
                             "control arm trains on as many tokens")
    fixed = {"max_tokens": ctx.budget} if spec.control else {}
    total = _stages_budget(stages, sections, ctx, fixed)
    if ctx.budget is None:
        ctx.budget = total
    elif stages and total != ctx.budget:
        mine = f"{total:,} tokens" if total else "a budget in epochs"
        raise LangadaptError(f"{where}: {at}pretrain: its stages train on {mine} and the recipe's on {ctx.budget:,} "
                             "tokens; every arm gets the same budget (set max_tokens per stage so that they add up)")
    for i, stage_section in enumerate(stages):
        name = f"pretrain-{names[i]}" if names.count(names[i]) == 1 else f"pretrain-{i + 1}-{names[i]}"
        filled = {"model": model, "corpus": ctx.corpus, "heldout": ctx.heldout, "out": str(out / f"{p}{name}"),
                  **ctx.reading, **fixed, **_curve_points(ctx, stage_section, first=(i == 0)),
                  **({"budget_tokenizer": ctx.base} if ctx.budget_in_characters else {})}
        options = _section(PretrainOptions, stage_section, filled, where, sections[i])
        model = _train(ctx, f"{p}{name}", "pretrain", options, arm)
        arm.stages.append(arm.training[-1])
        arm.scored.append((name, model))

    if spec.sft is not None:
        if not ctx.instructions:
            raise LangadaptError(f"{where}: data.instructions (instruction files) is required for the sft step")
        filled = {"model": model, "data": ctx.instructions, "out": str(out / f"{p}sft")}
        model = _train(ctx, f"{p}sft", "sft", _section(SftOptions, spec.sft, filled, where, f"{at}sft"), arm)
        arm.scored.append(("sft", model))
    arm.model = model
    arm.scored = [(label, path) for label, path in arm.scored if path != model]
    return arm


def _curve_points(ctx: _Context, section: dict, first: bool) -> dict:
    """With eval.curve_points, every arm's pretraining scores the held-out text at the same interval of
    training tokens, and its first stage also before its first step: learning curves comparable across
    arms (this sets the eval_steps of the stages that do not set their own)."""
    if not ctx.evals.curve_points or not ctx.heldout or not ctx.budget or "eval_steps" in section:
        return {}
    defaults = PretrainOptions.__dataclass_fields__
    per_step = 1
    for key in ("block_size", "batch_size", "grad_accum"):
        per_step *= int(section.get(key, defaults[key].default))
    interval = ctx.budget / ctx.evals.curve_points
    return {"eval_steps": max(1, round(interval / per_step)), "eval_on_start": first}


def _evaluation_steps(ctx: _Context, arms: list[Arm]) -> list[Step]:
    """The tokenizer report, bits per char of every arm (and, with eval.intermediate, of the models
    between its steps), sample answers, multiple choice and generation tasks."""
    evals, out, reading = ctx.evals, ctx.out, ctx.reading
    steps = []
    if ctx.heldout:
        tokenizers = {}
        for arm in arms:
            tokenizers.setdefault(arm.tokenizer, arm.name)
        report_filled = {"tokenizer": list(tokenizers), "name": list(tokenizers.values()), "corpus": ctx.heldout,
                         **reading, "max_chars": evals.max_chars, "json": str(out / "eval" / "tokenizers.json"),
                         "plot": str(out / "eval" / "tokenizers.png")}
        steps.append(Step("eval-tokenizers", "tokenizer report", from_mapping(TokenizerReportOptions, report_filled,
                                                                              ctx.where), out / "eval" / "tokenizers.json"))
        for arm in arms:
            prefix = "" if arm.name in ("base", "adapted") else f"{arm.name}-"
            scored = [(prefix + label, path) for label, path in arm.scored] if evals.intermediate else []
            for label, path in scored + [(arm.name, arm.model)]:
                result = out / "eval" / f"bpc-{label}.json"
                steps.append(Step(f"eval-bpc-{label}", "eval bpc", EvalBpcOptions(
                    model=path, text=ctx.heldout, reading=ReadingOptions(**reading), max_chars=evals.max_chars,
                    context=evals.context, stride=evals.stride or max(1, evals.context // 2), json=str(result)),
                    result))
    sft = next((s for s in ctx.steps if s.command == "sft"), None)
    if sft is not None and evals.prompts > 0 and (sft.options.heldout or sft.options.heldout_share > 0):
        prompts = list(sft.options.heldout) or [str(Path(sft.options.out) / "heldout.jsonl")]
        for arm in arms:
            result = out / "eval" / f"generate-{arm.name}.json"
            steps.append(Step(f"eval-generate-{arm.name}", "eval generate", EvalGenerateOptions(
                model=arm.model, data=prompts, reading=ReadingOptions(**reading), limit=evals.prompts,
                max_new_tokens=evals.max_new_tokens, repetition_penalty=evals.repetition_penalty, json=str(result)),
                result))
    return steps + eval_suite_steps(evals, [(a.name, a.model) for a in arms], reading, out)


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


def _train(ctx: _Context, name: str, command: str, options, arm: Arm) -> str:
    """Add a training step (and, for an adapter, its merge) to `arm`; return the resulting model dir."""
    result = Path(options.out) / ("model" if options.stage == "full" else "adapter")
    step = _add(ctx, Step(name, command, options, result))
    arm.training.append(step.name)
    if options.stage == "full":
        return str(step.output)
    merged = Path(options.out).parent / f"model-{Path(options.out).name}"
    prefix, _, stem = name.rpartition("/")
    return str(_add(ctx, Step(f"{prefix}{'/' if prefix else ''}merge-{stem}", "merge", MergeOptions(adapter=str(step.output), output=OutputOptions(
        out=str(merged), overwrite=True)), merged)).output)


def _export_step(section, arms: list[Arm], where: str, out: Path) -> Step:
    """An arm's final model as a GGUF file for llama.cpp/Ollama: `export: {gguf: TYPE, arm: NAME}` plus any
    export gguf key (the arm: the first trained one unless named)."""
    if not isinstance(section, dict):
        raise LangadaptError(f"{where}: export: must be a mapping, e.g. {{gguf: q8_0}}")
    section = dict(section)
    kind = section.pop("gguf", "q8_0")
    trained = {a.name: a for a in arms if a.name != "base"}
    name = str(section.pop("arm", next(iter(trained), "base")))
    if name not in trained:
        raise LangadaptError(f"{where}: export: arm '{name}' is not a trained arm of this recipe "
                             f"({', '.join(trained) or 'none'})")
    path = out / "export" / f"model.{kind}.gguf"
    filled = {"model": trained[name].model, "out": str(path), "overwrite": True}
    return Step("export-gguf", "export gguf", _section(ExportGgufOptions, {"type": kind, **section}, filled, where,
                                                       "export"), path)


def _stages_budget(stages: list, sections: list[str], ctx: _Context, fixed: dict) -> int | None:
    """The training tokens of pretrain stages together (each stage's options built and checked); None
    when a stage is budgeted in epochs."""
    filled = {"model": ctx.base, "corpus": ["-"], "out": "-", **fixed}
    tokens = [_budget_tokens(_section(PretrainOptions, stage, filled, ctx.where, section))
              for stage, section in zip(stages, sections)]
    return None if None in tokens else sum(tokens)


def _budget_tokens(options: PretrainOptions) -> int | None:
    """The tokens a pretrain stage trains on, known before it runs (max_tokens, or max_steps x tokens per step)."""
    if options.max_tokens:
        return options.max_tokens
    if options.max_steps > 0:
        return options.max_steps * options.batch_size * options.grad_accum * options.block_size
    return None


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
    sft = next((s.options for s in steps if s.command == "sft"), None)
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


def _outside_ranks():
    """accelerate's PartialState when `run` is one rank of an outside launch (torchrun, srun), else None."""
    if not launched_from_outside():
        return None
    from accelerate import PartialState

    return PartialState()


def execute_step(step: Step, out: Path, state: dict, launch: DistributedOptions | None = None, gpus: int = 0,
                 record: bool = True) -> float:
    """Run one step (an interrupted training step resumes); return its seconds. A training step with
    `launch` runs under `accelerate launch` on that many processes; `record` writes the run state."""
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
    if record:
        write_json_atomic(out / STATE_FILE, state)
    if launch is not None:
        _launch_training(step, out, launch, gpus)
    else:
        find(step.command).run(options)
    seconds = time.time() - start
    state["steps"][step.name].update(done=True, seconds=round(seconds, 1))
    if record:
        write_json_atomic(out / STATE_FILE, state)
    return seconds


def _launch_training(step: Step, out: Path, dist: DistributedOptions, gpus: int) -> None:
    """The training step's recipe file under `accelerate launch`, with a config generated for `dist`."""
    import subprocess

    node = f"-node{dist.node_rank}" if dist.nnodes > 1 else ""  # the nodes share `out`: one file each
    config = out / "recipes" / f"accelerate-{dist.strategy}{node}.yaml"
    mixed = "bf16" if step.options.precision == "bf16" or (step.options.precision == "auto" and gpus) else "no"
    with atomic_output_file(config, overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(accelerate_config(dist, gpus, mixed), sort_keys=False), encoding="utf-8")
    argv = launch_argv(config, step.command, out / "recipes" / f"{step.name}.yaml", dist)
    print(f"  launching: {' '.join(argv[2:])}", flush=True)
    if subprocess.run(argv).returncode != 0:
        raise LangadaptError(f"{step.name}: the training processes failed (their errors are above); running "
                             "`langadapt run` again resumes from the newest checkpoint")


def _write_accelerate_recipe(step: Step, options, out: Path) -> None:
    """<out>/recipes/<step>.yaml: the training step as a recipe, for `accelerate launch` on many GPUs."""
    path = out / "recipes" / f"{step.name}.yaml"
    with atomic_output_file(path, overwrite=True) as tmp:  # several nodes may write the same file
        tmp.write_text(f"# step {step.name} of `langadapt run`; on several GPUs: accelerate launch --config_file "
                       f"configs/accelerate/ddp.yaml -m langadapt.cli {step.command} --config {path}\n"
                       + yaml.safe_dump(to_mapping(options), allow_unicode=True, sort_keys=False), encoding="utf-8")


def run_recipe(recipe_path: str | Path, out: str | None = None, dry_run: bool = False,
               from_step: str | None = None, overrides: dict | None = None, plan_json: str | None = None,
               distributed: dict | None = None) -> Path:
    """Run (or, with `dry_run`, check and print) a run recipe; return the report path. `distributed`:
    keys of the recipe's `distributed:` section that override it (from the command line)."""
    recipe_path = Path(recipe_path)
    recipe = load_run_recipe(recipe_path)
    for dotted, value in (overrides or {}).items():  # e.g. {"pretrain.0.max_tokens": 20000}
        _set_dotted(recipe, dotted, value)
    out_dir = Path(out or recipe["out"])
    run_plan = plan_run(recipe, recipe_path, out_dir, write=not dry_run)
    steps = run_plan.steps
    dist = from_mapping(DistributedOptions, {**(recipe.get("distributed") or {}), **(distributed or {})},
                        str(recipe_path), section="distributed")
    gpus = visible_gpus()
    if launched_from_outside() and not gpus:
        raise LangadaptError("`run` is one of several processes (WORLD_SIZE is set) on a machine without GPUs, where "
                             "accelerate does not join them (it sees one process each); use `langadapt run "
                             "--nproc-per-node N` instead, which launches the training steps itself")
    world = 1 if launched_from_outside() else dist.world_size(gpus)
    if world > 1:
        for step in steps:
            if step.trains:
                check_distributed(dist, step.name, step.options, gpus, plan_only=dry_run)
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
    if world > 1:
        print(f"  training steps: {dist.processes_per_node(gpus)} processes on each of {dist.nnodes} node(s), "
              f"strategy {dist.strategy} (accelerate launch); every other step runs once, here")
    if dry_run:
        plans = memory_plans(steps, world_size=world, zero_stage=ZERO_STAGES[dist.strategy])
        print_memory_plans(plans)
        if plan_json:
            write_json_atomic(plan_json, {"steps": plans})
        print("dry run: recipe, paths and hyperparameters are valid; nothing was trained")
        return out_dir / "report.md"

    out_dir.mkdir(parents=True, exist_ok=True)
    state["recipe"] = str(recipe_path)
    total = time.time()
    ranks = _outside_ranks()
    main_rank = (ranks is None or ranks.is_main_process) and dist.node_rank == 0
    for i, step in enumerate(steps, 1):
        if is_done(step, state):
            print(f"\n[{i}/{len(names)}] {step.name}: done before, skipped")
            continue
        print(f"\n[{i}/{len(names)}] {step.name}: {step.text()}", flush=True)
        if ranks is None and dist.node_rank > 0 and not step.trains:
            print("  node 0 runs it (the nodes share the run directory)")
            continue
        if ranks is not None and not step.trains:  # launched from outside: one rank runs it, the others wait
            seconds = execute_step(step, out_dir, state) if main_rank else 0.0
            ranks.wait_for_everyone()
        else:
            launch = dist if world > 1 and ranks is None and step.trains else None
            seconds = execute_step(step, out_dir, state, launch=launch, gpus=gpus, record=main_rank)
        print(f"  {step.name} finished in {seconds:.0f} s", flush=True)
    if not main_rank:
        return out_dir / "report.md"
    print(f"\n[{len(names)}/{len(names)}] report: {out_dir / 'report.md'}")
    write_report(recipe, steps, run_plan.arms, out_dir, tolerance=run_plan.evals.verdict_tolerance)
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
    nproc_per_node: str | None = option(None, metavar="N|auto", help="train on N processes per node (auto: one per "
                                        "GPU), launched through accelerate; every other step runs once. Overrides "
                                        "the recipe's distributed.nproc_per_node")
    nnodes: int | None = option(None, help="nodes (the same command on each, with --node-rank)")
    node_rank: int | None = option(None, help="this node's rank")
    master_addr: str | None = option(None, metavar="HOST", help="node 0's address (c10d rendezvous)")
    master_port: int | None = option(None, help="a free port on node 0")
    strategy: str | None = option(None, choices=STRATEGIES, help="ddp, zero2, zero3 or fsdp (see the recipe's "
                                                                   "distributed section in the README)")
    plan_json: str | None = option(None, metavar="FILE", help="with --dry-run: also write the memory plan of every "
                                   "training step to FILE as {\"steps\": [{\"name\", \"memory_gib\": {\"weights\", "
                                   "\"trainable\", \"optimizer\", \"activations\", \"total\"}, \"tokens\"}]}")


def distributed_overrides(opts) -> dict:
    """The distributed keys given on the command line (`run`, `demo`), which override the recipe's."""
    keys = ("strategy", "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")
    return {k: getattr(opts, k) for k in keys if getattr(opts, k, None) is not None}


def run_command(opts: RunOptions) -> int:
    """Run (or check) a run recipe."""
    if opts.plan_json and not opts.dry_run:
        raise OptionError("plan_json", "is written by --dry-run; add --dry-run")
    run_recipe(opts.recipe, out=opts.out, dry_run=opts.dry_run, from_step=opts.from_step, plan_json=opts.plan_json,
               distributed=distributed_overrides(opts))
    return 0
