"""What `pretrain` and `sft` share: what trains in each stage, run directories, logs, the
wall-clock budget, curves and the saved result.

Stages (the seed recipes):

- `embeddings`: only the input embeddings and the LM head train; the transformer is frozen.
- `lora`: LoRA (r 64, alpha 128, dropout 0.05 on q, k, v, o, gate, up, down) plus the
  embeddings and the LM head.
- `full`: every weight (small models).

With `new_rows_only`, only the embedding/LM-head rows of the tokens `model extend` added are
parameters (peft trainable tokens); the base vocabulary's rows stay as they are. Tied embeddings
are one tensor and train once. With `new_input_rows_only` (EEVE), the input rows of the added
tokens and the whole untied LM head train. With `edge_layers` N (stage full), only the first and
last N decoder layers, the input embeddings and the LM head train (`edge_layer_names`).
Stages `embeddings` and `lora` train a peft adapter
(`train/adapter.py` says what it stores), so transformers' Trainer checkpoints and restores it
as it does any peft model.

A run directory (`out`) holds `checkpoints/checkpoint-N` (each marked complete only after
everything in it is written; deleted at the end with `keep_checkpoints` false), `metrics.jsonl`,
`tensorboard/`, `curves.png` and the result: `adapter/` (a peft adapter + tokenizer +
`adaptation.json`; merge it with `langadapt merge`) or, for stage `full`, `model/` (a full model
dir).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from langadapt.errors import LangadaptError
from langadapt.model.load import load_model
from langadapt.options import to_mapping
from langadapt.outputs import atomic_output_dir, read_adaptation_json, write_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.train.adapter import (base_facts, embedding_pair, load_adapter, module_name, new_adapter, read_adapter,
                                    save_adapter)
from langadapt.train.recipe import TrainOptions

COMPLETE_MARK = "langadapt-complete"  # written last into a checkpoint dir
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- model setup

def added_row_ids(source: Path, vocab_rows: int, option: str = "new_rows_only") -> list[int]:
    """Rows of the tokens `model extend` added (read from the model dir's adaptation.json)."""
    record = read_adaptation_json(source)
    for step in [record, *reversed(record.get("history", []))]:
        if step.get("step") == "model-extend":
            return list(range(int(step["base_tokenizer_size"]), vocab_rows))
    raise LangadaptError(f"{option} needs a model made by `langadapt model extend` (its adaptation.json says "
                         f"which rows are new); {source} has no such record")


def edge_layer_names(param_names: Sequence[str], num_layers: int, n: int) -> set[str]:
    """The parameters of the first `n` and the last `n` of `num_layers` decoder layers (named
    `...layers.<i>....`), Yamaguchi et al. 2024's layer subset."""
    if 2 * n > num_layers:
        raise LangadaptError(f"edge_layers {n}: the first and last {n} layers are {2 * n}, more than the model's "
                             f"{num_layers} layers")
    keep = set(range(n)) | set(range(num_layers - n, num_layers))
    found = {name: int(m.group(1)) for name in param_names if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", name))}
    if not found:
        raise LangadaptError("edge_layers: the model has no decoder layers named layers.<i>")
    return {name for name, i in found.items() if i in keep}


def trainable_edge_layers(model, n: int) -> set[str]:
    """Names of the parameters that train with `edge_layers` n: the edge layers, the input
    embeddings and the LM head (one tensor when tied)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    named = dict(model.named_parameters())
    emb, head = embedding_pair(model)
    rows = {name for name, p in named.items() if p is emb or (head is not None and p is head)}
    return edge_layer_names(list(named), cfg.num_hidden_layers, n) | rows


def prepare_model(model, recipe: TrainOptions, new_rows: list[int] | None, adapter_dir: str | None = None):
    """Set what trains for `recipe.stage`: every weight (`full`), or a peft adapter (`embeddings`,
    `lora`): a new one on the rows `new_rows` (None: all rows), or the one at `adapter_dir`
    trained further. Return the model to train."""
    if recipe.stage == "full":
        if new_rows is not None or adapter_dir:
            raise LangadaptError("new_rows_only and adapter apply to stages embeddings and lora, not full")
        edge = getattr(recipe, "edge_layers", 0)
        train = trainable_edge_layers(model, edge) if edge else None
        for name, p in model.named_parameters():
            p.requires_grad_(train is None or name in train)
        return model
    if getattr(recipe, "quantization", None):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
    if adapter_dir:
        stage = read_adapter(adapter_dir).get("stage")
        if stage != recipe.stage:
            raise LangadaptError(f"{adapter_dir} is an adapter of stage {stage}; continue it with stage {stage}, "
                                 f"not {recipe.stage}")
        model = load_adapter(model, adapter_dir, trainable=True)
    else:
        lora = None
        if recipe.stage == "lora":
            names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            missing = [t for t in recipe.lora_targets if t not in names]
            if missing:
                raise LangadaptError(f"lora_targets {missing} are not modules of {type(model).__name__}")
            lora = dict(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                        target_modules=list(recipe.lora_targets))
        model = new_adapter(model, new_rows, lora, whole_head=getattr(recipe, "new_input_rows_only", False))
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


# ----------------------------------------------------------------------------- trainer

class RunLog(TrainerCallback):
    """Appends every log to metrics.jsonl (with wall time) and marks checkpoints complete."""

    def __init__(self, path: Path, wall_offset: float):
        self.path, self.wall_offset, self.start = path, wall_offset, time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, "wall_s": round(self.wall_offset + time.time() - self.start, 2),
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (folder / COMPLETE_MARK).write_text(json.dumps({"step": state.global_step}) + "\n")


class WallClockStop(TrainerCallback):
    """Stops training after `minutes` of training time; time spent in held-out evaluation and
    checkpoint saving is not counted (the clock restarts after each)."""

    def __init__(self, minutes: float):
        self.budget_s, self.used_s, self.mark = minutes * 60, 0.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.time()
        self.used_s += now - (self.mark if self.mark is not None else now)
        self.mark = now
        if self.used_s >= self.budget_s:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, **kwargs):
        self.mark = time.time()

    def on_save(self, args, state, control, **kwargs):
        self.mark = time.time()


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint dir marked complete (an interrupted save is skipped)."""
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE_MARK).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trim_metrics(path: Path, step: int, write: bool = True) -> float:
    """Drop metrics logged after `step` (by a run killed later); return the wall time at `step`."""
    if not path.is_file():
        return 0.0
    rows = read_metrics(path)
    kept = [r for r in rows if r["step"] <= step]
    if write:  # only the main process writes
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return max((r["wall_s"] for r in kept), default=0.0)


def plot_curves(metrics_path: Path, out_png: Path) -> bool:
    """Training loss and held-out bits per char against steps and wall time; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    loss = [r for r in rows if "loss" in r]
    eval_key = "eval_bpc" if any("eval_bpc" in r for r in rows) else "eval_loss"
    bpc = [r for r in rows if eval_key in r]
    if not loss and not bpc:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], "step", "step"), (axes[1], "wall_s", "wall time (s)")):
        if loss:
            ax.plot([r[x] for r in loss], [r["loss"] for r in loss], color="tab:blue", label="training loss (nats/token)")
        ax.set_xlabel(label)
        ax.set_ylabel("training loss", color="tab:blue")
        if bpc:
            ax2 = ax.twinx()
            ax2.plot([r[x] for r in bpc], [r[eval_key] for r in bpc], "o-", color="tab:red")
            ax2.set_ylabel("held-out bits per char" if eval_key == "eval_bpc" else "held-out loss on answers",
                           color="tab:red")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True



# ----------------------------------------------------------------------------- run

def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AMX tiles or AVX512-BF16), per torch."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def training_arguments(recipe: TrainOptions, checkpoints: Path, has_heldout: bool, max_steps: int) -> TrainingArguments:
    """The TrainingArguments of a recipe and its budget in steps: fp32 on CPU, bf16 on GPU (precision auto).

    bf16 is the Trainer's mixed precision on either device: accelerate wraps the model's forward in
    `torch.autocast(<device>, bfloat16)` (on CPU too, with `use_cpu`); the weights, gradients and
    optimizer state stay fp32 (the model is loaded in fp32), so the saved result is fp32."""
    cuda = torch.cuda.is_available()
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and cuda)
    if bf16 and not cuda and not cpu_has_bf16():
        print(f"warning: precision bf16 on a CPU without AMX or AVX512-BF16 ({torch.backends.cpu.get_cpu_capability()}): "
              "bf16 matmuls are emulated there, and training is several times slower than fp32 "
              "(docs/benchmarks.md, \"bf16 training on the CPU\")", file=sys.stderr)
    evaluate = has_heldout and recipe.eval_steps > 0
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        max_steps=max_steps,
        num_train_epochs=recipe.epochs,
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=recipe.eval_steps if evaluate else None,
        eval_on_start=evaluate and recipe.eval_on_start,
        seed=recipe.seed,
        bf16=bf16,
        use_cpu=not cuda,
        activation_checkpointing=recipe.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        report_to="none",  # TensorBoard is added as a callback, to write beside metrics.jsonl
        dataloader_num_workers=recipe.dataloader_workers,
        disable_tqdm=not recipe.progress,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )



def open_run_dir(recipe: TrainOptions, state) -> Path | None:
    """Prepare `recipe.out` for a run: the checkpoint to resume from (`resume`), else an empty
    dir (an existing run is an error unless `overwrite`)."""
    out = Path(recipe.out)
    checkpoints = out / "checkpoints"
    resume_from = None
    if recipe.resume:
        resume_from = latest_checkpoint(checkpoints)
        if resume_from is None:
            raise LangadaptError(f"--resume: no complete checkpoint under {checkpoints}")
    elif out.exists() and any(out.iterdir()):
        if not recipe.overwrite:
            raise LangadaptError(f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                                 "start over")
        if state.is_main_process:
            shutil.rmtree(out)
    state.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is None and state.is_main_process:
        (out / METRICS_FILE).unlink(missing_ok=True)
    return resume_from


def run_callbacks(recipe: TrainOptions, resume_from: Path | None, state) -> list:
    """metrics.jsonl (trimmed to the resumed step), TensorBoard under <out>/tensorboard and the
    wall-clock budget."""
    out = Path(recipe.out)
    wall_offset = 0.0
    if resume_from:
        wall_offset = trim_metrics(out / METRICS_FILE, checkpoint_step(resume_from), write=state.is_main_process)
        state.wait_for_everyone()
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(out / "tensorboard")  # not under checkpoints/, where it would look like one
    callbacks = [RunLog(out / METRICS_FILE, wall_offset), tensorboard]
    if recipe.max_minutes:
        callbacks.append(WallClockStop(recipe.max_minutes))
    return callbacks


def train_or_explain(trainer, resume_from: Path | None, out: Path):
    """`trainer.train()`, turning a full disk into a clear error that names the checkpoint to resume."""
    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            last = latest_checkpoint(out / "checkpoints")
            raise LangadaptError(f"disk full while writing under {out}; the newest complete checkpoint is "
                                 f"{last or 'none'} (resume from it with --resume once there is space)") from e
        raise


def quantization_config(kind: str, model_source):
    """bitsandbytes' config for QLoRA: the decoder's linear layers in `kind` (nf4, fp4, int8), computing
    in fp32; the embeddings and LM head left out (they train, or hold the rows that do)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LangadaptError(f"quantization {kind} needs bitsandbytes: pip install 'langadapt[qlora]'")
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_source)))
    keep = [module_name(skeleton, m) for m in (skeleton.get_input_embeddings(), skeleton.get_output_embeddings())]
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.float32,
                              llm_int8_skip_modules=keep)


