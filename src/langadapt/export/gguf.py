"""`langadapt export gguf`: a Llama-architecture model as one GGUF file for llama.cpp, checked by llama.cpp.

What is written (with the `gguf` package: its tensor name map, metadata keys and quantisers):

- the weights of SmolLM2 / Llama-2 / Llama-3-style models (`LlamaForCausalLM`), with q_proj and
  k_proj rows reordered the way llama.cpp's converter does (`permute_qk`; transformers undoes it
  when it loads a GGUF); a tied LM head is left out (llama.cpp reuses token_embd);
- types f32, f16, bf16 and q8_0 are written here; the k-quants and the other llama.cpp types
  (q4_k_m...) are made from an f16 file by llama.cpp's own `llama_model_quantize`;
- the tokenizer: SentencePiece pieces with scores and types (`tokenizer.ggml.model = llama`), or
  byte-level BPE tokens and merges (`gpt2`) with the llama.cpp pre-tokenizer name whose rule is the
  tokenizer's own (`tokenizer.pretokenize.llama_cpp_pre_name`); special tokens, BOS/EOS, whether
  BOS/EOS are added, and the chat template;
- `langadapt.adaptation`: the export's adaptation.json record (JSON), the model's lineage included.

Then the file is checked before it is renamed into place: llama.cpp (the `llama-cpp-python`
bindings, `vocab_only`) tokenises a fixed multilingual check set and a sample of the model's own
training text (when its adaptation.json names it) and must give transformers' ids on every line;
the first difference is named. `--allow-mismatch` writes the file anyway and reports the rate.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from langadapt.corpus import ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.model.load import MODEL_HELP, load_model
from langadapt.options import Options, OptionError, from_mapping, key_names, option
from langadapt.outputs import adaptation_record, atomic_output_file, read_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer, sentencepiece_model_path, tokenizer_kind
from langadapt.tokenizer.merge import CHECK_TEXTS
from langadapt.lang import get_profile
from langadapt.tokenizer.pretokenize import MARK_KEEPING_RULES, base_of_script_runs, llama_cpp_pre_name

PYTHON_TYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_CPP_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                   "q5_k_s", "q5_k_m", "q6_k")
TYPES = PYTHON_TYPES + LLAMA_CPP_TYPES
ARCHITECTURES = ("LlamaForCausalLM",)
ADAPTATION_KEY = "langadapt.adaptation"
TRAINING_SAMPLE = 200  # records of the model's own training text checked (when known)
LLAMA_CPP_MISSING = ("llama-cpp-python is not installed; install it with pip install 'langadapt[gguf]' (it builds "
                     "llama.cpp from source, see the README), or pass --skip-check to write the file unchecked")

# The fixed check set: the merge check texts (English, code, whitespace, emoji, Chinese, Tibetan) and
# more scripts with combining marks, digits and newlines.
EXPORT_CHECK_TEXTS = CHECK_TEXTS + [
    "대한민국은 민주공화국이다. 모든 국민은 법 앞에 평등하다 (제11조 ①항).",
    "हिन्दी में संयुक्ताक्षर: क्षत्रिय, ज्ञान, श्री।",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "العربية: مرحبا بالعالم ١٢٣",
    "日本語のテキスト、カタカナとひらがな。",
    "བོད་ཀྱི་སྐད་ཡིག་ནི་རྒྱ་ཆེ།\nཀ་ཁ་ག་ང་། ༡༢༣ ཨོཾ་མ་ཎི་པདྨེ་ཧཱུྃ༔",
    "Line one\n\nLine three\r\n\ttabbed   spaced    end\n",
    "Numbers 0 1 12 123 1234 12345, 3.14159 and 1,000,000; ids like a1b2c3.",
    "CamelCaseWords and snake_case_words, URLs https://example.org/a?b=c#d",
    "'s 're 'VE contractions: it's, we're, they'VE, I'm, you'll, he'd",
]


# ----------------------------------------------------------------------------- tensors

def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """q_proj/k_proj rows in llama.cpp's rotary layout (convert_hf_to_gguf.py `LlamaModel.permute`):
    HF keeps each head's two rotary halves apart, llama.cpp interleaves them."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) of every weight of a LlamaForCausalLM, q/k permuted, a tied head left out."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    head = model.get_output_embeddings()
    tied = head is None or head.weight is model.get_input_embeddings().weight
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise LangadaptError(f"tensor {name}: no llama.cpp name for it in the gguf package's llama map")
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("self_attn.q_proj.weight"):
            data = permute_qk(data, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            data = permute_qk(data, config.num_key_value_heads)
        yield gguf_name, data


def encode_tensor(name: str, data: np.ndarray, kind: str):
    """(array, gguf raw type or None) of one tensor in type `kind` (f32/f16/bf16/q8_0). Norms and
    other 1-D tensors stay f32, as in llama.cpp's converter; a q8_0 tensor whose rows do not fill
    whole blocks falls back to f16."""
    import gguf

    q = gguf.GGMLQuantizationType
    if data.ndim < 2 or kind == "f32":
        return data.astype(np.float32), None
    if kind == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] != 0:
        kind = "f16"
    if kind == "f16":
        return data.astype(np.float16), None
    qtype = q.BF16 if kind == "bf16" else q.Q8_0
    return gguf.quants.quantize(data, qtype), qtype


