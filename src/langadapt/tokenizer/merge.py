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

from pathlib import Path

from langadapt.errors import LangadaptError

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


def _corpus_texts(args, profile):
    from langadapt.corpus import iter_texts, reading_options

    return iter_texts(args.corpus, **{**reading_options(args), "profile": profile})


def _check_args(args) -> None:
    if bool(args.add) == bool(args.corpus):
        raise LangadaptError("give exactly one donor: --add SPM_MODEL, or --corpus PATH... --vocab-size N")
    if args.corpus and not args.vocab_size:
        raise LangadaptError("--corpus needs --vocab-size (donor vocabulary, or new tokens for byte-level bases)")
    if args.add and not Path(args.add).is_file():
        raise LangadaptError(f"--add {args.add}: no such file (expected a SentencePiece .model)")


def hf_mismatches(hf_tok, model_bytes: bytes, texts: list[str]) -> list[str]:
    """Texts on which the HF fast tokenizer and sentencepiece give different ids (no BOS/EOS)."""
    import sentencepiece as spm

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


def merge_sentencepiece_base(args, base_tok, profile, tmp: Path) -> dict:
    """The SentencePiece path: returns the info for adaptation.json (writes into `tmp`)."""
    from langadapt.outputs import file_sha256, write_json_atomic
    from langadapt.tokenizer.load import load_tokenizer, sentencepiece_model_path
    from langadapt.tokenizer.merge_spm import compat_merge, merge_sentencepiece, normalizer_mismatch, \
        read_model

    spm_path = sentencepiece_model_path(args.base)
    if spm_path is None:
        raise LangadaptError(f"--base {args.base}: a SentencePiece tokenizer, but no tokenizer.model file was "
                             "found (a directory with tokenizer.model, or the .model file itself, is needed)")
    base = read_model(spm_path)
    if len(base_tok) > len(base.pieces):
        raise LangadaptError(f"--base {args.base}: the HF tokenizer has {len(base_tok) - len(base.pieces)} added "
                             f"tokens beyond the {len(base.pieces)} pieces of {spm_path.name}; appending pieces "
                             "would change their ids (not supported)")
    donor_facts: dict = {}
    if args.add:
        donor_path = Path(args.add)
        donor = read_model(donor_path)
    else:
        from langadapt.tokenizer.train import train_sentencepiece, write_model_dir

        sample = {} if args.sample_sentences is None else {"input_sentence_size": args.sample_sentences}
        donor_bytes, donor_facts = train_sentencepiece(_corpus_texts(args, profile), profile, args.vocab_size,
                                                       "bpe", **sample)
        donor_path = write_model_dir(tmp, "donor", donor_bytes)
        donor = read_model(donor_path)

    warning = normalizer_mismatch(base, donor)
    if args.compat == "chinese-llama":
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
    if args.corpus:
        for i, text in enumerate(_corpus_texts(args, profile)):
            if i >= CHECK_RECORDS:
                break
            texts.append(text)
    bad = hf_mismatches(tok, model_bytes, texts)
    report["hf_equals_sentencepiece"] = {"texts_checked": len(texts), "mismatches": len(bad),
                                         "examples": [t[:80] for t in bad[:3]]}
    if bad and args.compat is None:
        raise LangadaptError(f"internal check failed: the HF tokenizer differs from sentencepiece on "
                             f"{len(bad)} of {len(texts)} texts, e.g. {bad[0][:60]!r}; nothing was written")
    if bad:
        report["warning_hf"] = ("score-0 ties of the compat recipe are broken differently by HF tokenizers "
                                "than by sentencepiece; use tokenizer.model for exact recipe ids")
    tok.save_pretrained(str(tmp))
    (tmp / "tokenizer.model").write_bytes(model_bytes)  # save_pretrained may not keep our file
    write_json_atomic(tmp / "merge_report.json", report)
    return {
        "base": str(args.base), "base_sha256": file_sha256(spm_path),
        "donor": str(donor_path if args.add else "trained from --corpus (donor.model)"),
        "donor_sha256": file_sha256(donor_path),
        "mode": "compat-chinese-llama" if args.compat else "default",
        "tokenizer_kind": "sentencepiece",
        "tokenizer_model_sha256": file_sha256(tmp / "tokenizer.model"),
        "vocab_size_before": report["vocab_size_before"], "vocab_size_after": report["vocab_size_after"],
        **({"donor_training": donor_facts} if donor_facts else {}),
    }


def merge_byte_level_base(args, base_tok, profile, tmp: Path) -> dict:
    """The byte-level BPE path (delegates to `merge_bpe.extend_byte_level_bpe`)."""
    from langadapt.outputs import write_json_atomic

    if args.add or args.compat:
        raise LangadaptError(f"--base {args.base} is a byte-level BPE tokenizer: --add/--compat work only with "
                             "SentencePiece bases; use --corpus PATH... --vocab-size N (new tokens) instead")
    from langadapt.tokenizer.merge_bpe import extend_byte_level_bpe

    tok, report = extend_byte_level_bpe(base_tok, lambda: _corpus_texts(args, profile), args.vocab_size, profile)
    _carry_specials(tok, base_tok)
    tok.save_pretrained(str(tmp))
    write_json_atomic(tmp / "merge_report.json", report)
    return {"base": str(args.base), "mode": "byte-level-bpe", "tokenizer_kind": "byte-level-bpe",
            "new_tokens_requested": args.vocab_size,
            "vocab_size_before": len(base_tok), "vocab_size_after": len(tok)}


def run(args) -> int:
    """CLI handler of `langadapt tokenizer merge`."""
    from langadapt.lang import get_profile
    from langadapt.outputs import atomic_output_dir, write_adaptation_json
    from langadapt.tokenizer.load import load_tokenizer, tokenizer_kind

    _check_args(args)
    profile = get_profile(args.lang)
    base_tok = load_tokenizer(args.base)
    kind = tokenizer_kind(base_tok)
    if kind not in ("sentencepiece", "byte-level-bpe"):
        raise LangadaptError(f"--base {args.base}: unsupported tokenizer type ({type(base_tok.backend_tokenizer.model).__name__}, "
                             "neither SentencePiece nor byte-level BPE)")
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        if kind == "sentencepiece":
            info = merge_sentencepiece_base(args, base_tok, profile, tmp)
        else:
            info = merge_byte_level_base(args, base_tok, profile, tmp)
        write_adaptation_json(tmp, "tokenizer-merge", inherit_from=args.base, lang=profile.code, **info)
    before, after = info["vocab_size_before"], info["vocab_size_after"]
    print(f"wrote {args.out}: vocabulary {before} -> {after} ({after - before} added); see merge_report.json")
    return 0
