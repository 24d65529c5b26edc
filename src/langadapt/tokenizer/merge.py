"""`langadapt tokenizer merge`: extend a base tokenizer with target-language pieces.

Dispatch by the kind of the base tokenizer:

- SentencePiece BPE bases (Llama-1/2, Mistral, Baichuan, Chinese-LLaMA): the donor is a
  SentencePiece model (`--add`, or trained here from `--corpus` as a BPE of `--vocab-size`),
  merged by `merge_spm.merge_sentencepiece` (default) or `merge_spm.compat_merge`
  (`--compat chinese-llama`). The output keeps the merged `tokenizer.model` and a `tokenizer.json`
  whose merges are ranked by piece score, checked to give sentencepiece's ids.
- byte-level BPE bases (GPT-2 style: SmolLM2, Llama-3, Qwen): `--corpus` goes to
  `merge_bpe.extend_byte_level_bpe` with `--vocab-size` new tokens.

The output directory (written atomically) loads with `AutoTokenizer.from_pretrained` and carries
the base's special tokens and chat template, `merge_report.json` and `adaptation.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from langadapt.corpus import CORPUS_HELP, ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import OutputOptions, file_sha256, write_adaptation_json, write_json_atomic
from langadapt.tokenizer.load import load_tokenizer, sentencepiece_model_path, tokenizer_kind
from langadapt.tokenizer.merge_bpe import extend_byte_level_bpe
from langadapt.tokenizer.pretokenize import PRE_TOKENIZER_RULES
from langadapt.tokenizer.merge_spm import compat_merge, merge_sentencepiece, normalizer_mismatch, read_model
from langadapt.tokenizer.train import train_sentencepiece, write_model_dir

# Non-target text whose ids must not change, and mixed text for the HF == sentencepiece check.
CHECK_TEXTS = [
    "Hello world! This is a test of the tokenizer, with numbers 12345 and 3.14.",
    "def add(a, b):\n    return a + b  # sum\n",
    "  two leading spaces,\ttabs and trailing ",
    "Emoji 🙂👍🏽 and accents: café, naïve, Ελληνικά, русский",
    "中文测试：今天天气很好。",
    "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན། mixed with English 2016",
]
CHECK_RECORDS = 300  # corpus records also checked (when a corpus is given)


@dataclass
class TokenizerMergeOptions(Options):
    """Extend a base tokenizer with target-language pieces.

    SentencePiece bases (Llama-1/2, Mistral, Baichuan): merge a donor SentencePiece model (--add, or one
    trained here from --corpus as a BPE of --vocab-size pieces). By default only donor pieces with
    target-script characters are added, scored in the donor's own order (so target text is cut as the donor
    cuts it and other text exactly as before), and unreachable pieces are repaired or dropped. --compat
    chinese-llama appends every missing piece with score 0 (the published recipe). Byte-level BPE bases
    (SmolLM2, Llama-3, Qwen): --corpus with --vocab-size new tokens. Writes an HF tokenizer dir with
    merge_report.json and adaptation.json."""

    base: str = option(None, metavar="TOKENIZER", required=True,
                       help="base tokenizer: HF dir, tokenizer.model, .gguf, alias or hub id")
    add: str | None = option(None, metavar="SPM_MODEL", help="donor SentencePiece .model to merge")
    corpus: list[str] = option([], metavar="PATH", help=CORPUS_HELP)
    reading: ReadingOptions = embed(ReadingOptions)
    output: OutputOptions = embed(OutputOptions)
    vocab_size: int | None = option(None, help="with --corpus: donor vocabulary (SentencePiece base) or new tokens "
                                               "(byte-level base)")
    compat: str | None = option(None, choices=("chinese-llama",),
                                help="reproduce the Chinese-LLaMA recipe exactly (score 0, every missing piece)")
    sample_sentences: int | None = option(None, help="with --corpus (SentencePiece base): sentences the donor "
                                                     "trainer keeps (default 2,000,000)")
    pre_tokenizer: str = option("script-runs", choices=PRE_TOKENIZER_RULES,
                                help="byte-level bases: 'script-runs' keeps target-script runs together across "
                                     "syllables and cuts other text as the base did (best compression, but "
                                     "llama.cpp cannot reproduce it); 'qwen35' is llama.cpp's Qwen3.5 rule (letters "
                                     "with their combining marks) for all text, so `export gguf` works")

    def __post_init__(self):
        super().__post_init__()
        self.reading.require_lang()
        if bool(self.add) == bool(self.corpus):
            raise OptionError("corpus", "corpus or add: give exactly one donor: --add SPM_MODEL, or --corpus PATH... "
                                        "--vocab-size N")
        if self.add and not Path(self.add).is_file():
            raise OptionError("add", f"{self.add}: no such file (expected a SentencePiece .model)")
        if self.corpus and not self.vocab_size:
            raise OptionError("vocab_size", "is required with --corpus (donor vocabulary, or new tokens for "
                                            "byte-level bases)")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise OptionError("vocab_size", f"must be positive, got {self.vocab_size}")


def hf_mismatches(hf_tok, model_bytes: bytes, texts: list[str]) -> list[str]:
    """Texts on which the HF fast tokenizer and sentencepiece give different ids (no BOS/EOS)."""
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    bad = []
    for text, ids in zip(texts, sp.encode(texts)):
        if hf_tok.encode(text, add_special_tokens=False) != ids:
            bad.append(text)
    return bad


def _carry_specials(tok, base_tok) -> None:
    """Give `tok` the base's special tokens (those it knows) and chat template."""
    vocab = tok.get_vocab()
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(base_tok, name, None)
        if value is not None and str(value) in vocab:
            setattr(tok, name, str(value))
    extra = [t for t in (getattr(base_tok, "additional_special_tokens", None) or []) if str(t) in vocab]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    if getattr(base_tok, "chat_template", None):
        tok.chat_template = base_tok.chat_template
    tok.model_max_length = base_tok.model_max_length


