"""A model directory's fingerprint: what it is, exactly, without reading gigabytes twice.

`model_fingerprint(dir)` is the sha256 of the names and contents of every top-level file of an
HF model directory (weights, config, tokenizer, anything else there), so two directories share a
fingerprint only when they hold the same files. Each file's sha256 is remembered
(`sources.file_sha256_memo`) under `$LANGADAPT_HOME/file-hashes/`, keyed by its resolved path,
size, modification time and inode: a 13 GB model is read once, later fingerprints cost a `stat`
per file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.sources import file_sha256_memo


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hex sha256 over (name, sha256) of every top-level, non-hidden file of a model directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LangadaptError(f"{model_dir}: not a model directory (a fingerprint needs a local folder)")
    h = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            h.update(f"{path.name}\0{file_sha256_memo(path)}\n".encode())
    return h.hexdigest()
