"""Writing output directories safely: atomically, and with a record of how they were made."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from langadapt import __version__
from langadapt.errors import LangadaptError
from langadapt.options import Options, option

ADAPTATION_FILE = "adaptation.json"


@dataclass
class OutputOptions(Options):
    """Where a command writes its output directory, and whether it may replace one."""

    out: str = option(None, metavar="DIR", required=True, help="output directory (written atomically)")
    overwrite: bool = option(False, help="replace an existing --out")

    def check_free(self) -> None:
        """Fail early (before long work) when `out` exists and may not be replaced."""
        if Path(self.out).exists() and not self.overwrite:
            raise LangadaptError(f"output {self.out} already exists; choose another --out or pass --overwrite")

    def directory(self):
        """`atomic_output_dir` for `out`: a temporary directory renamed to `out` when the block succeeds."""
        return atomic_output_dir(self.out, overwrite=self.overwrite)


@contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; rename it to `out` only if the block succeeds.

    A crash or error inside the block removes the temporary directory, so a half-written
    output never sits at `out` looking whole. An existing `out` is replaced only with
    `overwrite=True` (and only once the new one is complete).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise LangadaptError(f"output {out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@contextmanager
def atomic_output_file(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside `out`; rename it to `out` only if the block succeeds
    (the file counterpart of `atomic_output_dir`: an existing `out` is kept unless `overwrite`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LangadaptError(f"output {out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)


def _writer_tmp(path: Path) -> Path:
    """A temporary name beside `path` that no other process or thread writing `path` uses."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename (safe with concurrent writers)."""
    path = Path(path)
    tmp = _writer_tmp(path)
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_jsonl_atomic(path: str | os.PathLike, records: list) -> None:
    """Write one JSON object per line to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = _writer_tmp(path)
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_adaptation_json(directory: str | os.PathLike) -> dict:
    """The `adaptation.json` record of a directory ({} when it has none)."""
    path = Path(str(directory)) / ADAPTATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def adaptation_record(step: str, inherit_from: str | os.PathLike | None = None, **info: Any) -> dict:
    """The `adaptation.json` record of a step (see `write_adaptation_json`), without writing it
    (a GGUF file carries it as metadata)."""
    previous = read_adaptation_json(inherit_from) if inherit_from is not None else {}
    history = (previous.pop("history", []) + [previous]) if previous else []
    record = {
        "step": step,
        "langadapt_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **info,
    }
    if history:
        record["history"] = history
    return record


def write_adaptation_json(out_dir: str | os.PathLike, step: str, inherit_from: str | os.PathLike | None = None,
                          **info: Any) -> dict:
    """Write `adaptation.json` into `out_dir`: which langadapt step made it, from what, and how.

    `info` holds the step's own facts (base, tokenizer hash, sizes, hyperparameters...).
    `inherit_from` names the input whose record this output continues (e.g. the model a run
    trained): its record, and its own history before it, go under `history`, so a chain of
    steps stays readable. An input without a record (or that is not a directory) adds nothing.
    """
    record = adaptation_record(step, inherit_from, **info)
    write_json_atomic(Path(out_dir) / ADAPTATION_FILE, record)
    return record
