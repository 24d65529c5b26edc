"""Load a causal LM from anywhere (alias, `.gguf`, local dir, hub id) and describe it cheaply.

`model_info` reads the config, the safetensors headers and the tokenizer; it never loads the
weights of a local model, so it answers in about a second even for large models.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from langadapt.errors import LangadaptError
from langadapt.options import Options, OptionError, option
from langadapt.outputs import read_adaptation_json
from langadapt.sources import hub_error, resolve_model_source
from langadapt.tokenizer.load import load_tokenizer, tokenizer_kind

MODEL_HELP = ("a hub id, a local HF model directory, a .gguf file (converted once into $LANGADAPT_HOME, "
              "default ~/.cache/langadapt) or the alias 'smollm2-135m'")
KIND_NAMES = {"byte-level-bpe": "byte-level BPE", "sentencepiece": "SentencePiece", "other": "other"}


ROPE_TYPES = ("linear", "dynamic", "yarn")
AUTO_MAX_FACTOR = 4  # the longest input `auto` accepts, in trained contexts (what docs/benchmarks.md measured)
ROPE_SCALING_HELP = ("RoPE scaling for inputs longer than the trained context: linear:F (position interpolation), "
                     "dynamic:F (NTK-aware, grows with the input), yarn:F, auto (NTK-aware with the factor taken "
                     f"from each input's length: exact within the trained context, up to {AUTO_MAX_FACTOR}x beyond) "
                     "or none")


def parse_rope_scaling(spec: str | None) -> tuple[str, float] | None:
    """("linear" | "dynamic" | "yarn" | "auto", factor) of a --rope-scaling value; None for none/empty."""
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return None
    spec = str(spec).strip().lower()
    if spec == "auto":
        return "auto", float(AUTO_MAX_FACTOR)
    kind, _, factor = spec.partition(":")
    try:
        value = float(factor)
    except ValueError:
        value = 0.0
    if kind not in ROPE_TYPES or not value >= 1:
        raise LangadaptError(f"--rope-scaling must be linear:F, dynamic:F or yarn:F with F >= 1 (e.g. linear:2), "
                             f"auto or none; got '{spec}'")
    return kind, value


def check_rope_scaling(value: str | None) -> None:
    """The check of a `rope_scaling` option field: an OptionError naming it for a bad value."""
    try:
        parse_rope_scaling(value)
    except LangadaptError as e:
        raise OptionError("rope_scaling", str(e).removeprefix("--rope-scaling ")) from e


def apply_rope_scaling(config, spec: str | None) -> None:
    """Set the RoPE scaling of `spec` (see `parse_rope_scaling`) in a transformers config, in place.

    Uses transformers' own `rope_parameters` (rope_type linear, dynamic or yarn); the rotary
    embedding reads them, no attention code is patched. linear and yarn raise
    `max_position_embeddings` to F times the trained context (yarn keeps the trained one as
    `original_max_position_embeddings`); dynamic keeps it, because transformers measures the
    input against it, and records the longest input it is meant for in `langadapt_max_context`.
    auto is dynamic with factor 1: the NTK base grows by (input length / trained context), so
    inputs within the trained context are computed exactly as without scaling."""
    parsed = parse_rope_scaling(spec)
    if parsed is None:
        return
    kind, factor = parsed
    text = config.get_text_config()
    rope = dict(getattr(text, "rope_parameters", None) or {})
    if "rope_theta" not in rope or getattr(text, "layer_types", None) and any(k in rope for k in text.layer_types):
        raise LangadaptError(f"--rope-scaling needs a model with one set of rotary position embeddings; "
                             f"{getattr(text, 'model_type', 'this model')} has {rope or 'none'}")
    if rope.get("rope_type", "default") != "default":
        raise LangadaptError(f"the model already scales RoPE ({rope['rope_type']}); --rope-scaling applies "
                             "only to a model with plain RoPE")
    trained = text.max_position_embeddings
    if kind == "auto":
        text.rope_parameters = {**rope, "rope_type": "dynamic", "factor": 1.0}
    elif kind == "dynamic":
        text.rope_parameters = {**rope, "rope_type": "dynamic", "factor": factor}
    else:
        text.rope_parameters = {**rope, "rope_type": kind, "factor": factor}
        if kind == "yarn":
            text.rope_parameters["original_max_position_embeddings"] = trained
        text.max_position_embeddings = int(trained * factor)
    if kind in ("auto", "dynamic"):
        text.langadapt_max_context = int(trained * factor)


def model_context(model_or_config) -> int | None:
    """The longest input (in tokens) a loaded model is meant for: its trained context, or that times
    the factor of its RoPE scaling."""
    config = getattr(model_or_config, "config", model_or_config).get_text_config()
    return getattr(config, "langadapt_max_context", None) or getattr(config, "max_position_embeddings", None)


def load_model(spec: str | os.PathLike, dtype: Any = None, rope_scaling: str | None = None,
               quantization_config: Any = None, attn_implementation: str | None = None):
    """Load a causal LM (`AutoModelForCausalLM`) from an alias, `.gguf`, local dir or hub id.

    `dtype`: None keeps the dtype the checkpoint was saved in; else a torch dtype or its name
    ("float32", "bfloat16", ...). `rope_scaling`: "linear:F", "dynamic:F", "yarn:F", "auto" or
    None (see `apply_rope_scaling`). `quantization_config`: transformers' (e.g. bitsandbytes', for QLoRA).
    `attn_implementation`: transformers' attention kernel (None: its default, sdpa).
    """
    source = resolve_model_source(spec)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise LangadaptError(f"unknown dtype '{dtype}' (expected e.g. float32, bfloat16, float16)")
        dtype = getattr(torch, dtype)
    try:
        kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if parse_rope_scaling(rope_scaling):
            kwargs["config"] = AutoConfig.from_pretrained(str(source))
            apply_rope_scaling(kwargs["config"], rope_scaling)
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype if dtype is not None else "auto", **kwargs)
    except LangadaptError:
        raise
    except Exception as e:
        if isinstance(source, str):
            raise hub_error(source, e) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LangadaptError(f"{source}: transformers could not load this model: {first}") from e


def safetensors_shapes(model_dir: str | os.PathLike) -> dict[str, tuple[list[int], str]]:
    """{tensor name: (shape, dtype)} from the safetensors headers of a model dir (no weights read)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    shapes: dict[str, tuple[list[int], str]] = {}
    for name in files:
        try:
            with safe_open(str(model_dir / name), framework="numpy") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    shapes[key] = (list(sl.get_shape()), str(sl.get_dtype()))
        except Exception as e:
            raise LangadaptError(f"{model_dir / name}: unreadable safetensors file ({e})") from e
    return shapes