def file_type(kind: str) -> int:
    """The `general.file_type` (llama.cpp's llama_ftype) of a type name."""
    import gguf

    return int(gguf.LlamaFileType.ALL_F32 if kind == "f32" else gguf.LlamaFileType[f"MOSTLY_{kind.upper()}"])


# ----------------------------------------------------------------------------- checks before writing

def check_architecture(config, source) -> None:
    """Refuse models that are not the Llama architecture, and RoPE variants not written here."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if arch not in ARCHITECTURES or getattr(config, "model_type", "llama") != "llama":
        raise LangadaptError(f"{source}: architecture {arch} is not supported by `export gguf` (supported: "
                             f"{', '.join(ARCHITECTURES)}: SmolLM2, Llama-2, Llama-3 and their adapted models)")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise LangadaptError(f"{source}: RoPE type {rope['rope_type']!r} is not written by `export gguf` yet "
                             "(supported: default, linear)")


def rope_parameters(config) -> dict:
    """The RoPE settings of a transformers config (5.x `rope_parameters`, or the older fields)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def tokenizer_merge_record(record: dict) -> dict:
    """The `tokenizer merge` step in a model's adaptation.json chain ({} when there is none)."""
    chain = [record, *reversed(record.get("history", []))]
    return next((r for r in chain if r.get("step") == "tokenizer-merge"), {})


def pre_tokenizer_name(tok, record: dict, source) -> tuple[str, bool]:
    """(llama.cpp pre-tokenizer name, exact) of a byte-level BPE tokenizer. exact=False: a tokenizer
    extended with langadapt's script-runs rule, written with its base's llama.cpp rule, which
    reproduces it only where the target script's runs are what the base rule cuts anyway (Hangul,
    Han: letters only) and which the parity check must confirm. Anything else is a clear error."""
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer")
    name = llama_cpp_pre_name(pre)
    if name is not None:
        return name, True
    merge = tokenizer_merge_record(record)
    if merge.get("tokenizer_kind") == "byte-level-bpe" and merge.get("lang"):
        name = llama_cpp_pre_name(base_of_script_runs(pre, get_profile(merge["lang"])))
        if name is not None:
            return name, False
    raise LangadaptError(f"{source}: its byte-level pre-tokenizer has no llama.cpp counterpart that langadapt "
                         f"knows ({json.dumps(pre)[:200]}); llama.cpp would tokenise differently")


