"""The embedded sample corpus: Korean texts shipped as data files inside the `konlpy` package.

`konlpy` (installed with `pip install --no-deps konlpy`) is never imported - importing it
needs Java. Its data files are located through the import system's metadata only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from langadapt.errors import LangadaptError

INSTALL_HINT = "pip install --no-deps konlpy"


def konlpy_data_dir() -> Path:
    """`konlpy/data/corpus` of the installed konlpy package, without importing it."""
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.submodule_search_locations:
        raise LangadaptError(f"the embedded sample corpus needs the konlpy package, which is not installed; "
                             f"run: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        corpus = Path(location) / "data" / "corpus"
        if corpus.is_dir():
            return corpus
    raise LangadaptError(f"konlpy is installed but has no data/corpus folder; reinstall it: {INSTALL_HINT}")


def embedded_corpus_paths() -> list[Path]:
    """The Korean constitution (kolaw/constitution.txt) and the bills (kobill/*.txt, sorted)."""
    corpus = konlpy_data_dir()
    paths = [corpus / "kolaw" / "constitution.txt", *sorted((corpus / "kobill").glob("*.txt"))]
    missing = [p for p in paths if not p.is_file()]
    if missing or len(paths) < 2:
        raise LangadaptError(f"konlpy's sample corpus is incomplete ({missing[0] if missing else 'no kobill files'}); "
                             f"reinstall it: {INSTALL_HINT}")
    return paths


# The embedded corpus split for the demo: two bills are held out of every training step.
HELDOUT_BILLS = ("1809898.txt", "1809899.txt")
EMBEDDED_SETS = {
    "ko-train": "the constitution and 8 of the 10 bills (tokenizer and pretraining text)",
    "ko-heldout": "bills 1809898 and 1809899, never trained on (bits per char before and after)",
    "ko-instructions": "question/answer pairs the training text itself contains: constitution article "
                       "number -> article text, bill rationale -> bill title",
}


def embedded_set_paths(name: str) -> list[Path]:
    """The files of an embedded text set (`ko-train` or `ko-heldout`)."""
    paths = embedded_corpus_paths()
    if name == "ko-train":
        return [p for p in paths if p.name not in HELDOUT_BILLS]
    if name == "ko-heldout":
        return [p for p in paths if p.name in HELDOUT_BILLS]
    raise LangadaptError(f"unknown embedded set 'embedded:{name}'; known: "
                         + ", ".join(f"embedded:{n}" for n in EMBEDDED_SETS))


def constitution_articles(text: str) -> list[tuple[str, str]]:
    """(article number "제N조", article text) for each article of the constitution's main text, in
    order (the supplementary provisions after "부칙" number their articles again, so they stop it)."""
    text = text.split("부칙", 1)[0].replace("펼침", "")  # "펼침 부칙 <...>": a web page's fold marker
    pieces = re.split(r"^\s*(제\d+조)\s", text, flags=re.M)
    articles = []
    for number, body in zip(pieces[1::2], pieces[2::2]):
        body = re.split(r"^\s*제\d+장\s", body, flags=re.M)[0]  # a chapter heading ends an article
        lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
        if lines:
            articles.append((number, "\n".join(lines)))
    return articles


def bill_title_and_rationale(text: str) -> tuple[str, str] | None:
    """(title, "제안이유 및 주요내용" section) of a bill file, or None when either is missing."""
    lines = [line.strip() for line in text.splitlines()]
    title = next((line for line in lines if line), "")
    m = re.search(r"제안이유\s*및\s*주요내용\s*\n(.*?)\n\s*-\s*\d+\s*-", text, flags=re.S)
    if not title or not m:
        return None
    rationale = " ".join(line.strip() for line in m.group(1).splitlines() if line.strip())
    return title, rationale


def embedded_instructions() -> list[dict]:
    """Alpaca-format pairs derived from the training part of the embedded corpus (never the held-out bills)."""
    records = []
    for path in embedded_set_paths("ko-train"):
        text = path.read_text(encoding="utf-8")
        if path.name == "constitution.txt":
            for number, body in constitution_articles(text):
                records.append({"instruction": f"대한민국헌법 {number}의 내용을 쓰세요.", "input": "", "output": body})
        else:
            pair = bill_title_and_rationale(text)
            if pair:
                title, rationale = pair
                records.append({"instruction": "다음 제안이유에 해당하는 법률안의 제목을 쓰세요.", "input": rationale,
                                "output": title})
    return records
