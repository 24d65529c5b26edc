"""Tibetan text: canonical fixes so that equal text is equal bytes, and syllable units.

`normalize_tibetan` applies, in this order (each fix has a test in tests/test_lang.py):

1. Deprecated vowel signs. U+0F77 (ྲཱྀ) and U+0F79 (ླཱྀ) have only *compatibility*
   decompositions, so NFC keeps them; Unicode says their use is "strongly discouraged".
   They become subjoined ra/la + a-chung + reversed i: U+0FB2/U+0FB3, U+0F71, U+0F80.
   (U+0F73, U+0F75, U+0F81, U+0F76, U+0F78 and precomposed stacks such as U+0F43 or
   U+0F93 have canonical decompositions, so step 3, NFC, already splits them.)
2. Non-breaking tsheg U+0F0C becomes the ordinary tsheg U+0F0B. Both separate syllables;
   the difference is only a line-breaking hint, and the two spellings would otherwise
   give two vocabularies for the same syllables.
3. Unicode NFC (canonical decomposition, canonical ordering of the vowel signs).
4. Mark order inside a stack: a subjoined letter (U+0F90-U+0FBC) typed *after* a vowel
   sign (U+0F71-U+0F7D, U+0F80, U+0F81) is moved in front of it (ཀ + ི + ྱ -> ཀ + ྱ + ི).
   Subjoined letters have combining class 0, so NFC never reorders them, yet both orders
   render the same glyph. The vowels' own order is then re-canonicalised by NFC.
5. Spaces or tabs between a shad-type mark (U+0F0D-U+0F14) and a line end or the end of
   the text are removed ("...ལོ། " -> "...ལོ།"): they are invisible, and they make the
   same line two different strings. Spaces *between* shads ("། །") are kept: they are
   part of Tibetan punctuation.
"""

from __future__ import annotations

import re
import unicodedata

TSHEG = "\u0f0b"
NB_TSHEG = "\u0f0c"
# Shad-type marks: ། ༎ ༏ ༐ ༑ ༒ ༓ ༔ (U+0F13 is a symbol but ends clauses the same way).
SHADS = "\u0f0d-\u0f14"

_DEPRECATED = {
    "\u0f77": "\u0fb2\u0f71\u0f80",
    "\u0f79": "\u0fb3\u0f71\u0f80",
    NB_TSHEG: TSHEG,
}
_DEPRECATED_RE = re.compile("[" + "".join(_DEPRECATED) + "]")
_VOWELS = "\u0f71-\u0f7d\u0f80\u0f81"
_SUBJOINED = "\u0f90-\u0fbc"
_SUBJOINED_RE = re.compile(f"[{_SUBJOINED}]")
# A run of vowel signs and subjoined letters in which some vowel precedes a subjoined letter.
_MARK_RUN_RE = re.compile(f"[{_VOWELS}{_SUBJOINED}]*[{_VOWELS}][{_VOWELS}{_SUBJOINED}]*[{_SUBJOINED}]")
_SPACE_AFTER_SHAD_RE = re.compile(f"([{SHADS}])[ \\t]+(?=\\r?\\n|$)")


def _subjoined_first(match: re.Match) -> str:
    run = match.group(0)
    subjoined = "".join(ch for ch in run if _SUBJOINED_RE.match(ch))
    vowels = "".join(ch for ch in run if not _SUBJOINED_RE.match(ch))
    return subjoined + vowels


def normalize_tibetan(text: str) -> str:
    """NFC plus the Tibetan canonical fixes listed in this module's docstring."""
    text = _DEPRECATED_RE.sub(lambda m: _DEPRECATED[m.group(0)], text)
    text = unicodedata.normalize("NFC", text)
    if _MARK_RUN_RE.search(text):
        text = unicodedata.normalize("NFC", _MARK_RUN_RE.sub(_subjoined_first, text))
    return _SPACE_AFTER_SHAD_RE.sub(r"\1", text)


# Punctuation counted as one unit each: Tibetan marks (head marks ༄༅, shads, gter marks,
# brackets ༺༻༼༽, ornaments U+0FD0-U+0FD4, U+0FD9-U+0FDA), ASCII, general and CJK punctuation.
# The tsheg is not a unit: it only separates syllables.
_PUNCT = (
    "\u0f01-\u0f0a\u0f0d-\u0f14\u0f3a-\u0f3d\u0f85\u0fd0-\u0fd4\u0fd9\u0fda"
    "!-/:-@\\[-`{-~\u2010-\u2027\u2030-\u205e\u3001-\u303f"
)
_SYLLABLE_RE = re.compile(f"[{_PUNCT}]|[^\\s{TSHEG}{NB_TSHEG}{_PUNCT}]+")


def tibetan_units(text: str) -> list[str]:
    """Syllables (split on tsheg, shad and whitespace) plus each punctuation mark.

    Each shad counts as one unit, as a reader (and a tokenizer) sees it: the seed sentence
    ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན། is 13 syllables + 3 shads = 16 units.
    Non-Tibetan words and numbers inside Tibetan text count one unit each.
    """
    return _SYLLABLE_RE.findall(text)


def tibetan_syllables(text: str) -> list[str]:
    """Tibetan syllables only: the units of `tibetan_units` without punctuation marks and
    without non-Tibetan words. The seed sentence has 13. This is the denominator of the
    "tokens per syllable" figures quoted by the seed projects (Llama-2: 5.34 on dev-conllu)."""
    return [u for u in _SYLLABLE_RE.findall(text) if "\u0f40" <= u[0] <= "\u0fbc"]