def script_runs_advice(lang: str | None) -> str:
    """How to re-merge a script-runs tokenizer so that llama.cpp reproduces it."""
    return (f"its tokenizer was extended by `tokenizer merge` with the script-runs pre-tokenizer ({lang} runs kept "
            "together), which llama.cpp cannot reproduce: it would cut that text differently and the new tokens "
            f"would not be used. Re-merge with `langadapt tokenizer merge --pre-tokenizer {MARK_KEEPING_RULES[0]} "
            "...` (a rule llama.cpp implements), then extend and train the model on that tokenizer")


# ----------------------------------------------------------------------------- the tokenizer in GGUF

def vocabulary(tok, kind: str, tokenizer_dir, n_rows: int) -> tuple[list[bytes], list[float], list[int]]:
    """(token texts, scores, token types) for `n_rows` ids: the tokenizer's ids, then "[PADi]" (unused)
    for embedding rows that have no token. SentencePiece pieces come from tokenizer.model (as
    llama.cpp's converter reads them); byte-level tokens are the tokenizer's own strings."""
    import gguf

    kinds = gguf.TokenType
    tokens, scores, types = [], [], []
    if kind == "sentencepiece":
        pieces = (gguf.SentencePieceVocab(Path(tokenizer_dir)).sentencepiece_tokens()
                  if sentencepiece_model_path(tokenizer_dir) else pieces_from_merges(tok))
        for text, score, toktype in pieces:
            tokens.append(text)
            scores.append(score)
            types.append(int(toktype))
    strings = tok.convert_ids_to_tokens(list(range(len(tokens), len(tok))))
    added = tok.added_tokens_decoder
    for i, text in enumerate(strings, start=len(tokens)):
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(kinds.UNUSED))
        else:
            tokens.append(text.encode("utf-8"))
            special = i in added and added[i].special
            types.append(int(kinds.CONTROL if special else kinds.USER_DEFINED if i in added else kinds.NORMAL))
        scores.append(-1000.0 if i in added else 0.0)
    if len(tokens) > n_rows:
        raise LangadaptError(f"the tokenizer has {len(tokens)} tokens but the model only {n_rows} embedding rows")
    for i in range(len(tokens), n_rows):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(kinds.UNUSED))
    return tokens, scores, types


