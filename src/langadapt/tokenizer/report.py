"""Compare tokenizers on a corpus of one language: how many tokens, how much byte fallback.

For each tokenizer: vocabulary size, tokens, characters, counting units (the language
profile's unit: Tibetan syllables, Chinese characters, words otherwise), tokens per character
and per unit, UTF-8 bytes per token, the byte-fallback share, the unknown-token share and the
share of the vocabulary the corpus uses.

"Byte fallback" means, for a SentencePiece-style tokenizer, its `<0xNN>` pieces; for a
byte-level BPE (GPT-2, Llama 3, SmolLM2), the tokens whose bytes are not whole UTF-8 characters
(a token holding part of a character's bytes) -- both say the vocabulary had no piece for the text.

The corpus is streamed once; texts are encoded in batches by each fast tokenizer and only
per-id counts are kept, so memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm
from transformers.convert_slow_tokenizer import bytes_to_unicode

from langadapt.corpus import CORPUS_HELP, ReadingOptions, ReadStats
from langadapt.errors import LangadaptError
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import write_json_atomic
from langadapt.tokenizer.load import load_tokenizer, tokenizer_kind
from langadapt.tokenizer.prune import BYTE_PIECE, id_space_size, iter_batches

_GENERIC_FILE_NAMES = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "vocab.json"}


# ----------------------------------------------------------------------------- measuring

def byte_token_mask(tok, kind: str) -> np.ndarray:
    """Boolean array over ids: True for byte-fallback tokens (see the module docstring)."""
    size = id_space_size(tok)
    mask = np.zeros(size, dtype=bool)
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    byte_decoder = None
    if kind == "byte-level-bpe":
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    for token, i in tok.get_vocab().items():
        if i in special:
            continue
        if BYTE_PIECE.match(token):
            mask[i] = True
        elif byte_decoder is not None and all(c in byte_decoder for c in token):
            try:
                bytes(byte_decoder[c] for c in token).decode("utf-8")
            except UnicodeDecodeError:
                mask[i] = True
    return mask


def readable_pieces(tok, kind: str, ids: list[int]) -> list[str]:
    """The pieces of `ids` as a person reads them. Byte-level BPE symbols ("à½ģ") are decoded to
    their text, with a space shown as ▁ like SentencePiece, and bytes that are not a whole
    character as <0xNN>; other tokenizers' pieces are shown as they are."""
    pieces = tok.convert_ids_to_tokens(ids)
    if kind != "byte-level-bpe":
        return pieces

    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    readable = []
    for piece in pieces:
        if not all(c in byte_decoder for c in piece):
            readable.append(piece)  # a special token
            continue
        text = bytes(byte_decoder[c] for c in piece).decode("utf-8", errors="backslashreplace")
        readable.append(re.sub(r"\\x([0-9a-f]{2})", lambda m: f"<0x{m.group(1).upper()}>", text).replace(" ", "▁"))
    return readable


@dataclass
class TokenizerCounts:
    """Running counts for one tokenizer over a streamed corpus."""

    name: str
    spec: str
    tok: object
    kind: str
    ids: np.ndarray = field(init=False)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.ids = np.zeros(id_space_size(self.tok), dtype=np.int64)

    def add(self, batch: list[str]) -> None:
        start = time.perf_counter()
        encodings = self.tok.backend_tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        self.seconds += time.perf_counter() - start
        self.ids += np.bincount(ids, minlength=len(self.ids))


def tokenizer_row(c: TokenizerCounts, chars: int, units: int, nbytes: int) -> dict:
    """The report's figures for one tokenizer from its counts and the corpus totals."""
    tokens = int(c.ids.sum())
    byte_tokens = int(c.ids[byte_token_mask(c.tok, c.kind)].sum())
    unk_id = c.tok.unk_token_id
    unk = int(c.ids[unk_id]) if unk_id is not None and 0 <= unk_id < len(c.ids) else 0
    vocab_size = len(c.tok)
    used = int((c.ids > 0).sum())

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "name": c.name, "spec": c.spec, "kind": c.kind, "vocab_size": vocab_size,
        "tokens": tokens, "chars": chars, "units": units, "bytes": nbytes,
        "tokens_per_char": ratio(tokens, chars), "tokens_per_unit": ratio(tokens, units),
        "bytes_per_token": ratio(nbytes, tokens),
        "byte_fallback_tokens": byte_tokens, "byte_fallback_share": ratio(byte_tokens, tokens) or 0.0,
        "unk_tokens": unk, "unk_share": ratio(unk, tokens) or 0.0,
        "vocab_used": used, "vocab_used_share": ratio(used, vocab_size),
        "seconds": round(c.seconds, 3), "tokens_per_second": round(tokens / c.seconds) if c.seconds else None,
    }