def merge_sentencepiece_base(opts: TokenizerMergeOptions, base_tok, tmp: Path) -> dict:
    """The SentencePiece path: returns the info for adaptation.json (writes into `tmp`)."""
    if opts.pre_tokenizer != "script-runs":
        raise LangadaptError(f"--pre-tokenizer {opts.pre_tokenizer}: only for byte-level BPE bases; a SentencePiece "
                             "base keeps its own rule (llama.cpp reproduces it)")
    profile = opts.reading.profile()
    spm_path = sentencepiece_model_path(opts.base)
    if spm_path is None:
        raise LangadaptError(f"--base {opts.base}: a SentencePiece tokenizer, but no tokenizer.model file was "
                             "found (a directory with tokenizer.model, or the .model file itself, is needed)")
    base = read_model(spm_path)
    if len(base_tok) > len(base.pieces):
        raise LangadaptError(f"--base {opts.base}: the HF tokenizer has {len(base_tok) - len(base.pieces)} added "
                             f"tokens beyond the {len(base.pieces)} pieces of {spm_path.name}; appending pieces "
                             "would change their ids (not supported)")
    donor_facts: dict = {}
    if opts.add:
        donor_path = Path(opts.add)
        donor = read_model(donor_path)
    else:
        sample = {} if opts.sample_sentences is None else {"input_sentence_size": opts.sample_sentences}
        donor_bytes, donor_facts = train_sentencepiece(opts.reading.iter_texts(opts.corpus), profile, opts.vocab_size,
                                                       "bpe", **sample)
        donor_path = write_model_dir(tmp, "donor", donor_bytes)
        donor = read_model(donor_path)

    warning = normalizer_mismatch(base, donor)
    if opts.compat == "chinese-llama":
        merged, report = compat_merge(base, donor)
    else:
        if warning:
            raise LangadaptError(f"--add {donor_path}: {warning}. Retrain the donor with "
                                 "`langadapt tokenizer train` (identity normalisation), or use --compat chinese-llama")
        merged, report = merge_sentencepiece(base, donor, profile.is_target_char)
    if warning:
        report["warning"] = warning
    model_bytes = merged.SerializeToString()
    (tmp / "tokenizer.model").write_bytes(model_bytes)

    tok = load_tokenizer(tmp / "tokenizer.model")
    _carry_specials(tok, base_tok)
    texts = list(CHECK_TEXTS)
    if opts.corpus:
        for i, text in enumerate(opts.reading.iter_texts(opts.corpus)):
            if i >= CHECK_RECORDS:
                break
            texts.append(text)
    bad = hf_mismatches(tok, model_bytes, texts)
    report["hf_equals_sentencepiece"] = {"texts_checked": len(texts), "mismatches": len(bad),
                                         "examples": [t[:80] for t in bad[:3]]}
    if bad and opts.compat is None:
        raise LangadaptError(f"internal check failed: the HF tokenizer differs from sentencepiece on "
                             f"{len(bad)} of {len(texts)} texts, e.g. {bad[0][:60]!r}; nothing was written")
    if bad:
        report["warning_hf"] = ("score-0 ties of the compat recipe are broken differently by HF tokenizers "
                                "than by sentencepiece; use tokenizer.model for exact recipe ids")
    tok.save_pretrained(str(tmp))
    (tmp / "tokenizer.model").write_bytes(model_bytes)  # save_pretrained may not keep our file
    write_json_atomic(tmp / "merge_report.json", report)
    return {
        "base": str(opts.base), "base_sha256": file_sha256(spm_path),
        "donor": str(donor_path if opts.add else "trained from --corpus (donor.model)"),
        "donor_sha256": file_sha256(donor_path),
        "mode": "compat-chinese-llama" if opts.compat else "default",
        "tokenizer_kind": "sentencepiece",
        "tokenizer_model_sha256": file_sha256(tmp / "tokenizer.model"),
        "vocab_size_before": report["vocab_size_before"], "vocab_size_after": report["vocab_size_after"],
        **({"donor_training": donor_facts} if donor_facts else {}),
    }