def pieces_from_merges(tok) -> list[tuple[bytes, float, int]]:
    """(piece, score, type) of a SentencePiece-BPE vocabulary known only from tokenizer.json (its
    tokenizer.model was not saved along, e.g. by `model extend` or training): a piece scores minus the
    rank of the first merge that makes it, which orders llama.cpp's merges as the ranked merges of
    tokenizers (langadapt's merged tokenizer.json ranks merges by sentencepiece score)."""
    import gguf

    data = json.loads(tok.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise LangadaptError(f"a {model.get('type')} SentencePiece tokenizer without its tokenizer.model cannot be "
                             "written to GGUF; keep tokenizer.model next to tokenizer.json")
    rank: dict[str, int] = {}
    for r, merge in enumerate(model["merges"]):
        rank.setdefault("".join(merge) if isinstance(merge, list) else merge.replace(" ", "", 1), r)
    special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    out = []
    for text, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        toktype = (gguf.TokenType.CONTROL if i in special else gguf.TokenType.UNKNOWN if text == model.get("unk_token")
                   else gguf.TokenType.BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", text) else gguf.TokenType.NORMAL)
        out.append((text.encode("utf-8"), -float(rank[text]) if text in rank else 0.0, toktype))
    return out


def adds_special(tok) -> dict[str, bool]:
    """Whether the tokenizer puts BOS in front / EOS at the end of an encoded text."""
    ids = tok.encode("a")
    bare = tok.encode("a", add_special_tokens=False)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return {"bos": bos is not None and len(ids) > len(bare) and ids[0] == bos,
            "eos": eos is not None and len(ids) > len(bare) and ids[-1] == eos}


def add_tokenizer(writer, tok, tokenizer_dir, n_rows: int, pre: str | None) -> None:
    """Write the tokenizer metadata: model, pre-tokenizer, tokens, scores, types, merges, special
    token ids, add BOS/EOS and the chat template."""
    import gguf

    kind = tokenizer_kind(tok)
    tokens, scores, types = vocabulary(tok, kind, tokenizer_dir, n_rows)
    writer.add_tokenizer_model("llama" if kind == "sentencepiece" else "gpt2")
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    if kind == "sentencepiece":
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:  # gguf's SpecialVocab reads merges from a saved tokenizer.json
        tok.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=kind != "sentencepiece", n_vocab=n_rows)
    special.special_token_ids = {name: getattr(tok, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad")
                                 if getattr(tok, f"{name}_token_id", None) is not None}
    special.add_special_token = adds_special(tok)
    special.chat_template = tok.chat_template or None
    special.add_to_gguf(writer, quiet=True)


# ----------------------------------------------------------------------------- writing

def write_gguf(model, tok, tokenizer_dir, path, kind: str, pre: str | None, record: dict) -> None:
    """Write `model` (a LlamaForCausalLM) and `tok` as a GGUF file of type `kind` (f32/f16/bf16/q8_0)."""
    import gguf

    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = rope_parameters(config)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(Path(str(record.get("model", "model"))).name)
    writer.add_file_type(file_type(kind))
    if kind == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    n_rows = model.get_input_embeddings().weight.shape[0]
    writer.add_vocab_size(n_rows)
    add_tokenizer(writer, tok, tokenizer_dir, n_rows, pre)
    writer.add_string(ADAPTATION_KEY, json.dumps(record, ensure_ascii=False))
    for name, data in llama_tensors(model):
        array, raw = encode_tensor(name, data, kind)
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def require_llama_cpp():
    """The `llama_cpp` bindings module, or a clear error saying how to install them."""
    try:
        import llama_cpp
    except ImportError as e:
        raise LangadaptError(LLAMA_CPP_MISSING) from e
    return llama_cpp


def quantize_with_llama_cpp(source, out, kind: str) -> None:
    """llama.cpp's `llama_model_quantize` of the GGUF `source` into `out` with type `kind` (e.g. q4_k_m)."""
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(kind)
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise LangadaptError(f"llama.cpp could not quantise {source} to {kind} (llama_model_quantize returned {code})")


# ----------------------------------------------------------------------------- the parity check

class LlamaCppVocab:
    """A GGUF file's tokenizer loaded by llama.cpp (`vocab_only`: no weights are read)."""

    def __init__(self, path):
        self.llama_cpp = require_llama_cpp()
        self.llama_cpp.llama_backend_init()
        self.llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p())
        params = self.llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = self.llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise LangadaptError(f"{path}: llama.cpp could not load this GGUF file")
        self.vocab = self.llama_cpp.llama_model_get_vocab(self.model)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's ids for `text`: no BOS/EOS added, special-token text parsed (as transformers does)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            buf = (self.llama_cpp.llama_token * size)()
            n = self.llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, False, True)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def close(self) -> None:
        if self.model:
            self.llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _log_callback_type():
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@_log_callback_type()
def _quiet_log(level, text, data):  # llama.cpp's loading log is long; errors surface as return codes
    return None


def compare_tokenizers(hf_tok, llama_vocab, texts: list[str]) -> dict:
    """Compare transformers' ids (no special tokens added) with llama.cpp's on every text: counts,
    mismatch rate, and the first difference (text, position, both ids and tokens there)."""
    mismatches, first = 0, None
    for i, text in enumerate(texts):
        hf = hf_tok.encode(text, add_special_tokens=False)
        ll = llama_vocab.tokenize(text)
        if hf == ll:
            continue
        mismatches += 1
        if first is None:
            at = next((k for k, (a, b) in enumerate(zip(hf, ll)) if a != b), min(len(hf), len(ll)))
            first = {"index": i, "text": text[:200], "position": at, "transformers": hf[at:at + 6],
                     "llama_cpp": ll[at:at + 6], "transformers_tokens": hf_tok.convert_ids_to_tokens(hf[at:at + 6]),
                     "transformers_count": len(hf), "llama_cpp_count": len(ll)}
    return {"texts": len(texts), "mismatches": mismatches,
            "mismatch_rate": round(mismatches / len(texts), 4) if texts else 0.0, "first_difference": first}