def attention_implementation(requested: str, cuda: bool, flash_installed: bool) -> str:
    """transformers' `attn_implementation` for the option `attention`: auto is flash_attention_2 on a GPU
    where flash-attn is installed, else sdpa."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if cuda and flash_installed else "sdpa"


def load_model_for_training(source, tokenizer, quantization: str | None = None, attention: str = "auto"):
    """The model at `source` in fp32 (master weights; bf16 comes through autocast), its decoder's
    linear layers quantised with `quantization` (QLoRA), with the attention kernel `attention`,
    checked to have an embedding row for every token of `tokenizer`."""
    quantized = quantization_config(quantization, source) if quantization else None
    kernel = attention_implementation(attention, torch.cuda.is_available(),
                                      importlib.util.find_spec("flash_attn") is not None)
    model = load_model(str(source), dtype="float32", quantization_config=quantized, attn_implementation=kernel)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab_rows:
        raise LangadaptError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_rows} embedding "
                             "rows; run `langadapt model extend` first")
    return model


@dataclass
class TrainingData:
    """What a task's data gives the engine."""

    rows: Sequence                 # training rows: {"input_ids", "labels"[, "position_ids"]}
    tokens_per_row: float          # mean tokens per row (turns a max_tokens budget into steps)
    has_heldout: bool              # whether the task evaluates held-out data
    facts: dict = field(default_factory=dict)  # summary entries about the data
    files: dict = field(default_factory=dict)  # {name: text} written into the run directory
    max_tokens: int | None = None  # the budget in this model's tokens, where the task converted max_tokens