def merge_byte_level_base(opts: TokenizerMergeOptions, base_tok, tmp: Path) -> dict:
    """The byte-level BPE path (delegates to `merge_bpe.extend_byte_level_bpe`)."""
    if opts.add or opts.compat:
        raise LangadaptError(f"--base {opts.base} is a byte-level BPE tokenizer: --add/--compat work only with "
                             "SentencePiece bases; use --corpus PATH... --vocab-size N (new tokens) instead")
    tok, report = extend_byte_level_bpe(base_tok, lambda: opts.reading.iter_texts(opts.corpus), opts.vocab_size,
                                        opts.reading.profile(), rule=opts.pre_tokenizer)
    _carry_specials(tok, base_tok)
    tok.save_pretrained(str(tmp))
    write_json_atomic(tmp / "merge_report.json", report)
    return {"base": str(opts.base), "mode": "byte-level-bpe", "tokenizer_kind": "byte-level-bpe",
            "pre_tokenizer": opts.pre_tokenizer, "llama_cpp_pre_tokenizer": report["pre_tokenizer"]["llama_cpp"],
            "new_tokens_requested": opts.vocab_size,
            "vocab_size_before": len(base_tok), "vocab_size_after": len(tok)}


def tokenizer_merge_command(opts: TokenizerMergeOptions) -> int:
    """Merge by the kind of the base tokenizer and write the extended tokenizer directory."""
    base_tok = load_tokenizer(opts.base)
    kind = tokenizer_kind(base_tok)
    if kind not in ("sentencepiece", "byte-level-bpe"):
        raise LangadaptError(f"--base {opts.base}: unsupported tokenizer type "
                             f"({type(base_tok.backend_tokenizer.model).__name__}, neither SentencePiece nor "
                             "byte-level BPE)")
    with opts.output.directory() as tmp:
        if kind == "sentencepiece":
            info = merge_sentencepiece_base(opts, base_tok, tmp)
        else:
            info = merge_byte_level_base(opts, base_tok, tmp)
        write_adaptation_json(tmp, "tokenizer-merge", inherit_from=opts.base, lang=opts.reading.profile().code, **info)
    before, after = info["vocab_size_before"], info["vocab_size_after"]
    print(f"wrote {opts.output.out}: vocabulary {before} -> {after} ({after - before} added); see merge_report.json")
    return 0
