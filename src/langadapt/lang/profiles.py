"""The language profiles: plain data plus a few functions, one frozen dataclass, no hierarchy.

| code | script ranges | normalisation | unit | sentence ends |
|---|---|---|---|---|
| bo | Tibetan U+0F00-U+0FFF | NFC + Tibetan fixes (see `tibetan.py`) | syllables + each shad (`tibetan.tibetan_syllables` counts syllables alone) | ། ༎ ... and the ones below |
| zh | Han ideographs, radicals, 〆〇 | NFC | characters: each Han character; each run of other letters/digits (a Latin word, a number) counts as one; punctuation and spaces do not count | 。！？ and Latin . ! ? |
| ko | Hangul syllables and jamo | NFC | whitespace words (eojeol) | Latin . ! ? and CJK |
| en | Latin letters | NFC | whitespace words | . ! ? |
| other | any letter | NFC | whitespace words | all of the above |

Sentence splitting is shared by all profiles (it knows every terminator): a sentence ends after
a run of shads (spaces between shads included, so "། །" stays with the sentence it closes),
after 。！？ (plus closing quotes/brackets), or after . ! ? followed by whitespace or the end.
A piece with no letters or digits (e.g. the head marks "༄༅༅། །") is joined to the next sentence.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from langadapt.lang.tibetan import SHADS, normalize_tibetan, tibetan_units

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class LanguageProfile:
    """What langadapt needs to know about a language: data plus small pure functions."""

    code: str
    name: str
    unit_name: str  # "syllables+shads" | "characters" | "words"
    script_ranges: Ranges  # inclusive code point ranges; empty = any letter is "target"
    normalize_fn: Callable[[str], str] = field(repr=False)
    units_fn: Callable[[str], list[str]] = field(repr=False)
    _target_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_target_re", _ranges_regex(self.script_ranges))

    def normalize(self, text: str) -> str:
        """NFC, plus the language's canonical fixes (Tibetan); idempotent."""
        return self.normalize_fn(text)

    def units(self, text: str) -> list[str]:
        """The counting units used for metrics (syllables, characters or words)."""
        return self.units_fn(text)

    def count_units(self, text: str) -> int:
        """Number of counting units in `text`."""
        return len(self.units_fn(text))

    def split_sentences(self, text: str) -> list[str]:
        """Split into sentences, each keeping its final punctuation."""
        return split_sentences(text)

    def is_target_char(self, ch: str) -> bool:
        """True if `ch` lies in the profile's script ranges (any letter for the generic profile)."""
        if not self.script_ranges:
            return _is_letter(ch)
        cp = ord(ch)
        return any(lo <= cp <= hi for lo, hi in self.script_ranges)

    def script_share(self, text: str) -> float:
        """Share of the letters in `text` (marks included; not spaces, digits, punctuation)
        that are in the target script; 0.0 when `text` has no letters."""
        letters, target = self.letter_counts(text)
        return target / letters if letters else 0.0

    def letter_counts(self, text: str) -> tuple[int, int]:
        """(letters, letters in the target script) of `text`; letters include combining marks."""
        letters = target = 0
        for ch, n in Counter(text).items():  # counting distinct characters is much faster
            if _is_letter(ch):
                letters += n
                if not self.script_ranges or self._target_re.match(ch):
                    target += n
        return letters, target


@functools.lru_cache(maxsize=None)
def _is_letter(ch: str) -> bool:
    """Letters and combining marks (Tibetan vowel signs and subjoined letters are marks)."""
    return unicodedata.category(ch)[0] in "LM"


def _ranges_regex(ranges: Ranges) -> re.Pattern:
    if not ranges:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges) + "]")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _words(text: str) -> list[str]:
    return text.split()


TIBETAN: Ranges = ((0x0F00, 0x0FFF),)
HAN: Ranges = (
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3038, 0x303B),
    (0x3400, 0x4DBF),  # extension A
    (0x4E00, 0x9FFF),  # unified ideographs
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0x20000, 0x323AF),  # extensions B-H and compatibility supplement
)
HANGUL: Ranges = (
    (0x1100, 0x11FF),  # jamo
    (0x3130, 0x318F),  # compatibility jamo
    (0xA960, 0xA97F),  # jamo extended A
    (0xAC00, 0xD7AF),  # syllables
    (0xD7B0, 0xD7FF),  # jamo extended B
)
LATIN: Ranges = (
    (0x0041, 0x005A),
    (0x0061, 0x007A),
    (0x00C0, 0x00D6),
    (0x00D8, 0x00F6),
    (0x00F8, 0x024F),
    (0x1E00, 0x1EFF),
)

_HAN_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in HAN)
# One Han character, or a run of other letters/digits (a Latin word, a number); not "_".
_ZH_UNIT_RE = re.compile(f"[{_HAN_CLASS}]|[^\\W_{_HAN_CLASS}]+")


def chinese_units(text: str) -> list[str]:
    """Each Han character is a unit; each run of other letters/digits is one unit;
    punctuation and whitespace are not units."""
    return _ZH_UNIT_RE.findall(text)


_SENTENCE_END_RE = re.compile(
    f"[{SHADS}](?:[ \\t]*[{SHADS}])*"  # Tibetan: a run of shads, "། །" included
    "|[。！？]+[」』”’）)]*"  # CJK full stops
    "|[.!?]+[\"'”’)\\]]*(?=\\s|$)"  # Latin, only before whitespace or the end
)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each keeping its terminator; see the module docstring."""
    pieces, start = [], 0
    for m in _SENTENCE_END_RE.finditer(text):
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    sentences: list[str] = []  # raw pieces, stripped at the end
    pending = ""
    for piece in pieces:
        if not any(ch.isalnum() for ch in piece):
            pending += piece  # no words: belongs to the next sentence (or the last one)
            continue
        sentences.append(pending + piece)
        pending = ""
    if pending.strip():
        if sentences:
            sentences[-1] += pending
        else:
            sentences.append(pending)
    return [s.strip() for s in sentences]


PROFILES: dict[str, LanguageProfile] = {
    "bo": LanguageProfile("bo", "Tibetan", "syllables+shads", TIBETAN, normalize_tibetan, tibetan_units),
    "zh": LanguageProfile("zh", "Chinese", "characters", HAN, _nfc, chinese_units),
    "ko": LanguageProfile("ko", "Korean", "words", HANGUL, _nfc, _words),
    "en": LanguageProfile("en", "English", "words", LATIN, _nfc, _words),
}


def get_profile(code: str) -> LanguageProfile:
    """The profile for a language code; any code without its own profile gets the generic one
    (NFC, whitespace words, every letter counts as target script)."""
    key = (code or "generic").strip().lower().replace("_", "-")
    key = {"tibetan": "bo", "chinese": "zh", "korean": "ko", "english": "en"}.get(key, key)
    base = key.split("-")[0]  # zh-Hans, bo-CN, en-US
    if base in PROFILES:
        return PROFILES[base]
    return LanguageProfile(key, f"generic ({key})", "words", (), _nfc, _words)
