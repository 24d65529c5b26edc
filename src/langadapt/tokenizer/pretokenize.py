"""Script-aware pre-tokenization for byte-level BPE tokenizers (GPT-2, SmolLM2, Llama-3, Qwen2).

Why: GPT-2-style regexes split a word at every combining mark. ` ?\\p{L}+` stops at a Tibetan
vowel sign or subjoined letter (category Mn), so ཁྱོད is cut into ཁ | ྱོ | ད and no merge can
ever form the syllable. The same happens to Devanagari and other Indic scripts.

The fix: put two alternatives in front of the base's own pattern,

    TARGET_RUN  = ` ?[run chars]+`     run chars: the profile's script minus digits, spaces,
                                       brackets/quotes and clause delimiters (tsheg is kept,
                                       so multi-syllable pieces are possible)
    TARGET_STOP = ` ?[delimiters]+`    the script's clause delimiters (Tibetan shads, dandas)

Both alternatives need a target-script character to match, so on text without the target
script the regex finds exactly the matches of the original pattern: those texts are
pre-tokenized, and therefore encoded, exactly as before.

Supported shapes (anything else raises `LangadaptError`):

* `ByteLevel(use_regex=True, add_prefix_space=False)` (GPT-2, SmolLM2) becomes
  `Sequence[Split(Regex(TARGET | GPT2_PATTERN), "isolated"), ByteLevel(use_regex=False)]`;
* `Sequence[Split(Regex(P), "isolated"), ByteLevel(use_regex=False)]` (Llama-3, Qwen2)
  becomes the same with `TARGET | P`.
"""

from __future__ import annotations

import copy
import unicodedata

from langadapt.errors import LangadaptError

# The regex of tokenizers' ByteLevel pre-tokenizer (tokenizers/src/pre_tokenizers/byte_level.rs).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Clause delimiters that end a run: Tibetan shads and gter marks (U+0F0D-U+0F14, the same set
# as langadapt.lang.tibetan.SHADS), the Indic danda and double danda, Myanmar, Khmer, Sinhala
# and Ethiopic full stops. Only those inside the profile's script ranges are used.
CLAUSE_DELIMITERS: tuple[tuple[int, int], ...] = (
    (0x0F0D, 0x0F14),
    (0x0964, 0x0965),
    (0x104A, 0x104B),
    (0x17D4, 0x17D5),
    (0x0DF4, 0x0DF4),
    (0x1361, 0x1368),
)
# Categories that never belong to a run: digits (the base's digit rule handles them),
# separators, controls/unassigned, and opening/closing brackets and quotes.
_NOT_IN_RUN = ("Ps", "Pe", "Pi", "Pf")