def describe_difference(first: dict) -> str:
    """One line naming where llama.cpp and transformers first differ."""
    return (f"text {first['index']} {first['text'][:60]!r}: at token {first['position']} transformers gives "
            f"{first['transformers']} {first['transformers_tokens']} but llama.cpp {first['llama_cpp']} "
            f"({first['transformers_count']} vs {first['llama_cpp_count']} tokens)")


def training_texts(record: dict, limit: int = TRAINING_SAMPLE) -> tuple[list[str], str | None]:
    """Up to `limit` records of the training text named in a model's adaptation.json chain (the
    latest step with a recipe corpus), read the way training read it; ([], None) when unknown or gone."""
    chain = [record, *reversed(record.get("history", []))]
    recipe = next((r["recipe"] for r in chain if isinstance(r.get("recipe"), dict) and r["recipe"].get("corpus")),
                  None)
    if recipe is None:
        return [], None
    try:
        reading = from_mapping(ReadingOptions, {k: recipe[k] for k in key_names(ReadingOptions) if k in recipe})
        texts = []
        for text in reading.iter_texts(recipe["corpus"]):
            texts.append(text)
            if len(texts) >= limit:
                break
    except (LangadaptError, OSError):
        return [], None  # moved or deleted since training: the fixed check set still runs
    return texts, ", ".join(map(str, recipe["corpus"]))


# ----------------------------------------------------------------------------- command

@dataclass
class ExportGgufOptions(Options):
    """Write a Llama-architecture model (SmolLM2, Llama-2/3 and models adapted from them) as one GGUF file
    for llama.cpp, Ollama and LM Studio: weights in --type (f32, f16, bf16, q8_0 written here; q4_k_m and the
    other llama.cpp types by llama.cpp's own quantiser), the tokenizer with its special tokens, BOS/EOS and chat
    template, and the adaptation.json lineage as metadata. --adapter merges a pretrain/sft adapter first. The
    file is then loaded by llama.cpp, which must tokenise a multilingual check set and a sample of the model's
    training text exactly as transformers does, or nothing is written."""

    model: str = option(None, metavar="MODEL", positional=True, required=True, help=MODEL_HELP)
    out: str = option(None, metavar="FILE.gguf", required=True, help="the GGUF file to write (atomically)")
    overwrite: bool = option(False, help="replace an existing --out")
    type: str = option("f16", choices=TYPES, metavar="TYPE",
                       help=f"weight type: {', '.join(PYTHON_TYPES)} (written here) or {', '.join(LLAMA_CPP_TYPES)} "
                            "(llama.cpp's quantiser)")
    adapter: str | None = option(None, metavar="DIR", help="a pretrain/sft adapter dir to merge into MODEL first")
    allow_mismatch: bool = option(False, help="write the file even when llama.cpp tokenises some check text "
                                              "differently (prints the mismatch rate)")
    skip_check: bool = option(False, help="write without loading the file in llama.cpp (no parity check)")

    def __post_init__(self):
        super().__post_init__()
        if not str(self.out).endswith(".gguf"):
            raise OptionError("out", f"must be a .gguf file name, got {self.out!r}")


