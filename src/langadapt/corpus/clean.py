"""Markup cleaning for known corpus formats (pure functions on one record).

`kangyur`: the Esukhia Derge Kangyur files (e.g. ../shared/data/bo/classical-kangyur) carry
- folio and line marks: `[1b]` on a line of its own, `[1b.1]` at the start of each line;
- text starts: `{D1}`, and sub-text starts such as `{D1-1}`;
- editorial pairs `(error,correction)`, e.g. `(འཆིའོ,མཆིའོ)`, and `{archaic,modern}`
  spelling pairs, e.g. `{བཅྭ་,བཅོ་}`: both keep the second reading (the correction / the
  standard spelling), which is what a model should learn to write.
"""

from __future__ import annotations

import re

from langadapt.errors import LangadaptError

_FOLIO_RE = re.compile(r"\[\d+[ab](?:\.\d+)?\]")
_TEXT_START_RE = re.compile(r"\{D\d+(?:-\d+)?\}")
_PAIR_RE = re.compile(r"\(([^(),]*),([^(),]*)\)|\{([^{},]*),([^{},]*)\}")


def clean_kangyur(text: str) -> str:
    """Remove Derge Kangyur folio marks and text starts; keep the second reading of pairs."""
    text = _FOLIO_RE.sub("", text)
    text = _TEXT_START_RE.sub("", text)
    return _PAIR_RE.sub(lambda m: m.group(2) if m.group(1) is not None else m.group(4), text)


CLEANERS = {"kangyur": clean_kangyur}


def get_cleaner(name: str | None):
    """The cleaning function called `name`, or None for no cleaning ("none" or None)."""
    if name in (None, "", "none"):
        return None
    try:
        return CLEANERS[name]
    except KeyError:
        raise LangadaptError(f"unknown clean={name!r}; expected one of: none, {', '.join(CLEANERS)}") from None