def human_count(n: int) -> str:
    """134515008 -> "134.5M"; 6738415616 -> "6.74B"."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _meta_parameter_count(config) -> int:
    """Parameter count of a model built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def model_info(spec: str | os.PathLike) -> dict:
    """Facts about a model: architecture, parameters, vocab sizes, tokenizer kind, tied embeddings,
    chat template, shape (hidden size, layers, heads, context length), dtype and where it came from."""
    source = resolve_model_source(spec)
    try:
        config = AutoConfig.from_pretrained(str(source))
    except Exception as e:
        if isinstance(source, str):
            raise hub_error(source, e) from e
        raise LangadaptError(f"{source}/config.json: not a valid model config ({e})") from e
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tok = load_tokenizer(source)

    info: dict[str, Any] = {"spec": str(spec), "loaded_from": str(source)}
    record = read_adaptation_json(source)
    if record:
        info["converted_from"] = record.get("source")
    if isinstance(source, Path):
        shapes = safetensors_shapes(source)
        if not shapes:
            raise LangadaptError(f"{source}: no *.safetensors weights found")
        parameters = sum(_numel(shape) for shape, _ in shapes.values())
        dtypes = Counter(dtype for _, dtype in shapes.values())
        dtype = _DTYPE_NAMES.get(dtypes.most_common(1)[0][0], dtypes.most_common(1)[0][0])
        has_lm_head = any(k.endswith("lm_head.weight") for k in shapes)
        tied = bool(getattr(text, "tie_word_embeddings", False)) and not has_lm_head
    else:
        parameters = _meta_parameter_count(config)
        dtype = str(getattr(config, "dtype", None) or "unknown").replace("torch.", "")
        tied = bool(getattr(text, "tie_word_embeddings", False))
    kind = tokenizer_kind(tok)
    info.update(
        architecture=(config.architectures or [type(config).__name__])[0],
        model_type=config.model_type,
        parameters=parameters,
        parameters_human=human_count(parameters),
        vocab_size=getattr(text, "vocab_size", None),
        tokenizer_vocab_size=len(tok),
        tokenizer_kind=kind,
        tied_embeddings=tied,
        chat_template=bool(getattr(tok, "chat_template", None)),
        hidden_size=getattr(text, "hidden_size", None),
        num_layers=getattr(text, "num_hidden_layers", None),
        num_heads=getattr(text, "num_attention_heads", None),
        num_kv_heads=getattr(text, "num_key_value_heads", None),
        context_length=getattr(text, "max_position_embeddings", None),
        dtype=dtype,
    )
    return info


_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def format_model_info(info: dict) -> str:
    """The facts of `model_info` as a compact, aligned text block."""
    def yes(v: bool) -> str:
        return "yes" if v else "no"

    def num(v) -> str:
        return f"{v:,}" if isinstance(v, int) else str(v)

    loaded = info["loaded_from"]
    if info.get("converted_from"):
        loaded += f"\n{'':18}(converted from {info['converted_from']})"
    heads = f"{info['num_heads']} heads"
    if info.get("num_kv_heads") and info["num_kv_heads"] != info["num_heads"]:
        heads += f" ({info['num_kv_heads']} key/value heads)"
    rows = [
        ("model", info["spec"]),
        ("loaded from", loaded),
        ("architecture", f"{info['architecture']} ({info['model_type']})"),
        ("parameters", f"{info['parameters_human']} ({info['parameters']:,})"),
        ("vocab size", f"{num(info['vocab_size'])} (config), {num(info['tokenizer_vocab_size'])} (tokenizer)"),
        ("tokenizer", KIND_NAMES.get(info["tokenizer_kind"], info["tokenizer_kind"])),
        ("tied embeddings", yes(info["tied_embeddings"])),
        ("chat template", yes(info["chat_template"])),
        ("shape", f"hidden size {num(info['hidden_size'])}, {info['num_layers']} layers, {heads}"),
        ("context length", num(info["context_length"])),
        ("dtype", info["dtype"]),
    ]
    return "\n".join(f"  {name:<16}{value}" for name, value in rows)


@dataclass
class ModelInfoOptions(Options):
    """Print a model's facts: architecture, parameters, vocab, tokenizer type, tied embeddings, chat template,
    shape, dtype. Reads the config and the safetensors headers, not the weights."""

    model: str = option(None, metavar="MODEL", positional=True, required=True, help=MODEL_HELP)
    json: bool = option(False, help="print the facts as JSON")


def model_info_command(opts: ModelInfoOptions) -> int:
    """Print the facts of `model_info`."""
    info = model_info(opts.model)
    print(json.dumps(info, ensure_ascii=False, indent=2) if opts.json else format_model_info(info))
    return 0
