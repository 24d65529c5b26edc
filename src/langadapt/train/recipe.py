"""The options of `pretrain` (`PretrainOptions`) and `sft` (`SftOptions`): each a flat YAML recipe
whose every key is also a `--key value` flag.

Pretraining alone has the adaptation options new_rows_only, new_input_rows_only (EEVE), block_order
(a curriculum), edge_layers (layer subset, stage full) and mtp_heads / mtp_weight (multi-token
prediction heads); each refuses the stages it does not apply to, naming itself.

This module imports no torch, so the CLI builds its options cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from langadapt.corpus import CORPUS_HELP, ReadingOptions
from langadapt.options import Options, OptionError, embed, from_mapping, option, read_yaml_mapping

STAGES = ("embeddings", "lora", "full")
BLOCK_ORDERS = ("shuffled", "loss", "length")
QUANTIZATIONS = ("nf4", "fp4", "int8")
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "eager")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
POSITIVE = ("batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit", "lora_r", "lora_alpha")


@dataclass
class TrainOptions(Options):
    """The keys `pretrain` and `sft` share: model, output, what trains and how, the budget."""

    model: str = option(None, metavar="MODEL", help="model dir, alias or .gguf to train (its tokenizer is used); e.g. "
                                                    "the output of `model extend` (pretrain) or of `merge` (sft)")
    out: str = option(None, metavar="DIR", required=True,
                      help="run directory: checkpoints/, metrics.jsonl, curves.png, adapter/ (or model/ for stage full)")
    stage: str = option("lora", choices=STAGES,
                        help="embeddings (embeddings + LM head), lora (LoRA + embeddings + LM head) or full")
    lora_r: int = option(64, help="LoRA rank")
    lora_alpha: int = option(128, help="LoRA alpha")
    lora_dropout: float = option(0.05, help="LoRA dropout")
    lora_targets: list[str] = option(LORA_TARGETS, help="module names that get LoRA")
    learning_rate: float = option(2e-4, help="peak learning rate")
    lr_scheduler: str = option("cosine", help="transformers scheduler name (cosine, linear, ...)")
    warmup_ratio: float = option(0.05, help="share of the steps spent warming up")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="gradient clipping norm")
    batch_size: int = option(8, help="blocks (pretrain) or examples/packed rows (sft) per device per step")
    grad_accum: int = option(1, help="gradient accumulation steps")
    max_tokens: int = option(0, help="training budget in tokens: train for the optimizer steps that see this many "
                                     "tokens (0: use max_steps or epochs); the same on any machine")
    max_steps: int = option(-1, help="optimizer steps (-1: use max_tokens or epochs)")
    epochs: float = option(1.0, help="passes over the data when neither max_tokens nor max_steps is set")
    max_minutes: float = option(0.0, help="safety cap: stop once this many minutes of training have passed (held-out "
                                          "evaluation and checkpoint saving not counted; 0: no cap). The result then "
                                          "depends on the machine's speed, and the summary says the cap was hit")
    logging_steps: int = option(10, help="log the loss every N steps")
    eval_steps: int = option(200, help="held-out evaluation (pretrain: bits per char; sft: loss on answers) every N "
                                       "steps (0: only at the end)")
    eval_on_start: bool = option(False, help="also evaluate the held-out data before the first step (the start of "
                                             "the learning curve)")
    save_steps: int = option(200, help="checkpoint every N steps")
    save_total_limit: int = option(3, help="checkpoints kept")
    keep_checkpoints: bool = option(True, help="keep checkpoints/ after the run has finished and written its result "
                                               "(they hold the optimizer state, to train on with --resume and a larger "
                                               "budget); false deletes them then, saving disk (each is about 3x the "
                                               "adapter: the trained weights and Adam's two moments)")
    seed: int = option(42, help="random seed (data order, LoRA init)")
    gradient_checkpointing: bool = option(True, help="recompute activations in the backward pass (less memory, "
                                                     "~30% slower)")
    precision: str = option("auto", choices=("auto", "fp32", "bf16"),
                            help="auto (bf16 on GPU, fp32 on CPU), fp32 or bf16. bf16 is mixed precision on GPU and "
                                 "CPU alike (autocast; weights, gradients, optimizer state and the saved result "
                                 "stay fp32): the matmuls round to bf16, so the loss and the held-out bits/char "
                                 "logged during the run (scored under the same autocast) differ from fp32 in the "
                                 "third decimal; `eval bpc` scores the result in fp32. On a CPU it pays only with "
                                 "AMX or AVX512-BF16 (~1.55x per step); elsewhere (AVX2) it is many times slower")
    quantization: str | None = option(None, choices=QUANTIZATIONS,
                                      help="QLoRA (stage lora): load the frozen base's decoder weights quantised "
                                           "by bitsandbytes (nf4, fp4: 4 bits; int8), pip install "
                                           "'langadapt[qlora]'. The embeddings and LM head are never quantised; "
                                           "LoRA and every trainable row stay fp32. The adapter is plain peft, and "
                                           "`merge` folds it into the full-precision base. Runs on a CPU too, slowly")
    attention: str = option("auto", choices=ATTENTIONS,
                            help="transformers' attention kernel: auto (flash_attention_2 on a GPU where flash-attn "
                                 "is installed, else sdpa), sdpa, flash_attention_2 (pip install flash-attn; GPU, "
                                 "bf16) or eager (keeps every attention matrix: far more memory than the plan shows)")
    dataloader_workers: int = option(0, help="DataLoader worker processes")
    resume: bool = option(False, help="continue from the newest complete checkpoint in out")
    overwrite: bool = option(False, help="delete an existing run in out and start over")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        super().__post_init__()
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise OptionError(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise OptionError("max_steps", f"must be positive (or -1 to use max_tokens or epochs), got {self.max_steps}")
        if self.max_steps > 0 and self.max_tokens > 0:
            raise OptionError("max_tokens", "max_tokens and max_steps both set a budget; give one of them")
        for name in ("max_tokens", "max_minutes", "learning_rate", "warmup_ratio", "weight_decay", "epochs",
                     "max_grad_norm"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be 0 or positive, got {getattr(self, name)}")
        if self.max_tokens == 0 and self.max_steps == -1 and self.epochs == 0:
            raise OptionError("epochs", "must be positive when neither max_tokens nor max_steps is set")
        if self.warmup_ratio >= 1:
            raise OptionError("warmup_ratio", f"must be below 1, got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise OptionError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if self.resume and self.overwrite:
            raise OptionError("resume", "resume and overwrite contradict each other; choose one")
        if self.quantization and self.stage != "lora":
            raise OptionError("quantization", f"quantises the frozen base of stage lora (QLoRA); stage {self.stage} "
                                              "trains the weights it would quantise")


@dataclass
class PretrainOptions(TrainOptions):
    """Tokenise the corpus once into a cache of packed blocks (documents joined with EOS), then train with
    transformers' Trainer: stage 'embeddings' (embeddings + LM head only), 'lora' (LoRA on q,k,v,o,gate,up,down
    + embeddings + LM head) or 'full'. Every recipe key can be given in --config RECIPE.yaml or as --key value
    (the command line wins). Writes <out>/checkpoints, metrics.jsonl, curves.png and <out>/adapter (a peft
    adapter; or <out>/model for stage full). --resume continues from the newest complete checkpoint. Several
    GPUs: accelerate launch --config_file configs/accelerate/ddp.yaml -m langadapt.cli pretrain --config
    RECIPE.yaml"""

    corpus: list[str] = option([], metavar="PATH", required=True, help="training text: " + CORPUS_HELP)
    heldout: list[str] = option([], metavar="PATH", help="held-out text scored in bits per char at each eval (must "
                                                         "not overlap the corpus)")
    reading: ReadingOptions = embed(ReadingOptions)
    cache_dir: str | None = option(None, metavar="DIR", help="packed-block cache (default $LANGADAPT_HOME/blocks)")
    cache_workers: int = option(1, help="processes tokenising corpus files, and parts of big files (64 MB byte "
                                        "ranges, Parquet row groups), in parallel (1: this process, with the "
                                        "tokenizer's own threads)")
    block_size: int = option(1024, help="tokens per training block (at most the model's context)")
    bpe_dropout: float = option(0.0, help="cut the training text with BPE-dropout (Provilkov et al. 2020): each merge "
                                          "skipped with this probability, seeded by `seed`, once when the block cache "
                                          "is built (the same cut in every epoch). The blocks then also hold the "
                                          "shorter pieces that words the tokenizer was not trained on break into; "
                                          "it helps an extension trained on a small corpus (docs/benchmarks.md). "
                                          "0: off. BPE tokenizers only; tokenises at Python speed (~80k "
                                          "characters/s, a third of the tokenizer's)")
    budget_tokenizer: str | None = option(None, metavar="TOKENIZER", help="count max_tokens in this tokenizer's tokens "
                                          "(e.g. the base model's) instead of the model's own: the stage trains on as "
                                          "many corpus characters as that many of them cover, so models with different "
                                          "tokenizers see the same text (`run`'s `budget: characters`); the ratio is "
                                          "measured on the corpus' first million characters")
    new_rows_only: bool = option(False, help="train only the embedding/LM-head rows of tokens added by `model extend`")
    new_input_rows_only: bool = option(False, help="EEVE-style (Kim et al. 2024, Efficient and Effective Vocabulary "
                                       "Expansion Towards Multilingual LLMs): the input-embedding rows of the tokens "
                                       "`model extend` added train (peft trainable tokens), the old input rows stay "
                                       "exactly as they are, and the whole LM head trains (peft modules_to_save). "
                                       "Stages embeddings and lora (LoRA as usual plus that). Needs an untied LM head "
                                       "(`model extend --init fit` unties)")
    block_order: str = option("shuffled", choices=BLOCK_ORDERS,
                              help="the order the Trainer reads the blocks in: shuffled (a seeded random order, each "
                                   "epoch anew); loss (a curriculum, easy to hard: ascending mean token loss of the "
                                   "start model, the model being trained before any step, computed once and cached "
                                   "next to the block cache); length (ascending token-weighted mean length of the "
                                   "documents a block's tokens come from, shorter documents first, as curriculum "
                                   "learning by length orders data; Kim & Lee 2024 sort by prompt length). loss and "
                                   "length read the blocks sequentially in that order in every epoch, ties broken by "
                                   "a permutation seeded by `seed`; --resume keeps the order. A budget below one pass over the corpus "
                                   "orders only the blocks it reads, drawn at random (seeded) as shuffled would: "
                                   "the curriculum changes the order of the text, not which text (loss scores only "
                                   "those blocks)")
    edge_layers: int = option(0, help="Yamaguchi et al. 2024's layer subset (\"2x2 LS\"): with stage full, only the "
                                      "first N and the last N decoder layers, the input embeddings and the LM head "
                                      "train; every other weight (middle layers, final norm) stays frozen. Saved as a "
                                      "full model as stage full is. 0: every layer trains")
    mtp_heads: int = option(0, help="multi-token prediction (Gloeckle et al. 2024, Better & Faster LLMs via "
                                    "Multi-token Prediction) as an auxiliary loss: K extra heads, head k predicting "
                                    "token t+1+k from the final hidden state (the LM head's input) through a residual "
                                    "MLP (h + W2 silu(W1 h), W2 zero at the start) and then the shared LM head. They "
                                    "train with the model (in the optimizer and the checkpoints, so --resume continues "
                                    "them) and are dropped at save time: the adapter or model written is what it would "
                                    "be without them. 0: off")
    mtp_weight: float = option(0.3, help="weight of the multi-token loss: loss = next-token loss + mtp_weight x the "
                                         "mean over the heads of their cross-entropy (summed over targets, normalised "
                                         "as the next-token loss is)")
    heldout_max_chars: int = option(20000, help="score at most this many held-out characters")

    recipe_file = True

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise OptionError("model", "is required: the model to train")
        for name in ("block_size", "cache_workers", "heldout_max_chars"):
            if getattr(self, name) < 1:
                raise OptionError(name, f"must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.bpe_dropout < 1:
            raise OptionError("bpe_dropout", f"must be in [0, 1), got {self.bpe_dropout}")
        if self.new_rows_only and self.stage == "full":
            raise OptionError("new_rows_only", "applies to stages embeddings and lora, not full")
        if self.new_input_rows_only and self.stage == "full":
            raise OptionError("new_input_rows_only", "applies to stages embeddings and lora, not full")
        if self.new_input_rows_only and self.new_rows_only:
            raise OptionError("new_input_rows_only", "new_input_rows_only and new_rows_only choose different rows; "
                                                     "give one of them")
        if self.edge_layers < 0:
            raise OptionError("edge_layers", f"must be 0 or positive, got {self.edge_layers}")
        if self.edge_layers and self.stage != "full":
            raise OptionError("edge_layers", f"applies to stage full, not {self.stage}")
        if self.mtp_heads < 0:
            raise OptionError("mtp_heads", f"must be 0 or positive, got {self.mtp_heads}")
        if self.mtp_weight < 0:
            raise OptionError("mtp_weight", f"must be 0 or positive, got {self.mtp_weight}")
        if self.mtp_heads and self.mtp_heads + 1 >= self.block_size:
            raise OptionError("mtp_heads", f"must leave targets in a block of {self.block_size} tokens")


@dataclass
class SftOptions(TrainOptions):
    """Read instruction data (Alpaca {instruction,input,output}, Firefly {kind,input,target}, prompt
    {input,target}, {messages:[{role,content}]}, ShareGPT {conversations:[{from,value}]}, QA
    {context,question,answer}; .json arrays or JSON Lines; the format is detected per file), render each
    conversation with a chat template and train on the assistant turns only (--train-on-prompt,
    --last-turn-only). Over-long examples keep the end of the prompt and the start of the answer within
    max_seq_len; the summary counts what was cut or dropped. Same engine, stages, checkpoints and outputs as
    `pretrain`; the held-out evaluation is the loss on answers. Merge the adapter with `langadapt merge`.
    Defaults are Chinese-Alpaca-2's instruction tuning."""

    data: list[str] = option([], metavar="PATH", help="instruction files (.json array or JSON Lines): Alpaca, Firefly, "
                             "prompt (input/target), messages, ShareGPT conversations, QA; the format is detected per "
                             "file")
    data_format: str = option("auto", help="force one format for every file instead of detecting it (auto)")
    heldout: list[str] = option([], metavar="PATH", help="held-out instruction files (loss on answers)")
    heldout_share: float = option(0.02, help="without heldout files: hold out this share of data (at most 200 "
                                             "examples) for the loss on answers")
    template: str = option("auto", help="chat template: alpaca, llama2-chat, firefly, chatml, auto (the tokenizer's "
                                        "own) or a .jinja file; see `langadapt sft --list-templates`")
    max_seq_len: int = option(1024, help="tokens per example (longer ones: prompt cut from the left, answer from "
                                         "the right)")
    train_on_prompt: bool = option(False, help="compute the loss on prompt tokens too (default: assistant turns only)")
    last_turn_only: bool = option(False, help="compute the loss on the last assistant turn only (default: every "
                                              "assistant turn)")
    truncate: bool = option(True, help="cut over-long examples within the budget (false: drop them, counted in the "
                                       "summary)")
    pack: bool = option(False, help="pack several short examples into one row of max_seq_len (attention kept within "
                                    "each example)")
    skip_bad: bool = option(False, help="skip malformed records (counted and reported) instead of stopping at the "
                                        "first")
    adapter: str | None = option(None, metavar="DIR", help="continue training this adapter dir (LoRA + rows) on the "
                                                           "model it was trained on, instead of a new LoRA")
    learning_rate: float = option(1e-4, help="peak learning rate")
    warmup_ratio: float = option(0.03, help="share of the steps spent warming up")
    batch_size: int = option(1, help="examples (or packed rows) per device per step")
    grad_accum: int = option(8, help="gradient accumulation steps")

    recipe_file = True
    listings = {"--list-templates": ("list the chat templates and exit", "langadapt.train.sft:list_templates")}

    def __post_init__(self):
        super().__post_init__()
        if not self.model and not self.adapter:
            raise OptionError("model", "is required (or adapter, whose adaptation.json names its base model)")
        if not self.data:
            raise OptionError("data", "is required: the instruction files")
        if self.max_seq_len < 1:
            raise OptionError("max_seq_len", f"must be a positive integer, got {self.max_seq_len}")
        if not 0 <= self.heldout_share < 1:
            raise OptionError("heldout_share", f"must be in [0, 1), got {self.heldout_share}")
        if self.train_on_prompt and self.last_turn_only:
            raise OptionError("train_on_prompt", "train_on_prompt and last_turn_only contradict each other; choose one")


def recipe_from_dict(data: dict, where: str = "recipe", cls: type = PretrainOptions):
    """Training options (`cls`) from a flat mapping: unknown keys and bad values are errors naming `where`."""
    return from_mapping(cls, data, where)


def load_recipe(path: str | Path, cls: type = PretrainOptions):
    """Training options from a YAML recipe file."""
    path = Path(path)
    return from_mapping(cls, read_yaml_mapping(path, "recipe"), str(path))