class TrainingTask(Protocol):
    """What `pretrain` and `sft` supply to `run_training`; everything else is the same sequence."""

    step: str                      # adaptation.json step prefix: "pretrain" or "sft"
    model_spec: str                # the model to train
    tokenizer_spec: str | None     # its tokenizer (None: the model's)
    sequence_length: int           # tokens per row, at most the model's context

    def load_data(self, tokenizer, state) -> TrainingData: ...
    def prepare(self, model, source) -> Any: ...                 # what trains (returns the model to train)
    def make_trainer(self, model, args, data: TrainingData, tokenizer, callbacks) -> Trainer: ...
    def before_training(self, trainer, resumed: bool) -> dict: ...
    def after_training(self, trainer) -> dict: ...


def budget_steps(options: TrainOptions, tokens_per_row: float, processes: int, max_tokens: int | None = None) -> int:
    """Optimizer steps of the budget: `max_tokens` (or the task's conversion of it) over the tokens of one
    step, else `max_steps` (-1: epochs)."""
    if options.max_tokens:
        per_step = tokens_per_row * options.batch_size * options.grad_accum * processes
        return max(1, math.ceil((max_tokens or options.max_tokens) / per_step))
    return options.max_steps


def check_context(source, sequence_length: int, name: str) -> None:
    """Rows longer than the model's positions are an error, found before the model loads."""
    max_pos = getattr(AutoConfig.from_pretrained(str(source)).get_text_config(), "max_position_embeddings", None)
    if max_pos is not None and sequence_length > max_pos:
        raise LangadaptError(f"{name} {sequence_length} is beyond the model's context of {max_pos} positions")