def measure(counters: list[TokenizerCounts], texts: Iterable[str], profile, max_chars: int | None = None,
            progress: bool = True) -> dict:
    """Stream `texts` once through every tokenizer; return the corpus totals (records, chars, bytes, units)."""

    totals = {"records": 0, "chars": 0, "bytes": 0, "units": 0}

    def limited(stream):
        for text in stream:
            if max_chars is not None:
                left = max_chars - totals["chars"]
                if left <= 0:
                    return
                text = text[:left]
            totals["records"] += 1
            totals["chars"] += len(text)
            totals["bytes"] += len(text.encode("utf-8"))
            totals["units"] += profile.count_units(text)
            yield text

    with tqdm(desc="tokenizing", unit=" chars", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
        for batch in iter_batches(limited(texts)):
            for c in counters:
                c.add(batch)
            bar.update(sum(len(t) for t in batch))
    return totals


# ----------------------------------------------------------------------------- output

def markdown_table(rows: list[dict], unit_name: str) -> str:
    """The per-tokenizer figures as a Markdown table."""
    head = ["tokenizer", "vocab", "tokens", "chars", unit_name, "tokens/char", f"tokens/{_singular(unit_name)}",
            "bytes/token", "byte fallback", "unk", "vocab used"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [_escape(r["name"]), f"{r['vocab_size']:,}", f"{r['tokens']:,}", f"{r['chars']:,}", f"{r['units']:,}",
                 _num(r["tokens_per_char"]), _num(r["tokens_per_unit"]), _num(r["bytes_per_token"]),
                 _pct(r["byte_fallback_share"]), _pct(r["unk_share"]), _pct(r["vocab_used_share"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pieces_table(rows: list[dict]) -> str:
    """One row per tokenizer: its token count and pieces of the `--text`, side by side."""
    lines = ["| tokenizer | tokens | pieces |", "|---|---:|---|"]
    for r in rows:
        pieces = " ".join(_escape(p) for p in r["pieces"])
        lines.append(f"| {_escape(r['name'])} | {r['tokens']} | {pieces} |")
    return "\n".join(lines)


def write_plot(rows: list[dict], unit_name: str, lang_name: str, path: Path) -> None:
    """Bar chart of tokens per unit per tokenizer (PNG, matplotlib Agg), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    values = [r["tokens_per_unit"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 2), 4.5), dpi=120)
    bars = ax.bar(range(len(rows)), values, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2)
    ax.set_xticks(range(len(rows)), names, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    ax.set_ylabel(f"tokens per {_singular(unit_name)} (lower is better)")
    ax.set_title(f"{lang_name}: tokens per {_singular(unit_name)}")
    ax.set_ylim(0, max(values + [1e-9]) * 1.15)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _singular(unit_name: str) -> str:
    return "+".join(u[:-1] if u.endswith("s") else u for u in unit_name.split("+"))


def _escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", "\\n")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def tokenizer_names(specs: list[str], names: list[str] | None) -> list[str]:
    """Display names: `--name` values in order, else the spec's basename (its folder for tokenizer.model etc.)."""
    names = list(names or [])
    if len(names) > len(specs):
        raise LangadaptError(f"{len(names)} --name values for {len(specs)} --tokenizer values")
    out: list[str] = []
    for i, spec in enumerate(specs):
        if i < len(names) and names[i]:
            name = names[i]
        else:
            p = Path(str(spec).rstrip("/"))
            name = p.parent.name if p.name in _GENERIC_FILE_NAMES and p.parent.name else p.name
            name = name or str(spec)
        base, n = name, 2
        while name in out:
            name, n = f"{base}#{n}", n + 1
        out.append(name)
    return out


# ----------------------------------------------------------------------------- command

@dataclass
class TokenizerReportOptions(Options):
    """Compare tokenizers on a corpus or a sentence: tokens per unit, byte fallback, vocab used.

    For each --tokenizer: vocab size, tokens, characters, units of the language (Tibetan syllables, Chinese
    characters, words otherwise), tokens per char and per unit, UTF-8 bytes per token, byte-fallback share,
    unk share and share of the vocab used; a Markdown table on stdout. Byte fallback = SentencePiece <0xNN>
    pieces; for byte-level BPE, tokens that are not whole characters (their bytes are not complete UTF-8
    characters). Special tokens are not added. With --text, also the pieces of each tokenizer."""

    tokenizer: list[str] = option([], metavar="SPEC", repeat=True, required=True,
                                  help="a tokenizer (HF dir, tokenizer.model, .gguf, alias, hub id); repeat to compare")
    name: list[str] = option([], repeat=True, help="display name of the tokenizer at the same position "
                                                   "(default: its basename)")
    corpus: list[str] = option([], metavar="PATH", help=CORPUS_HELP)
    text: str | None = option(None, help="one text instead of a corpus: also prints the pieces")
    reading: ReadingOptions = embed(ReadingOptions)
    max_chars: int | None = option(None, metavar="N", help="read at most N characters of the corpus")
    json: str | None = option(None, metavar="FILE", help="also write the figures as JSON")
    plot: str | None = option(None, metavar="FILE.png", help="also draw tokens per unit as a bar chart PNG")

    def __post_init__(self):
        super().__post_init__()
        self.reading.require_lang()
        if bool(self.corpus) == (self.text is not None):
            raise OptionError("corpus", "corpus or text: give one of --corpus PATH... or --text TEXT")
        if self.max_chars is not None and self.max_chars < 1:
            raise OptionError("max_chars", f"must be at least 1, got {self.max_chars}")
        for name in ("json", "plot"):
            target = getattr(self, name)
            if target and Path(target).is_dir():
                raise OptionError(name, f"{name} {target}: is a directory, expected a file path")
        tokenizer_names(self.tokenizer, self.name)  # more names than tokenizers is an error


def tokenizer_report_command(opts: TokenizerReportOptions) -> int:
    """Compare tokenizers on a corpus (or one --text) of a language."""
    profile = opts.reading.profile()
    names = tokenizer_names(opts.tokenizer, opts.name)
    counters = []
    for spec, name in zip(opts.tokenizer, names):
        tok = load_tokenizer(spec)
        if getattr(tok, "backend_tokenizer", None) is None:
            raise LangadaptError(f"{spec}: report needs a fast (tokenizers-backed) tokenizer")
        counters.append(TokenizerCounts(name, str(spec), tok, tokenizer_kind(tok)))

    stats = ReadStats()
    if opts.text is not None:
        text = profile.normalize(opts.text)
        if not text.strip():
            raise LangadaptError("--text is empty")
        texts: Iterable[str] = [text]
        paths: list[str] = []
    else:
        texts = opts.reading.iter_texts(opts.corpus, stats=stats)
        paths = [str(p) for p in opts.corpus]
    start = time.perf_counter()
    totals = measure(counters, texts, profile, max_chars=opts.max_chars)
    wall = time.perf_counter() - start
    if totals["records"] == 0 or totals["chars"] == 0:
        raise LangadaptError(f"corpus {' '.join(paths)}: no text records")

    rows = [tokenizer_row(c, totals["chars"], totals["units"], totals["bytes"]) for c in counters]
    if opts.text is not None:
        for row, c in zip(rows, counters):
            ids = c.tok(texts[0], add_special_tokens=False)["input_ids"]
            row["pieces"] = readable_pieces(c.tok, c.kind, ids)
    report = {
        "corpus": {"paths": paths, "records": totals["records"], "chars": totals["chars"], "units": totals["units"],
                   "unit_name": profile.unit_name, "bytes": totals["bytes"], "lang": profile.code,
                   **({"text": texts[0]} if opts.text is not None else {"files": stats.files})},
        "tokenizers": rows,
    }
    if opts.json:
        write_json_atomic(opts.json, report)
    if opts.plot:
        write_plot(rows, profile.unit_name, profile.name, Path(opts.plot))

    source = "--text" if opts.text is not None else f"{stats.files} files"
    print(f"{profile.name} ({profile.code}), {source}: {totals['records']:,} records, {totals['chars']:,} chars, "
          f"{totals['units']:,} {profile.unit_name}\n")
    print(markdown_table(rows, profile.unit_name))
    if opts.text is not None:
        print()
        print(pieces_table(rows))
    speeds = ", ".join(f"{r['name']} {r['tokens_per_second'] or 0:,} tokens/s" for r in rows)
    print(f"\ntokenized in {wall:.1f} s (reading included); encoding speed: {speeds}")
    for what in ("json", "plot"):
        if getattr(opts, what):
            print(f"wrote {getattr(opts, what)}")
    return 0
