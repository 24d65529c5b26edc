"""The peak memory of a training step on each device, planned from the model's config.json alone.

`langadapt run --dry-run` prints it for every `pretrain` and `sft` step (and `--plan-json` writes
it), so a user sees before a long run whether a step fits: it reads no weights, so Llama-3-8B
plans on a laptop. Pure arithmetic over `ModelShape` (a decoder of Llama's kind: attention with
grouped KV heads, a gated MLP, RMS norms) and `TrainingShape`:

- weights: the base model's parameters as loaded (fp32 or bf16; with `quantization` the decoder's
  linear layers in nf4/fp4/int8 with their scales, embeddings and LM head never quantised);
- trainable: what training adds: LoRA matrices, peft's trainable copy of the embeddings and LM head
  (stage lora and embeddings without new_rows_only), trainable rows, all in fp32, plus one fp32
  gradient per trainable parameter;
- optimizer: AdamW's two fp32 moments per trainable parameter;
- activations: what the backward pass keeps, per token of a micro-batch: the decoder layers'
  (`ACTIVATION_ELEMENTS`, or one layer input per layer and one layer's worth with gradient
  checkpointing) and the fp32 logits with their log-softmax and gradient over the vocabulary.

ZeRO shards across `world_size` devices: stage 1 the optimizer, 2 also the gradients, 3 also the
weights (FSDP's full shard plans as ZeRO-3). The figures leave out the runtime (CUDA context,
allocator fragmentation, Python and torch themselves: a few hundred MB per process).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes per quantised weight: 4 bits plus an fp32 absmax per block of 64 (bitsandbytes' default), or
# int8 plus an fp32 scale per row (about 1 byte).
QUANTISED_BYTES = {"nf4": 0.5 + 4 / 64, "fp4": 0.5 + 4 / 64, "int8": 1.0}

# Elements the backward pass keeps per token in one decoder layer, as (per hidden unit, per
# intermediate unit, per KV unit): the two norms' inputs and outputs and the attention's q and
# output (6 x hidden), k and v (2 x KV width), the MLP's gate, up, activation and product (4 x
# intermediate). LoRA adds, for each target module, its dropout's mask and output (two copies of
# the module's input; on a CPU the mask is a float tensor).
ACTIVATION_ELEMENTS = (6, 4, 2)
# Elements per token of the logits in the loss: fp32 logits, their log-softmax and its gradient.
LOGIT_COPIES = 3


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-like decoder, from its config.json."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict, vocab: int | None = None) -> "ModelShape":
        """From a config.json mapping (a multimodal one's `text_config`); `vocab` overrides its vocab_size
        (an extension not yet built)."""
        config = config.get("text_config") or config
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in config]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}: not a decoder the memory plan knows")
        heads = config["num_attention_heads"]
        return cls(vocab=vocab or config["vocab_size"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   tied=bool(config.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings and (when untied) the LM head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.layers * self.layer_linear_params + self.embedding_params + norms


@dataclass(frozen=True)
class TrainingShape:
    """What a training step trains and how (the `pretrain`/`sft` options the plan needs)."""

    stage: str = "lora"                 # embeddings | lora | full
    lora_r: int = 64
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.05
    new_rows: int | None = None         # new_rows_only: the added rows that train (None: all rows)
    whole_head: bool = False            # new_input_rows_only (EEVE): the new input rows and the whole LM head
    edge_layers: int = 0                # stage full: only the first and last N layers (+ embeddings, head)
    block_size: int = 1024              # tokens per row
    micro_batch: int = 8                # rows per device per forward
    gradient_checkpointing: bool = True
    weights_dtype: str = "float32"      # as loaded
    activation_dtype: str = "float32"   # bfloat16 under autocast
    quantization: str | None = None     # nf4 | fp4 | int8: the decoder's linear layers
    zero_stage: int = 0                 # 0 (DDP, one device), 1, 2, 3 (FSDP full shard)
    world_size: int = 1


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def memory_plan(model: ModelShape, train: TrainingShape) -> dict:
    """Peak memory per device, in GiB: {weights, trainable, optimizer, activations, total}, and the
    parameter counts behind them."""
    if train.stage not in ("embeddings", "lora", "full"):
        raise ValueError(f"stage must be embeddings, lora or full, got {train.stage}")
    if train.quantization is not None and train.quantization not in QUANTISED_BYTES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTISED_BYTES)}, got {train.quantization}")
    w_bytes, a_bytes = BYTES[train.weights_dtype], BYTES[train.activation_dtype]
    linear = model.layers * model.layer_linear_params
    other = model.params - linear
    linear_bytes = QUANTISED_BYTES[train.quantization] if train.quantization else w_bytes
    weights = linear * linear_bytes + other * w_bytes

    h = model.hidden
    rows = model.vocab if train.new_rows is None else train.new_rows
    embedding_trainable = rows * h * (1 if model.tied else 2)  # peft's copies, or the trainable rows
    if train.whole_head:
        embedding_trainable = rows * h + model.vocab * h
    lora_targets = [model.linears()[t] for t in train.lora_targets if t in model.linears()]
    if train.stage == "full":
        layers = min(2 * train.edge_layers, model.layers) if train.edge_layers else model.layers
        trained = layers * model.layer_linear_params + model.embedding_params  # the weights themselves train
        added = 0
    else:
        lora = model.layers * sum(train.lora_r * (a + b) for a, b in lora_targets) if train.stage == "lora" else 0
        trained = added = lora + embedding_trainable
    trainable = added * 4 + trained * 4  # fp32 parameters peft adds, and a gradient for each trained one
    optimizer = trained * 8

    tokens = train.block_size * train.micro_batch
    hidden_units, inter_units, kv_units = ACTIVATION_ELEMENTS
    per_layer = hidden_units * h + inter_units * model.intermediate + kv_units * model.kv_heads * model.head_dim
    if train.stage == "lora" and train.lora_dropout > 0:
        per_layer += 2 * sum(a for a, _ in lora_targets)  # dropout's mask and output for each target's input
    # Stage embeddings keeps about as much: the gradient flows back through every frozen layer.
    if train.gradient_checkpointing:
        layer_bytes = (model.layers * h + per_layer) * a_bytes
    else:
        layer_bytes = model.layers * per_layer * a_bytes
    activations = tokens * (layer_bytes + LOGIT_COPIES * model.vocab * 4)

    shards = max(train.world_size, 1)
    if train.zero_stage >= 1:
        optimizer /= shards
    if train.zero_stage >= 2:
        trainable /= shards
    if train.zero_stage >= 3:
        weights /= shards
    parts = {"weights": weights, "trainable": trainable, "optimizer": optimizer, "activations": activations}
    return {**{k: round(_gib(v), 3) for k, v in parts.items()}, "total": round(_gib(sum(parts.values())), 3),
            "params": model.params, "trainable_params": trained, "tokens_per_micro_batch": tokens}


def training_shape(options, added_rows: int = 0, world_size: int = 1, zero_stage: int = 0,
                   on_gpu: bool | None = None) -> TrainingShape:
    """The `TrainingShape` of `pretrain` or `sft` options (`added_rows`: the rows `model extend` added,
    which new_rows_only trains). Weights load in fp32; `precision` bf16 (or auto on a GPU) runs the
    activations in bf16 under autocast."""
    import torch

    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    bf16 = options.precision == "bf16" or (options.precision == "auto" and on_gpu)
    only_new = getattr(options, "new_rows_only", False) or getattr(options, "new_input_rows_only", False)
    return TrainingShape(stage=options.stage, lora_r=options.lora_r, lora_targets=tuple(options.lora_targets),
                         lora_dropout=options.lora_dropout, new_rows=added_rows if only_new else None,
                         whole_head=getattr(options, "new_input_rows_only", False),
                         edge_layers=getattr(options, "edge_layers", 0),
                         block_size=getattr(options, "block_size", None) or options.max_seq_len,
                         micro_batch=options.batch_size, gradient_checkpointing=options.gradient_checkpointing,
                         activation_dtype="bfloat16" if bf16 else "float32",
                         quantization=getattr(options, "quantization", None), world_size=world_size,
                         zero_stage=zero_stage)
