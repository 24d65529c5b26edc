"""Streaming corpus reading: files, directories and globs in many formats, one record at a time.

Nothing is ever loaded whole: every format is read line by line from a binary stream, so a
40 GB corpus costs the memory of its longest line (of its longest record for `.json`).

Formats (by suffix, after an optional `.gz`):

| suffix | record |
|---|---|
| any other (`.txt`, ...) | each non-blank line |
| `.jsonl` | the `field` of each JSON object per line (a JSON string line is itself a record) |
| `.json` | the `field` of each object in a top-level JSON list, parsed incrementally; a `.json` file whose first line starts with `{` is read as JSON Lines |
| `.conllu` | each `# text = ...` comment (not `# text_en`, not the token lines) |
| `.csv` / `.tsv` | one cell per row, from `column` (a header name or a 0-based index) |

Every record is cleaned (optional), normalised by the language profile and stripped of
surrounding whitespace; a record that is then empty is skipped (like a blank line).
A UTF-8 byte order mark at the start of a file is dropped.

Invalid UTF-8 raises `LangadaptError` naming the file and the byte offset in the file (in the
decompressed stream for `.gz`), unless `on_bad_bytes="replace"`: then each invalid byte
becomes one U+FFFD and is counted in `ReadStats.bad_bytes_replaced`.

`.csv`/`.tsv` header: with `column` given by name the first row must be the header that names
it. Otherwise the first row is taken as a header when none of its cells is longer than
40 characters (a data row of prose is longer); `ReadStats.header_rows` counts the rows skipped.
Without `column`, the column with the longest text over the first 100 rows is read.
TSV cells are read without quote processing (tab-separated corpora rarely quote).
"""

from __future__ import annotations

import csv
import glob
import gzip
import itertools
import json
import os
import re
import zlib
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from tqdm import tqdm

from langadapt.corpus.clean import get_cleaner
from langadapt.corpus.embedded import embedded_set_paths
from langadapt.errors import LangadaptError
from langadapt.lang import LanguageProfile, get_profile
from langadapt.options import OptionError, Options, option

# Suffixes read when walking a directory or matching a glob (each also with ".gz").
TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".conllu", ".csv", ".tsv")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ESCAPED_RE = re.compile("[\udc80-\udcff]")  # bytes escaped by the "surrogateescape" decoder
_HEADER_MAX_CELL = 40
_CSV_SAMPLE_ROWS = 100
_JSON_MAX_BUFFER = 256 * 1024 * 1024


@dataclass
class ReadStats:
    """Counts gathered while reading; pass one to `iter_texts` and read it afterwards."""

    files: int = 0
    records: int = 0
    characters: int = 0
    bad_bytes_replaced: int = 0
    header_rows: int = 0
    bad_bytes_by_file: dict[str, int] = dc_field(default_factory=dict)


class Record(NamedTuple):
    """One text record and where it came from (`line`: 1-based line where it ends)."""

    path: Path
    line: int
    text: str


# ----------------------------------------------------------------------------- paths

def _suffix_of(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped?) - e.g. ("jsonl", True) for data.jsonl.gz."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return os.path.splitext(name)[1], gz


def _is_text_file(path: Path) -> bool:
    return _suffix_of(path)[0] in TEXT_SUFFIXES


