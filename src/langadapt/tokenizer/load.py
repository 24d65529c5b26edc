"""Load a tokenizer from anything a user may point at, and say what kind it is.

Accepted specs: an HF tokenizer/model directory, a SentencePiece `.model` file, a `.gguf`
(full model or vocab-only), a model alias (`smollm2-135m`) or a hub id. Every result is a
transformers fast tokenizer (`TokenizersBackend`), so later stages treat them all alike.

SentencePiece tokenizers (a `.model` file, a directory with only `tokenizer.model`, a llama
GGUF vocabulary) are built to give exactly sentencepiece's ids: text gets one "▁" prepended
and every space becomes "▁" (sentencepiece's `add_dummy_prefix`), the legacy Llama scheme.
transformers 5's own defaults drop the "▁" before a leading space (" Hello" -> [15043]
instead of sentencepiece's [29871, 15043]), which would make counts and ids disagree with
sentencepiece and llama.cpp.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gguf import GGUFReader
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer, normalizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import LlamaConverter, SpmConverter
from transformers.tokenization_utils_base import generate_merges

from langadapt.errors import LangadaptError
from langadapt.sources import ALIASES, alias_gguf_path, check_gguf, gguf_cache_dir, hub_error, is_gguf, \
    looks_like_hub_id

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(spec: str | os.PathLike):
    """Load a fast tokenizer from an HF dir, a SentencePiece `.model`, a `.gguf`, an alias or a hub id."""
    from transformers import AutoTokenizer  # imports torch: only when a tokenizer is loaded, not for --help

    text = str(spec)
    if text in ALIASES:
        return _load_gguf_tokenizer(alias_gguf_path(text))
    path = Path(text).expanduser()
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "tokenizer.json" not in names and "tokenizer.model" in names:
            tok = _load_sentencepiece(path / "tokenizer.model")
            tok.chat_template = _dir_chat_template(path)
            return tok
        if not names & set(_TOKENIZER_FILES):
            raise LangadaptError(f"{path}: no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)})")
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise LangadaptError(f"{path}: transformers could not load this tokenizer: {_first_line(e)}") from e
    if path.is_file():
        if is_gguf(path):
            return _load_gguf_tokenizer(path)
        if path.suffix == ".gguf":
            check_gguf(path)  # raises: not a GGUF
        if _is_sentencepiece_model(path):
            return _load_sentencepiece(path)
        raise LangadaptError(f"{path}: not a tokenizer (expected an HF tokenizer directory, a SentencePiece "
                             ".model file or a .gguf file)")
    if looks_like_hub_id(text):
        try:
            return AutoTokenizer.from_pretrained(text)
        except Exception as e:
            raise hub_error(text, e) from e
    raise LangadaptError(f"{text}: no such file or directory (and not a hub id or alias: {', '.join(ALIASES)})")


def tokenizer_kind(tok) -> str:
    """Classify a tokenizer as "byte-level-bpe", "sentencepiece" or "other" from its backend pipeline.

    A ByteLevel pre-tokenizer or decoder means byte-level BPE (GPT-2, SmolLM2, Llama 3); a
    Unigram model, or a BPE that marks spaces with "▁" (Metaspace, or a Prepend/Replace
    normalizer) or falls back to bytes, means SentencePiece (Llama 2, Mistral, Gemma).
    """
    backend = getattr(tok, "backend_tokenizer", tok)
    state = json.loads(backend.to_str())
    pipeline = json.dumps([state.get("normalizer"), state.get("pre_tokenizer"), state.get("decoder")],
                          ensure_ascii=False)
    model = state.get("model", {})
    if '"ByteLevel"' in pipeline:
        return "byte-level-bpe"
    if model.get("type") == "Unigram":
        return "sentencepiece"
    if model.get("type") == "BPE" and ("▁" in pipeline or model.get("byte_fallback")):
        return "sentencepiece"
    return "other"


def sentencepiece_model_path(spec: str | os.PathLike) -> Path | None:
    """The SentencePiece `.model` file behind `spec` (the file itself or `tokenizer.model` in a dir), else None."""
    path = Path(str(spec)).expanduser()
    if path.is_file() and _is_sentencepiece_model(path):
        return path
    if path.is_dir() and (path / "tokenizer.model").is_file() and _is_sentencepiece_model(path / "tokenizer.model"):
        return path / "tokenizer.model"
    return None


# ----------------------------------------------------------------------------- SentencePiece

def _dir_chat_template(folder: Path) -> str | None:
    """The chat template of a tokenizer folder: chat_template.jinja or tokenizer_config.json's field."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except json.JSONDecodeError as e:
            raise LangadaptError(f"{config}: invalid JSON ({e})") from e
        return template if isinstance(template, str) else None
    return None