def _ranges_class(codepoints: list[int]) -> str:
    """An Oniguruma character class `[\\x{0F00}-\\x{0F0C}...]` for a sorted list of code points."""
    parts, i = [], 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        lo, hi = codepoints[i], codepoints[j]
        parts.append(f"\\x{{{lo:04X}}}" if lo == hi else f"\\x{{{lo:04X}}}-\\x{{{hi:04X}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def target_codepoints(profile) -> list[int]:
    """All code points of the profile's script ranges, sorted; error for a profile without ranges."""
    ranges = getattr(profile, "script_ranges", ())
    if not ranges:
        raise LangadaptError(
            f"language profile {profile.code!r} has no script ranges; extending a byte-level BPE "
            "tokenizer needs a language whose script is known (e.g. bo, zh, ko)"
        )
    return sorted({cp for lo, hi in ranges for cp in range(lo, hi + 1)})


def target_pattern(profile) -> str:
    """The regex alternatives (`TARGET_RUN|TARGET_STOP`) that keep target-script runs together."""
    delimiters = {cp for lo, hi in CLAUSE_DELIMITERS for cp in range(lo, hi + 1)}
    run, stop = [], []
    for cp in target_codepoints(profile):
        if cp in delimiters:
            stop.append(cp)
            continue
        category = unicodedata.category(chr(cp))
        if category[0] in "NZC" or category in _NOT_IN_RUN:
            continue
        run.append(cp)
    if not run:
        raise LangadaptError(f"language profile {profile.code!r}: its script ranges contain no letters")
    pattern = f" ?{_ranges_class(run)}+"
    if stop:
        pattern += f"| ?{_ranges_class(stop)}+"
    return pattern


def _split(pattern: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _unsupported(pre: dict | None, why: str) -> LangadaptError:
    return LangadaptError(
        f"unsupported pre-tokenizer for byte-level BPE extension ({why}): {pre!r}; expected "
        "ByteLevel(use_regex=True, add_prefix_space=False) as in GPT-2/SmolLM2, or "
        "Sequence[Split(Regex, isolated), ByteLevel(use_regex=False)] as in Llama-3/Qwen2"
    )


def script_aware_pre_tokenizer(pre: dict | None, profile) -> tuple[dict, str]:
    """Rewrite a byte-level pre-tokenizer (its tokenizer.json dict) so that runs of the profile's
    script stay together; returns (new dict, the full split regex). The input is not modified."""
    target = target_pattern(profile)
    if not isinstance(pre, dict):
        raise _unsupported(pre, "no pre-tokenizer")
    if pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True):
            raise _unsupported(pre, "ByteLevel without regex splits only on nothing; no word rule to extend")
        if pre.get("add_prefix_space"):
            raise _unsupported(pre, "add_prefix_space=True cannot be kept once a Split runs first")
        byte_level = dict(pre, use_regex=False)
        pattern = f"{target}|{GPT2_PATTERN}"
        return {"type": "Sequence", "pretokenizers": [_split(pattern), byte_level]}, pattern
    if pre.get("type") == "Sequence":
        members = pre.get("pretokenizers") or []
        if len(members) == 1:
            new, pattern = script_aware_pre_tokenizer(members[0], profile)
            return new, pattern
        if len(members) != 2:
            raise _unsupported(pre, f"Sequence of {len(members)} pre-tokenizers")
        split, byte_level = members
        regex = (split.get("pattern") or {}).get("Regex") if split.get("type") == "Split" else None
        if regex is None or split.get("invert") or split.get("behavior") != "Isolated":
            raise _unsupported(pre, "first member is not Split(Regex, behavior=Isolated)")
        if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
            raise _unsupported(pre, "second member is not ByteLevel(use_regex=False, add_prefix_space=False)")
        pattern = f"{target}|{regex}"
        new = copy.deepcopy(pre)
        new["pretokenizers"][0]["pattern"] = {"Regex": pattern}
        return new, pattern
    raise _unsupported(pre, f"type {pre.get('type')!r}")


# ----------------------------------------------------------------------------- llama.cpp's pre-tokenizers

# llama.cpp applies only regexes hard-coded per pre-tokenizer name (`tokenizer.ggml.pre` in a GGUF;
# src/llama-vocab.cpp); a tokenizer whose rule is not one of them cannot be reproduced there.
# These are the Split regexes (HF syntax) of the byte-level rules langadapt can name, by name.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5's rule: letters *and combining marks* (\p{M}) stay together, so a Tibetan or Indic
# syllable is one piece (a tsheg, being punctuation, starts the next piece: "་ཀྱི").
QWEN35_PATTERN = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                  r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {"llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN, "qwen35": QWEN35_PATTERN}
# The llama.cpp rules `tokenizer merge --pre-tokenizer` offers for byte-level bases (they keep marks with letters).
MARK_KEEPING_RULES = ("qwen35",)


def llama_cpp_pre_name(pre: dict | None) -> str | None:
    """The llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) whose rule is exactly this byte-level
    pre-tokenizer (its tokenizer.json dict), or None when llama.cpp has none."""
    if not isinstance(pre, dict):
        return None
    members = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    types = [m.get("type") for m in members]
    if types == ["ByteLevel"] and members[0].get("use_regex", True) and not members[0].get("add_prefix_space"):
        return "gpt-2"
    if (types == ["Digits", "ByteLevel"] and members[0].get("individual_digits")
            and members[1].get("use_regex", True) and not members[1].get("add_prefix_space")):
        return "smollm"  # SmolLM's own tokenizer.json: digits one by one, then GPT-2's rule
    if types == ["Split", "ByteLevel"] and not members[1].get("use_regex") and not members[1].get("add_prefix_space"):
        split = members[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            return next((name for name, p in SPLIT_PATTERNS.items() if p == regex), None)
    return None


def llama_cpp_pre_tokenizer(name: str) -> dict:
    """The tokenizer.json pre-tokenizer of the llama.cpp rule `name` (one of SPLIT_PATTERNS)."""
    return {"type": "Sequence", "pretokenizers": [
        _split(SPLIT_PATTERNS[name]),
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


PRE_TOKENIZER_RULES = ("script-runs",) + MARK_KEEPING_RULES


def extended_pre_tokenizer(pre: dict | None, profile, rule: str = "script-runs") -> tuple[dict, str]:
    """(new pre-tokenizer dict, its split regex) of a byte-level base extended with `rule`:
    "script-runs" keeps target-script runs together and other text as the base cut it
    (`script_aware_pre_tokenizer`); a llama.cpp rule (e.g. "qwen35") replaces the base's rule for
    all text with one llama.cpp implements, so an exported GGUF tokenises as transformers does."""
    if rule == "script-runs":
        return script_aware_pre_tokenizer(pre, profile)
    if rule not in SPLIT_PATTERNS:
        raise LangadaptError(f"unknown pre-tokenizer rule {rule!r}; choose one of {', '.join(PRE_TOKENIZER_RULES)}")
    target_codepoints(profile)  # the same clear error for a profile without a script
    return llama_cpp_pre_tokenizer(rule), SPLIT_PATTERNS[rule]


def base_of_script_runs(pre: dict | None, profile) -> dict | None:
    """The base pre-tokenizer that `script_aware_pre_tokenizer` extended into `pre` (None when `pre` is
    not such an extension for this profile)."""
    members = (pre or {}).get("pretokenizers") or []
    if (pre or {}).get("type") != "Sequence" or len(members) != 2 or members[0].get("type") != "Split":
        return None
    regex = (members[0].get("pattern") or {}).get("Regex") or ""
    prefix = target_pattern(profile) + "|"
    if not regex.startswith(prefix):
        return None
    rest = regex[len(prefix):]
    if rest == GPT2_PATTERN:
        return dict(members[1], use_regex=True)
    base = copy.deepcopy(pre)
    base["pretokenizers"][0]["pattern"] = {"Regex": rest}
    return base
