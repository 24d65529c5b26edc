"""Extend a byte-level BPE tokenizer (GPT-2, SmolLM2, Llama-3, Qwen2) with target-language tokens.

Steps (`extend_byte_level_bpe` = `train_target_bpe` + `build_extended`):

1. Rewrite the pre-tokenizer so that runs of the target script stay together up to a space or a
   clause delimiter (`pretokenize.py`, rule "script-runs"); text without the target script is split
   as before. llama.cpp cannot reproduce that rule (it applies only its own hard-coded regexes), so
   `rule="qwen35"` instead puts llama.cpp's Qwen3.5 rule (letters with their combining marks, so a
   syllable is one piece but a tsheg starts the next one) in place of the base's rule for all text:
   `export gguf` then tokenises in llama.cpp exactly as here (see docs/benchmarks.md for its cost).
2. Train a BPE with the `tokenizers` BpeTrainer on the target-script pieces of the training text
   only. By default (`char_aligned=True`) it trains on characters, and the byte-level merges that
   build each character from its UTF-8 bytes come first: every new token is then whole
   characters (trained directly on bytes, the trainer makes tokens that end in the first two
   bytes of the next letter; on SmolLM2 + Tibetan that also compressed worse: 0.829 vs 0.766
   tokens per syllable on dev-conllu with 20,000 tokens). Exact repeats of a sentence are
   trained on once (`training_sentences`), and Tibetan tokens are at most 12 characters
   (`train.MAX_PIECE_CHARS`, as for SentencePiece donors): on SmolLM2 + 20,000 tokens that took
   dev-conllu from 0.781 to 0.774 (de-duplication) and 0.766 (both) tokens per syllable.
3. Keep a trained merge only if it is *target-specific*: its merged bytes contain the lead
   sequence of a target-script character (e.g. E0 BC..BF for Tibetan), so the merge can never
   fire on text without that script. A merge like (continuation byte, E0) could also fire
   inside Devanagari or CJK text; it is dropped, with every later merge that needs its result.
4. Append the new tokens after every existing id (special tokens keep theirs). A learned token
   that the base already has reuses its id; its merge is kept if it is a new path. The first
   `num_new_tokens` new tokens in merge order are kept, and each must come out of the final
   model for its own bytes (checked; a failing one is dropped and the next one taken).
5. Merge *ranks*: by default (`new_merges_first=True`) the kept merges, and the base's own merges
   that the trainer learned again, are ranked before the base's other merges. Ranked after them,
   a base that already knows partial merges of the target bytes (learned through its own cut-up
   pieces) groups the bytes its own way first and blocks the trained merges: in the tests, a tiny
   base with some Tibetan merges needs 1.84 times as many tokens on held-out text with new
   merges last as with them first (which matches the trained BPE alone). Every moved or added merge is target-specific, so ranking them first
   changes nothing for other text (tested with hypothesis). Ids are appended either way.

Known limit: a target-script run glued to a preceding letter of another script ("abcཁྱོད")
is cut by the base pattern's letter rule, which starts earlier ("abcཁ" | "ྱོད"); it still
round-trips, it only compresses worse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm
from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2 byte -> printable character table

from langadapt.errors import LangadaptError
from langadapt.tokenizer.pretokenize import extended_pre_tokenizer, llama_cpp_pre_name, target_pattern
from langadapt.tokenizer.train import MAX_PIECE_CHARS, unique_sentences


_BYTE_OF = {ch: b for b, ch in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The raw bytes behind a byte-level token string ("Ġà¼" -> b" \\xe0\\xbc")."""
    return bytes(_BYTE_OF[ch] for ch in token)