def _walk(directory: Path) -> tuple[list[Path], list[Path]]:
    """(text files, other files) under `directory`, recursively, sorted, hidden ones skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files if not f.startswith("."))
    found.sort(key=lambda p: p.relative_to(directory).parts)
    text = [p for p in found if _is_text_file(p)]
    other = [p for p in found if not _is_text_file(p)]
    return text, other


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by `paths`: files as given, directories walked (recursive, sorted, hidden
    skipped, only TEXT_SUFFIXES), globs expanded (sorted). Raises LangadaptError for a missing
    path, a glob without matches or a directory without text files. Duplicates are dropped.
    `embedded:NAME` names a set of the embedded sample corpus (e.g. embedded:ko-train)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if str(item).startswith("embedded:"):

            out.extend(embedded_set_paths(str(item).split(":", 1)[1]))
        elif p.is_file():
            out.append(p)
        elif p.is_dir():
            text, other = _walk(p)
            if not text:
                hint = ""
                if other:
                    suffixes = sorted({q.suffix or q.name for q in other})[:5]
                    hint = f"; it has {len(other)} other file(s) ({', '.join(suffixes)}): name them explicitly to read them"
                raise LangadaptError(
                    f"{p}: directory has no text files ({', '.join(TEXT_SUFFIXES)}, optionally .gz){hint}")
            out.extend(text)
        elif _GLOB_CHARS.search(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise LangadaptError(f"{item}: no file matches this pattern")
            files = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    files.extend(_walk(mp)[0])
                elif mp.is_file():
                    files.append(mp)
            if not files:
                raise LangadaptError(f"{item}: the pattern matches no readable text file")
            out.extend(files)
        elif p.exists():
            raise LangadaptError(f"{p}: not a regular file or directory")
        else:
            raise LangadaptError(f"{p}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ----------------------------------------------------------------------------- lines

def _decode(raw: bytes, path: Path, offset: int, lineno: int, on_bad_bytes: str, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if on_bad_bytes != "replace":
            raise LangadaptError(
                f"{path}: invalid UTF-8 at byte offset {offset + e.start} (line {lineno}): "
                f"{raw[e.start:e.end]!r} ({e.reason}); fix the file or use --on-bad-bytes replace") from None
    text = raw.decode("utf-8", "surrogateescape")
    n = len(_ESCAPED_RE.findall(text))
    stats.bad_bytes_replaced += n
    stats.bad_bytes_by_file[str(path)] = stats.bad_bytes_by_file.get(str(path), 0) + n
    return _ESCAPED_RE.sub("\ufffd", text)


def _lines(path: Path, on_bad_bytes: str, stats: ReadStats, progress=None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its newline) for each line of `path`, streamed."""
    gz = _suffix_of(path)[1]
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise LangadaptError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        stream = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
        offset = 0
        lineno = 0
        done = 0  # compressed bytes already reported to the progress bar
        try:
            for raw in stream:
                lineno += 1
                text = _decode(raw, path, offset, lineno, on_bad_bytes, stats)
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                offset += len(raw)
                if progress is not None and lineno % 4096 == 0:
                    pos = fh.tell()
                    progress.update(pos - done)
                    done = pos
                yield lineno, text
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise LangadaptError(f"{path}: not a valid gzip file ({e})") from None
        if progress is not None:
            progress.update(fh.tell() - done)


# ----------------------------------------------------------------------------- formats

def _plain(path: Path, lines) -> Iterator[tuple[int, str]]:
    for lineno, text in lines:
        yield lineno, text.rstrip("\r\n")


_CONLLU_TEXT_RE = re.compile(r"#\s*text\s*=\s?(.*)")


def _conllu(path: Path, lines) -> Iterator[tuple[int, str]]:
    for lineno, text in lines:
        if text.startswith("#"):
            m = _CONLLU_TEXT_RE.match(text.rstrip("\r\n"))
            if m:
                yield lineno, m.group(1)


def _field_of(obj, path: Path, where: str, field: str) -> str:
    """The text of one JSON record: a string itself, or the string at `field` of an object."""
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, dict):
        raise LangadaptError(f"{path}:{where}: expected a JSON object with a {field!r} field, got {type(obj).__name__}")
    if field not in obj:
        keys = ", ".join(map(repr, list(obj)[:10])) or "none"
        raise LangadaptError(f"{path}:{where}: record has no field {field!r} (its fields: {keys}); choose one with --field")
    value = obj[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LangadaptError(f"{path}:{where}: field {field!r} is a {type(value).__name__}, expected a string")
    return value


def _jsonl(path: Path, lines, field: str) -> Iterator[tuple[int, str]]:
    for lineno, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            hint = "; a .json file must hold a JSON list of records or one JSON object per line" \
                if _suffix_of(path)[0] == ".json" else ""
            raise LangadaptError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}){hint}") from None
        yield lineno, _field_of(obj, path, f"line {lineno}", field)


def _json(path: Path, lines, field: str) -> Iterator[tuple[int, str]]:
    """A `.json` file: a JSON list of records, or (as often found) JSON Lines named .json."""
    head = []
    for lineno, text in lines:
        head.append((lineno, text))
        if text.strip():
            break
    rest = itertools.chain(head, lines)
    if head and head[-1][1].lstrip().startswith("{"):
        return _jsonl(path, rest, field)
    return _json_list(path, rest, field)


