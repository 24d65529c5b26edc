"""The embedded sample corpus: Korean texts shipped as data files inside the `konlpy` package.

`konlpy` (installed with `pip install --no-deps konlpy`) is never imported - importing it
needs Java. Its data files are located through the import system's metadata only.
"""

from __future__ import annotations

import importlib.util
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