def _merged_ranges(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def is_target_specific(data: bytes, ranges: list[tuple[int, int]]) -> bool:
    """True if any valid UTF-8 text containing `data` must contain a character of `ranges`:
    some lead byte in `data`, with the continuation bytes after it, already pins the character
    to a code point range inside the target ranges."""
    for i, b in enumerate(data):
        if 0x80 <= b < 0xC0:
            continue  # continuation byte: its character started before `data`
        length = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
        lead_bits = b if length == 1 else b & (0x7F >> length)
        present = data[i + 1:i + length]
        if any(not 0x80 <= c < 0xC0 for c in present):
            continue
        value = lead_bits
        for c in present:
            value = (value << 6) | (c & 0x3F)
        missing = length - 1 - len(present)
        lo, hi = value << (6 * missing), ((value + 1) << (6 * missing)) - 1
        if any(rlo <= lo and hi <= rhi for rlo, rhi in ranges):
            return True
    return False


def _check_base(data: dict) -> None:
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise LangadaptError(f"base tokenizer model is {model.get('type')!r}; byte-level extension needs BPE")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise LangadaptError("base BPE uses a subword prefix/suffix; byte-level extension supports neither")
    # Some bases lack byte symbols that never occur in their training text (SmolLM2 lacks 21:
    # C0, C1, F5-FF and a few controls); a merge needing one is skipped as "input_unavailable".
    present = sum(1 for ch in bytes_to_unicode().values() if ch in model["vocab"])
    if present < 128 or '"ByteLevel"' not in json.dumps([data.get("pre_tokenizer"), data.get("decoder")]):
        raise LangadaptError(f"base tokenizer is not a byte-level BPE (ByteLevel pre-tokenizer/decoder and the "
                             f"256 byte symbols expected; {present} of them in its vocabulary)")


def merge_pairs(merges: list) -> list[tuple[str, str]]:
    """A tokenizer.json merge list ("a b" strings or [a, b] lists) as pairs."""
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def _byte_level(text: str) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def char_building_merges(chars: Iterable[str]) -> list[tuple[str, str]]:
    """Byte-level merges that assemble each character from its UTF-8 bytes, left to right
    (E0 + BD, then E0BD + 82 for U+0F42), each prefix once."""
    merges, seen = [], set()
    for ch in chars:
        data = _byte_level(ch)
        for k in range(2, len(data) + 1):
            if data[:k] not in seen:
                seen.add(data[:k])
                merges.append((data[:k - 1], data[k - 1]))
    return merges


def training_sentences(texts: Iterable[str], profile) -> Iterable[str]:
    """The records of `texts` cut into sentences, exact repeats skipped: repeated boilerplate
    (bylines, the Kangyur's formulae) would otherwise buy tokens that fit only those repeats
    (SmolLM2 + 20,000 Tibetan tokens: 0.781 -> 0.774 tokens per syllable on bo/dev-conllu).
    The extended pre-tokenizer cuts at clause delimiters anyway, so the cut changes nothing else."""
    return unique_sentences(s.strip() for text in texts for s in profile.split_sentences(text) if s.strip())


def train_target_bpe(texts: Iterable[str], pattern: str, target: str, vocab_size: int,
                     normalizer=None, char_aligned: bool = True,
                     max_token_length: int | None = None) -> tuple[list[tuple[str, str]], bool]:
    """Train a BPE on the target-script pieces of `texts` (pieces as the extended pre-tokenizer
    cuts them; everything else is dropped). Returns its merges, in order, as byte-level pairs,
    and whether the trainer filled `vocab_size` (False: the text ran out of pairs seen twice).

    `char_aligned=False` trains directly on the 256 byte symbols: the trainer is then free to
    merge across character boundaries (tokens such as "...་" + the first two bytes of the next
    letter). `char_aligned=True` trains on characters and prefixes the merges that build each
    character from its bytes, so every new token is a whole string of characters.
    `max_token_length`: longest new token in characters (byte symbols when `char_aligned=False`;
    None: no limit; see `langadapt.tokenizer.train.MAX_PIECE_CHARS`).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer  # the base's own normalizer (e.g. NFC in Qwen2)
    steps = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.Split(Regex(target), behavior="removed", invert=True),  # drop non-target pieces
    ]
    if not char_aligned:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    alphabet = [] if char_aligned else pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=True,
                                  initial_alphabet=alphabet, special_tokens=[], max_token_length=max_token_length)
    tok.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = merge_pairs(trained["merges"])
    filled = len(trained["vocab"]) >= vocab_size
    if not char_aligned:
        return merges, filled
    # The trainer's alphabet is its single-character entries (in id order, i.e. sorted).
    chars = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if len(t) == 1]
    return char_building_merges(chars) + [(_byte_level(a), _byte_level(b)) for a, b in merges], filled


def select_merges(trained: list[tuple[str, str]], base_vocab: dict[str, int], base_merges: set[tuple[str, str]],
                  ranges: list[tuple[int, int]], num_new_tokens: int, new_merges_first: bool,
                  excluded: frozenset[str] = frozenset()) -> tuple[list[tuple[str, str]], list[str], dict, int]:
    """Walk the trained merges in order and keep the target-specific ones whose inputs exist,
    until `num_new_tokens` tokens not in `base_vocab` are collected.

    Returns (kept merges in order, new token strings in order, skipped merges by reason,
    number of trained merges walked).
    With `new_merges_first`, a trained merge the base already has is kept (it is moved ahead);
    otherwise it is skipped as "already in base".
    """
    available = set(base_vocab)
    kept, new_tokens, seen_new = [], [], set()
    skipped: dict[str, list] = {"not_target_specific": [], "input_unavailable": [], "already_in_base": [],
                                "unreachable": []}
    walked = 0
    for a, b in trained:
        if len(new_tokens) >= num_new_tokens:
            break
        walked += 1
        merged = a + b
        if merged in excluded:
            skipped["unreachable"].append((a, b))
            continue
        if not is_target_specific(token_bytes(merged), ranges):
            skipped["not_target_specific"].append((a, b))
            continue
        if a not in available or b not in available:
            skipped["input_unavailable"].append((a, b))
            continue
        if (a, b) in base_merges and not new_merges_first:
            skipped["already_in_base"].append((a, b))
            continue
        kept.append((a, b))
        available.add(merged)
        if merged not in base_vocab and merged not in seen_new:
            seen_new.add(merged)
            new_tokens.append(merged)
    return kept, new_tokens, skipped, walked


def _unreachable(vocab: dict[str, int], merges: list[tuple[str, str]], new_tokens: list[str]) -> list[str]:
    """New tokens that the BPE model does not produce for their own bytes (merges only)."""
    from tokenizers import models

    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=False)
    return [t for t in new_tokens if [x.value for x in bpe.tokenize(t)] != [t]]


def build_extended(base, trained: list[tuple[str, str]], num_new_tokens: int, profile, *,
                   new_merges_first: bool = True, rule: str = "script-runs"):
    """Extend `base` with the first `num_new_tokens` new tokens of the byte-level merges
    `trained` (as `train_target_bpe` returns them). Returns (extended tokenizer, report)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = _backend(base)
    data = json.loads(backend.to_str())
    pre_before = data.get("pre_tokenizer")
    new_pre, _ = extended_pre_tokenizer(pre_before, profile, rule)
    ranges = _merged_ranges(profile.script_ranges)
    model = data["model"]
    base_vocab: dict[str, int] = model["vocab"]
    base_merges = merge_pairs(model["merges"])
    base_merge_set = set(base_merges)
    next_id = _next_id(data)

    excluded: frozenset[str] = frozenset()
    for _ in range(5):
        kept, new_tokens, skipped, walked = select_merges(trained, base_vocab, base_merge_set, ranges,
                                                          num_new_tokens, new_merges_first, excluded)
        vocab = dict(base_vocab)
        # Added tokens outside the model vocabulary (Llama-3's specials after 128000) enter it at
        # their own ids: tokenizers renumbers added tokens it cannot find in the model from the
        # model's size, which would move them past the new tokens.
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", []) if t["content"] not in vocab})
        vocab.update({tok: next_id + i for i, tok in enumerate(new_tokens)})
        if new_merges_first:
            moved = set(kept)
            merges = kept + [m for m in base_merges if m not in moved]
        else:
            merges = base_merges + kept
        bad = _unreachable(vocab, merges, new_tokens)
        if not bad:
            break
        excluded = excluded | set(bad)
    else:
        raise LangadaptError(f"{len(bad)} new tokens stay unreachable (e.g. {bytes_hex(bad[0])}); please report this")

    model["vocab"] = vocab
    model["merges"] = [list(m) for m in merges]
    data["pre_tokenizer"] = new_pre
    new_backend = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    kwargs = {k: v for k, v in base.init_kwargs.items()
              if k not in ("vocab_file", "merges_file", "tokenizer_file", "name_or_path", "added_tokens_decoder",
                           "tokenizer_object", "is_local", "local_files_only", "backend", "gguf_file")}
    kwargs["chat_template"] = base.chat_template
    extended = PreTrainedTokenizerFast(tokenizer_object=new_backend, **kwargs)

    report = {
        "method": "byte-level BPE extension (tokenizers BpeTrainer on target-script pieces)",
        "language": profile.code,
        "base_vocab_size": next_id,
        "new_vocab_size": next_id + len(new_tokens),
        "tokens_requested": num_new_tokens,
        "tokens_added": len(new_tokens),
        "first_new_id": next_id,
        "merges_added": sum(1 for m in kept if m not in base_merge_set),
        "merges_to_existing_tokens": sum(1 for a, b in kept if a + b in base_vocab and (a, b) not in base_merge_set),
        "base_merges_moved_first": sum(1 for m in kept if m in base_merge_set) if new_merges_first else 0,
        "merge_rank": "new merges before base merges" if new_merges_first else "new merges after base merges",
        "merges_skipped": {k: len(v) for k, v in skipped.items()},
        "merges_skipped_examples": {k: [[bytes_hex(a), bytes_hex(b)] for a, b in v[:5]]
                                    for k, v in skipped.items() if v},
        "trained_merges": len(trained),
        "trained_merges_used": walked,
        "pre_tokenizer": {"before": pre_before, "after": new_pre, "rule": rule,
                          "llama_cpp": llama_cpp_pre_name(new_pre),
                          "target_alternatives": target_pattern(profile) if rule == "script-runs" else None},
    }
    return extended, report


def _backend(base):
    backend = getattr(base, "backend_tokenizer", None)
    if backend is None:
        raise LangadaptError(f"base tokenizer {type(base).__name__} has no fast (tokenizers) backend")
    _check_base(json.loads(backend.to_str()))
    return backend


def _next_id(data: dict) -> int:
    """One past the highest id in use (model vocabulary and added/special tokens)."""
    ids = [*data["model"]["vocab"].values(), *(t["id"] for t in data.get("added_tokens", []))]
    return max(ids) + 1


def training_margin(base, num_new_tokens: int, profile) -> int:
    """How many more tokens than `num_new_tokens` to train: room for trained tokens the base
    already has (its target-specific tokens) and for dropped merges."""
    ranges = _merged_ranges(profile.script_ranges)
    vocab = json.loads(_backend(base).to_str())["model"]["vocab"]
    known = sum(1 for t in vocab if len(t) > 1 and set(t) <= _BYTE_OF.keys()
                and is_target_specific(token_bytes(t), ranges))
    return known + num_new_tokens // 10 + 100


def extend_byte_level_bpe(base, texts: Callable[[], Iterable[str]], num_new_tokens: int, profile, *,
                          new_merges_first: bool = True, char_aligned: bool = True, rule: str = "script-runs"):
    """Extend a byte-level BPE fast tokenizer with up to `num_new_tokens` target-language tokens.

    `texts()` returns a fresh iterator over normalised target-language records. Returns the
    extended `PreTrainedTokenizerFast` (new ids after all existing ones; special tokens and chat
    template carried over) and a report dict. See the module docstring for the method.
    """
    if num_new_tokens < 1:
        raise LangadaptError(f"num_new_tokens must be at least 1, got {num_new_tokens}")
    backend = _backend(base)
    data = json.loads(backend.to_str())
    _, pattern = extended_pre_tokenizer(data.get("pre_tokenizer"), profile, rule)
    target = target_pattern(profile)
    margin = training_margin(base, num_new_tokens, profile)
    records = {"n": 0}

    def counted():
        records["n"] = 0
        for text in tqdm(texts(), desc="reading target text", unit=" records", leave=False):
            records["n"] += 1
            yield text

    for _ in range(2):  # a second, larger training only if the first came up short
        trained, filled = train_target_bpe(training_sentences(counted(), profile), pattern, target,
                                           256 + num_new_tokens + margin, backend.normalizer, char_aligned,
                                           MAX_PIECE_CHARS.get(profile.code) if char_aligned else None)
        extended, report = build_extended(base, trained, num_new_tokens, profile, new_merges_first=new_merges_first,
                                          rule=rule)
        if report["tokens_added"] >= num_new_tokens or not filled:
            break
        margin = 2 * margin + num_new_tokens - report["tokens_added"]
    if records["n"] == 0:
        raise LangadaptError("no training text: texts() yielded no records")
    if report["tokens_added"] == 0:
        raise LangadaptError(f"the training text ({records['n']} records) has no {profile.name} text that "
                             f"repeats (no pair of target-script symbols seen twice); check the language")
    report["training_records"] = records["n"]
    report["char_aligned"] = char_aligned
    report["corpus_exhausted"] = report["tokens_added"] < num_new_tokens
    return extended, report


def bpe_alone(trained: list[tuple[str, str]], pattern: str):
    """A `tokenizers.Tokenizer` with only the 256 byte symbols and the merges `trained`, split by
    `pattern`: the trained BPE on its own, to compare the extension against."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for a, b in trained:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(trained)))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def target_piece_tokens(backend, texts: Iterable[str], profile) -> int:
    """Tokens that `backend` (a `tokenizers.Tokenizer`) gives to the target-script pieces of
    `texts` (pieces as its own pre-tokenizer cuts them); other pieces are not counted."""
    total = 0
    for text in texts:
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            if any(profile.is_target_char(ch) for ch in token_bytes(piece).decode("utf-8", "replace")):
                total += len(backend.model.tokenize(piece))
    return total


def bytes_hex(token: str) -> str:
    """A token as hex bytes, readable in a JSON report ("e0 bc 8b")."""
    return token_bytes(token).hex(" ")