def _json_list(path: Path, lines, field: str) -> Iterator[tuple[int, str]]:
    """Records of a top-level JSON list, parsed item by item as lines arrive."""
    decoder = json.JSONDecoder()
    buf, state, lineno, index = "", "start", 0, 0
    ws = re.compile(r"\s*")
    for lineno, text in lines:
        buf += text
        pos = 0
        while True:
            pos = ws.match(buf, pos).end()
            if pos >= len(buf):
                break
            ch = buf[pos]
            if state == "start":
                if ch != "[":
                    raise LangadaptError(f"{path}:{lineno}: expected a JSON list of records ('['), found {ch!r}; "
                                         f"for one record per line use .jsonl")
                pos, state = pos + 1, "item"
            elif ch == "]" and state in ("item", "sep"):
                pos, state = pos + 1, "end"
            elif state == "sep":
                if ch != ",":
                    raise LangadaptError(f"{path}:{lineno}: invalid JSON list: expected ',' or ']' after record {index}, found {ch!r}")
                pos, state = pos + 1, "item"
            elif state == "item":
                try:
                    obj, pos = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    break  # incomplete: read more lines (a real error is reported at the end)
                index += 1
                yield lineno, _field_of(obj, path, f"line {lineno} (record {index})", field)
                state = "sep"
            else:  # "end"
                raise LangadaptError(f"{path}:{lineno}: unexpected data after the end of the JSON list")
        buf = buf[pos:]
        if len(buf) > _JSON_MAX_BUFFER:
            raise LangadaptError(f"{path}:{lineno}: a JSON record larger than {_JSON_MAX_BUFFER >> 20} MiB, or invalid JSON")
    if state != "end":
        detail = "empty file" if state == "start" else "the list is not closed"
        if buf.strip():
            try:
                decoder.raw_decode(buf, ws.match(buf).end())
            except json.JSONDecodeError as e:
                detail = f"{e.msg}"
        raise LangadaptError(f"{path}: invalid JSON list near line {lineno}: {detail}")


def _csv(path: Path, lines, column: str | int | None, delimiter: str, stats: ReadStats) -> Iterator[tuple[int, str]]:
    csv.field_size_limit(2**31 - 1)  # long documents in one cell
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader((text for _, text in lines), delimiter=delimiter, quoting=quoting)
    rows = ((reader.line_num, row) for row in reader)
    try:
        first_line, first = next(rows)
    except StopIteration:
        return
    except csv.Error as e:
        raise LangadaptError(f"{path}:1: invalid CSV ({e})") from None
    index: int | None = None
    by_name = column is not None and not str(column).lstrip("-").isdigit()
    if by_name:
        if column not in first:
            raise LangadaptError(f"{path}:1: no column {column!r} in the header {first!r}; "
                                 f"pass --column with a header name or a 0-based index")
        index, header = first.index(column), True
    else:
        header = all(len(cell) <= _HEADER_MAX_CELL for cell in first)
        if column is not None:
            index = int(column)
    pending: list[tuple[int, list[str]]] = [] if header else [(first_line, first)]
    stats.header_rows += int(header)
    try:
        if index is None:  # choose the column with the most text in the first rows
            for line, row in rows:
                pending.append((line, row))
                if len(pending) >= _CSV_SAMPLE_ROWS:
                    break
            width = max((len(r) for _, r in pending), default=0)
            totals = [sum(len(r[i]) for _, r in pending if i < len(r)) for i in range(width)]
            index = max(range(width), key=lambda i: totals[i]) if width else 0
        for line, row in (*pending, *rows):
            if not row:
                continue
            if not -len(row) <= index < len(row):
                raise LangadaptError(f"{path}:{line}: row has {len(row)} cells, column {column if column is not None else index} "
                                     f"is not among them")
            yield line, row[index]
    except csv.Error as e:
        raise LangadaptError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None


def _file_records(path: Path, *, field: str, column, on_bad_bytes: str, stats: ReadStats,
                  progress=None) -> Iterator[tuple[int, str]]:
    """Raw (line, text) records of one file, in its format."""
    lines = _lines(path, on_bad_bytes, stats, progress)
    suffix = _suffix_of(path)[0]
    if suffix == ".jsonl":
        return _jsonl(path, lines, field)
    if suffix == ".json":
        return _json(path, lines, field)
    if suffix == ".conllu":
        return _conllu(path, lines)
    if suffix in (".csv", ".tsv"):
        return _csv(path, lines, column, "\t" if suffix == ".tsv" else ",", stats)
    return _plain(path, lines)


# ----------------------------------------------------------------------------- records

