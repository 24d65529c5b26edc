"""ROUGE-L and exact match in the units of a language.

rouge-score's default tokenizer keeps only [a-z0-9] and so scores every Chinese or Tibetan answer
0. Here a text is cut into the units of its language (`units`) and ROUGE-L is the F1 of the
longest common subsequence of the two unit sequences (Lin 2004, beta = 1):

- Chinese (`zh`): each Han character; a run of other letters/digits (a Latin word, a number) is one
  unit; punctuation and spaces are not units (`lang.profiles.chinese_units`).
- Tibetan (`bo`): syllables, split on tsheg, shad and whitespace; shads, tshegs and other
  punctuation are not units; a non-Tibetan word or number is one unit.
- any other language: whitespace words.
- `jieba`: jieba's words (punctuation and spaces dropped), as LLaMA-Factory and OpenCompass score
  Chinese; needs the `eval-zh` extra.
"""

from __future__ import annotations

import unicodedata

from langadapt.errors import LangadaptError
from langadapt.lang.profiles import LanguageProfile
from langadapt.lang.tibetan import tibetan_units

UNITS = ("lang", "jieba")


def _is_punctuation(unit: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PZ" for ch in unit)


def units(text: str, profile: LanguageProfile, mode: str = "lang") -> list[str]:
    """The units ROUGE-L counts in `text` (see the module docstring)."""
    if mode == "jieba":
        try:
            import jieba
        except ImportError as e:
            raise LangadaptError("--units jieba needs jieba: pip install 'langadapt[eval-zh]'") from e
        jieba.setLogLevel(60)
        return [w for w in jieba.lcut(text) if w.strip() and not _is_punctuation(w)]
    if mode != "lang":
        raise LangadaptError(f"unknown units {mode!r}; choose one of {', '.join(UNITS)}")
    if profile.code == "bo":
        return [u for u in tibetan_units(text) if not _is_punctuation(u)]
    return profile.units(text)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of `a` and `b` (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 (0-1) of two unit sequences; 0 when either is empty."""
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after stripping whitespace and punctuation at both ends (a trailing shad or 。 does not count)."""
    def clean(s: str) -> str:
        edge = [ch.isspace() or _is_punctuation(ch) for ch in s]
        start = next((i for i, e in enumerate(edge) if not e), len(s))
        end = len(s) - next((i for i, e in enumerate(reversed(edge)) if not e), len(s))
        return s[start:max(start, end)]
    return clean(prediction) == clean(reference)