def run_training(options: TrainOptions, task: TrainingTask) -> tuple[dict, Any]:
    """The training sequence of `pretrain` and `sft`: run dir, data, model, trainer, train, save, summary.
    Returns the summary (also in the result's adaptation.json) and the trained model."""
    start = time.time()
    state = PartialState()
    check_sharding(state, options.stage)
    out = Path(options.out)
    source = resolve_model_source(task.model_spec)
    tokenizer = load_tokenizer(str(task.tokenizer_spec or source))
    data = task.load_data(tokenizer, state)  # bad data fails before the run directory is touched
    check_context(source, task.sequence_length, "block_size" if task.step == "pretrain" else "max_seq_len")
    resume_from = open_run_dir(options, state)
    if state.is_main_process:
        for name, text in data.files.items():
            (out / name).write_text(text, encoding="utf-8")

    model = load_model_for_training(source, tokenizer, getattr(options, "quantization", None), options.attention)
    base = {**base_facts(model), "attention": model.config._attn_implementation}  # before the model is wrapped
    set_seed(options.seed)  # LoRA's initial weights are random: the same seed, the same run
    model = task.prepare(model, source)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    max_steps = budget_steps(options, data.tokens_per_row, state.num_processes, data.max_tokens)
    args = training_arguments(options, out / "checkpoints", data.has_heldout, max_steps)
    trainer = task.make_trainer(model, args, data, tokenizer, run_callbacks(options, resume_from, state))
    before = task.before_training(trainer, resume_from is not None)
    result = train_or_explain(trainer, resume_from, out)
    after = task.after_training(trainer)
    # bf16: accelerate left the model's forward inside autocast; the returned model computes in fp32 again.
    trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    steps = trainer.state.global_step
    summary = {
        "stage": options.stage, "base": task.model_spec,
        "base_source": str(Path(source).resolve()) if Path(str(source)).exists() else str(source),
        **base,
        "budget": {"max_tokens": options.max_tokens, "max_steps": max_steps, "epochs": options.epochs,
                   "max_minutes": options.max_minutes},
        "steps": steps, "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "stopped_by_max_minutes": bool(options.max_minutes) and steps < trainer.state.max_steps,
        "train_loss": round(result.training_loss, 5) if result.training_loss is not None else None,
        "trainable_parameters": trainable, **data.facts, **before, **after,
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds": round(time.time() - start, 1), "recipe": to_mapping(options),
    }
    if state.is_main_process:
        inherit_from = getattr(options, "adapter", None) or source  # a continued adapter continues its own record
        save_result(model, tokenizer, options, inherit_from, out, summary, f"{task.step}-{options.stage}")
        if (out / METRICS_FILE).is_file():
            plot_curves(out / METRICS_FILE, out / "curves.png")
        if not options.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the result is written: nothing to resume
    state.wait_for_everyone()
    return summary, model


def check_sharding(state, stage: str) -> None:
    """Stages embeddings/lora save rows from the local parameters, which sharding would split."""
    zero3 = state.distributed_type == DistributedType.DEEPSPEED and os.environ.get(
        "ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    if stage != "full" and (zero3 or state.distributed_type == DistributedType.FSDP):
        raise LangadaptError(f"stage {stage} with sharded parameters (FSDP, DeepSpeed ZeRO-3) is not supported yet: "
                             "its trained rows are read from local parameters. Use DDP or ZeRO-2, or stage full")



def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])



def save_result(model, tokenizer, recipe, source, out: Path, summary: dict, step: str) -> None:
    """Write `out/adapter` (stages embeddings, lora) or `out/model` (stage full), atomically, with
    the tokenizer and adaptation.json (`step`, e.g. pretrain-lora, and `summary`, continuing the
    record of `source`)."""
    if recipe.stage != "full":
        save_adapter(model, tokenizer, out / "adapter", step, inherit_from=source, **summary)
        return
    with atomic_output_dir(out / "model", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_adaptation_json(tmp, step, inherit_from=source, **summary)