def iter_records(paths, profile: LanguageProfile | None = None, *, field: str = "text",
                 column: str | int | None = None, clean: str | None = None, on_bad_bytes: str = "error",
                 stats: ReadStats | None = None, progress: bool = False) -> Iterator[Record]:
    """Like `iter_texts`, but each record comes with its file and line (`Record`)."""
    if on_bad_bytes not in ("error", "replace"):
        raise LangadaptError(f"on_bad_bytes must be 'error' or 'replace', not {on_bad_bytes!r}")
    profile = profile or get_profile("generic")
    cleaner = get_cleaner(clean)
    stats = stats if stats is not None else ReadStats()
    files = expand_paths(paths)
    bar = None
    if progress:
        bar = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True,
                   desc="reading", disable=None, leave=False)
    records = 0
    try:
        for path in files:
            stats.files += 1
            for line, text in _file_records(path, field=field, column=column, on_bad_bytes=on_bad_bytes,
                                            stats=stats, progress=bar):
                if cleaner is not None:
                    text = cleaner(text)
                text = profile.normalize(text).strip()
                if not text:
                    continue
                records += 1
                stats.records += 1
                stats.characters += len(text)
                yield Record(path, line, text)
    finally:
        if bar is not None:
            bar.close()
    if records == 0:
        named = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths))
        raise LangadaptError(f"no text records in {named} ({len(files)} file(s) read, all empty"
                             f"{'' if clean in (None, 'none') else ' after cleaning'})")


CORPUS_HELP = "text files, directories (read recursively), globs, .jsonl, .conllu, .csv/.tsv, .gz"
LANGS = "bo (Tibetan), zh (Chinese), ko (Korean), en (English) or any other code (generic profile)"


@dataclass
class ReadingOptions(Options):
    """How to read text files: the language profile, the JSON field or CSV column, markup, bad bytes.

    Every command and recipe section that reads text embeds this one class, so a corpus is read
    the same way for the tokenizer, for training and for evaluation."""

    lang: str | None = option(None, help=f"language profile for normalising and counting: {LANGS} "
                                         "(default: the generic profile)")
    field: str = option("text", help="JSON field to read from .jsonl/.json records")
    column: str | None = option(None, help="column (header name or 0-based index) to read from .csv/.tsv; "
                                           "default: the column with the longest text")
    clean: str = option("none", choices=("none", "kangyur"),
                        help="strip known markup: 'kangyur' removes Derge Kangyur folio marks [1b], [1b.1], {D1} "
                             "and keeps the correction of (error,correction) pairs")
    on_bad_bytes: str = option("error", choices=("error", "replace"),
                               help="invalid UTF-8: stop with the file and byte offset, or replace each bad byte "
                                    "with U+FFFD and count them")

    def profile(self) -> LanguageProfile:
        return get_profile(self.lang or "generic")

    def require_lang(self) -> None:
        """For commands that need to know the language: an error when --lang was not given."""
        if not self.lang:
            raise OptionError("lang", f"is required: the language of the text ({LANGS})")

    def keywords(self) -> dict:
        """The `iter_texts` keyword arguments (profile included)."""
        column = int(self.column) if self.column is not None and self.column.lstrip("-").isdigit() else self.column
        return {"profile": self.profile(), "field": self.field, "column": column,
                "clean": None if self.clean == "none" else self.clean, "on_bad_bytes": self.on_bad_bytes}

    def iter_texts(self, paths, stats: ReadStats | None = None, progress: bool = False) -> Iterator[str]:
        """The text records of `paths` read this way."""
        return iter_texts(paths, **self.keywords(), stats=stats, progress=progress)

    def iter_records(self, paths, stats: ReadStats | None = None, progress: bool = False) -> Iterator[Record]:
        """Like `iter_texts`, each record with its file and line."""
        return iter_records(paths, **self.keywords(), stats=stats, progress=progress)

    def read_text(self, paths, max_chars: int | None = None) -> str:
        """The records of `paths` joined with "\\n", cut to `max_chars` (reading stops there)."""
        parts, total = [], 0
        for record in self.iter_texts(paths):
            parts.append(record)
            total += len(record) + 1
            if max_chars is not None and total >= max_chars:
                break
        text = "\n".join(parts)
        return text[:max_chars] if max_chars is not None else text


def read_text(paths, reading: ReadingOptions | str | None = None, max_chars: int | None = None) -> str:
    """`ReadingOptions.read_text` with `reading` given as options or a language code."""
    if not isinstance(reading, ReadingOptions):
        reading = ReadingOptions(lang=reading)
    return reading.read_text(paths, max_chars=max_chars)


def iter_texts(paths, profile: LanguageProfile | None = None, *, field: str = "text",
               column: str | int | None = None, clean: str | None = None, on_bad_bytes: str = "error",
               stats: ReadStats | None = None, progress: bool = False) -> Iterator[str]:
    """Stream the text records of `paths` (files, directories, globs), normalised by `profile`
    (default: the generic profile, NFC). See the module docstring for formats and errors."""
    for record in iter_records(paths, profile, field=field, column=column, clean=clean,
                               on_bad_bytes=on_bad_bytes, stats=stats, progress=progress):
        yield record.text