def _read_sentencepiece_proto(path: Path):
    """Parse a SentencePiece model file; None if it is not one."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError, RuntimeWarning):
        return None
    return proto if len(proto.pieces) > 0 else None


def _is_sentencepiece_model(path: Path) -> bool:
    if path.suffix not in (".model", ".spm") or is_gguf(path):
        return False
    return _read_sentencepiece_proto(path) is not None


def _load_sentencepiece(path: Path):
    """Build a fast tokenizer from a SentencePiece `.model` file, matching sentencepiece's ids.

    Uses transformers' own slow->fast converters (LlamaConverter for byte-fallback BPE models
    such as Llama 2's, SpmConverter for the rest, e.g. Unigram); BOS is added on encode when
    the model defines one, as sentencepiece-based Llama tokenizers do.
    """
    proto = _read_sentencepiece_proto(path)
    if proto is None:
        raise LangadaptError(f"{path}: not a SentencePiece model file")

    class _SpmFile:
        """The little the converters read from a slow tokenizer."""
        vocab_file = str(path)
        legacy = True  # sentencepiece's own behaviour (see the module docstring)
        add_prefix_space = proto.normalizer_spec.add_dummy_prefix

        @staticmethod
        def convert_ids_to_tokens(i: int) -> str:
            return proto.pieces[i].piece

    class _BpeConverter(LlamaConverter):
        # transformers 5's SpmConverter.tokenizer() no longer builds BPE models; do it here.
        # Merges are ranked by piece score, as sentencepiece ranks them (ranking by id would
        # merge the score -1e9 "▁▁" pieces first: " Hello" -> [259, 10994], not [29871, 15043]).
        def tokenizer(self, proto):
            vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
            merges = generate_merges(vocab, {p.piece: p.score for p in proto.pieces})
            tokenizer = Tokenizer(BPE(vocab, merges, unk_token=proto.trainer_spec.unk_piece,
                                      fuse_unk=True, byte_fallback=True, dropout=None))
            tokenizer.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                                  for p in proto.pieces if p.type in (3, 4)])
            return tokenizer

    is_bpe = proto.trainer_spec.model_type == 2
    converter = _BpeConverter if is_bpe and proto.trainer_spec.byte_fallback else SpmConverter
    if is_bpe and not proto.trainer_spec.byte_fallback:
        raise LangadaptError(f"{path}: SentencePiece BPE without byte_fallback is not supported "
                             "(expected a Llama-style BPE with byte fallback, or a Unigram model)")
    try:
        backend = converter(_SpmFile()).converted()
    except Exception as e:
        raise LangadaptError(f"{path}: could not convert this SentencePiece model: {_first_line(e)}") from e
    spec = proto.trainer_spec

    def piece(i: int) -> str | None:
        return proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=piece(spec.bos_id), eos_token=piece(spec.eos_id),
        unk_token=piece(spec.unk_id), pad_token=piece(spec.pad_id),
        add_bos_token=spec.bos_id >= 0, add_eos_token=False,
    )
    tok.vocab_file = str(path)
    return tok


# ----------------------------------------------------------------------------- GGUF

def _load_gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file (vocab-only files included).

    Uses the already converted model directory when there is one (fast), otherwise
    transformers' GGUF tokenizer converter. For llama (SentencePiece) vocabularies the
    pre-tokenisation is set to sentencepiece's, as llama.cpp tokenises.
    """
    from transformers import AutoTokenizer  # imports torch: only when a tokenizer is loaded

    check_gguf(path)
    cached = gguf_cache_dir(path)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    try:
        tok = AutoTokenizer.from_pretrained(str(path.resolve().parent), gguf_file=path.name)
    except Exception as e:
        raise LangadaptError(f"{path}: transformers could not read a tokenizer from this GGUF: {_first_line(e)}") from e
    backend = tok.backend_tokenizer
    if type(backend.model).__name__ == "BPE" and "Metaspace" in type(backend.pre_tokenizer).__name__:
        add_prefix = _gguf_add_space_prefix(path)
        steps = ([normalizers.Prepend("▁")] if add_prefix else []) + [normalizers.Replace(" ", "▁")]
        backend.normalizer = normalizers.Sequence(steps)
        backend.pre_tokenizer = None
    return tok


def _gguf_add_space_prefix(path: Path) -> bool:
    """GGUF `tokenizer.ggml.add_space_prefix` (llama.cpp's default for llama vocabularies is true)."""
    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_space_prefix")
    if field is None:
        return True
    return bool(field.parts[field.data[0]][0])


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