def export_gguf_command(opts: ExportGgufOptions) -> int:
    """Write MODEL (plus --adapter) as a GGUF file of --type and check its tokenizer in llama.cpp."""
    from transformers import AutoConfig

    start = time.perf_counter()
    if Path(opts.out).exists() and not opts.overwrite:
        raise LangadaptError(f"output {opts.out} already exists; choose another --out or pass --overwrite")
    source = resolve_model_source(opts.model)
    check_architecture(AutoConfig.from_pretrained(str(source)), opts.model)
    tokenizer_dir = Path(opts.adapter) if opts.adapter else Path(str(source))
    tok = load_tokenizer(str(tokenizer_dir))
    lineage_from = opts.adapter or source
    previous = read_adaptation_json(lineage_from)
    kind = tokenizer_kind(tok)
    if kind not in ("sentencepiece", "byte-level-bpe"):
        raise LangadaptError(f"{tokenizer_dir}: tokenizer type {kind} cannot be written to GGUF")
    pre, exact = pre_tokenizer_name(tok, previous, tokenizer_dir) if kind == "byte-level-bpe" else (None, True)
    advice = None if exact else script_runs_advice(tokenizer_merge_record(previous).get("lang"))
    if advice and opts.skip_check:
        raise LangadaptError(f"{tokenizer_dir}: {advice}. (Without --skip-check, llama.cpp's tokenisation is "
                             "compared with transformers' and the file is written if they agree.)")
    if not opts.skip_check or opts.type in LLAMA_CPP_TYPES:
        require_llama_cpp()  # before the long part

    model = load_model(str(source), dtype="float32").eval()
    if opts.adapter:
        from langadapt.train.adapter import merge_adapter
        model = merge_adapter(model, opts.adapter)
    record = adaptation_record("export-gguf", inherit_from=lineage_from, model=str(opts.model),
                               adapter=str(opts.adapter) if opts.adapter else None, type=opts.type,
                               tokenizer_kind=kind, llama_cpp_pre_tokenizer=pre,
                               pre_tokenizer_exact=exact)
    parity = None
    with atomic_output_file(opts.out, overwrite=opts.overwrite) as tmp:
        if opts.type in PYTHON_TYPES:
            write_gguf(model, tok, tokenizer_dir, tmp, opts.type, pre, record)
        else:
            f16 = tmp.with_name(tmp.name + ".f16")
            try:
                write_gguf(model, tok, tokenizer_dir, f16, "f16", pre, record)
                quantize_with_llama_cpp(f16, tmp, opts.type)
            finally:
                f16.unlink(missing_ok=True)
        if not opts.skip_check:
            parity = check_parity(tmp, tok, previous, opts.allow_mismatch, advice)
    size = Path(opts.out).stat().st_size
    print(json.dumps({"out": str(opts.out), "type": opts.type, "bytes": size, "tokenizer": kind,
                      "llama_cpp_pre_tokenizer": pre, "parity": parity,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=2, ensure_ascii=False))
    return 0


def check_parity(path, tok, record: dict, allow_mismatch: bool, advice: str | None = None) -> dict:
    """Compare llama.cpp's tokenisation of `path` with transformers' on the check set and the training
    sample; raise on any difference unless `allow_mismatch` (then print the rate). `advice` ends the
    error (how to re-merge a script-runs tokenizer)."""
    sample, corpus = training_texts(record)
    with LlamaCppVocab(path) as vocab:
        result = {"check_set": compare_tokenizers(tok, vocab, EXPORT_CHECK_TEXTS)}
        if sample:
            result["training_sample"] = {"corpus": corpus, **compare_tokenizers(tok, vocab, sample)}
    for name, part in result.items():
        if part["mismatches"] and not allow_mismatch:
            first = describe_difference(part["first_difference"])
            raise LangadaptError(f"llama.cpp tokenises {part['mismatches']} of {part['texts']} {name} texts "
                                 f"differently from transformers; first: {first}. Nothing was written "
                                 "(--allow-mismatch writes it anyway)" + (f". {advice}" if advice else ""))
        if part["mismatches"]:
            print(f"warning: llama.cpp tokenises {part['mismatch_rate']:.1%} of the {name} texts differently "
                  f"({part['mismatches']} of {part['texts']}); first: {describe_difference(part['first_difference'])}")
    return result
