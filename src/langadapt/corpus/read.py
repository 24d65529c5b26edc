"""Streaming corpus reading: files, directories and globs in many formats, one record at a time.

Nothing is ever loaded whole: every format is read line by line from a binary stream, so a
40 GB corpus costs the memory of its longest line (of its longest record for `.json`).

Formats (by suffix; the text formats optionally compressed: `.gz`, `.zst`, `.xz`, `.bz2`, streamed):

| suffix | record |
|---|---|
| any other (`.txt`, ...) | each non-blank line |
| `.jsonl` | the `field` of each JSON object per line (a JSON string line is itself a record) |
| `.json` | the `field` of each object in a top-level JSON list, parsed incrementally; a `.json` file whose first line starts with `{` is read as JSON Lines |
| `.conllu` | each `# text = ...` comment (not `# text_en`, not the token lines) |
| `.csv` / `.tsv` | one cell per row, from `column` (a header name or a 0-based index) |
| `.parquet` | the `column` (else `field`) of each row, one row group at a time (pyarrow) |
| `.arrow` | the same, one record batch at a time: Arrow IPC stream or file, as `datasets` writes |

A folder written by `datasets`' `save_to_disk` (it holds `state.json`) is read as its `.arrow` files in
order; a `DatasetDict` folder as each split's. pyarrow (`.parquet`, `.arrow`) and zstandard (`.zst`)
come with the `corpus` extra and are imported only when such a file is read.

Every record is cleaned (optional), normalised by the language profile and stripped of
surrounding whitespace; a record that is then empty is skipped (like a blank line).
A UTF-8 byte order mark at the start of a file is dropped.

Invalid UTF-8 raises `LangadaptError` naming the file and the byte offset in the file (in the
decompressed stream for compressed files), unless `on_bad_bytes="replace"`: then each invalid byte
becomes one U+FFFD and is counted in `ReadStats.bad_bytes_replaced`.

`.csv`/`.tsv` header: with `column` given by name the first row must be the header that names
it. Otherwise the first row is taken as a header when none of its cells is longer than
40 characters (a data row of prose is longer); `ReadStats.header_rows` counts the rows skipped.
Without `column`, the column with the longest text over the first 100 rows is read.
TSV cells are read without quote processing (tab-separated corpora rarely quote).
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import importlib
import io
import itertools
import json
import lzma
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

# Suffixes read when walking a directory or matching a glob (the text ones also compressed).
TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".conllu", ".csv", ".tsv")
TABLE_SUFFIXES = (".parquet", ".arrow")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".xz": "xz", ".bz2": "bz2"}
_DECOMPRESS_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_TABLE_BATCH_ROWS = 4096
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
    """One text record and where it came from (`line`: the 1-based line where it ends, or its row in a table)."""

    path: Path
    line: int
    text: str


# ----------------------------------------------------------------------------- paths

def _suffix_of(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression or None) - e.g. (".jsonl", "zstd") for data.jsonl.zst."""
    name = path.name.lower()
    stem, last = os.path.splitext(name)
    if last in COMPRESSIONS:
        return os.path.splitext(stem)[1], COMPRESSIONS[last]
    return last, None


def _is_text_file(path: Path) -> bool:
    suffix, compression = _suffix_of(path)
    return suffix in TEXT_SUFFIXES or (suffix in TABLE_SUFFIXES and compression is None)


def saved_dataset_files(directory: Path) -> list[Path]:
    """The `.arrow` files of a folder written by `datasets`' `save_to_disk`, in order (from its state.json)."""
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        return [directory / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LangadaptError(f"{directory / 'state.json'}: not a datasets state.json with '_data_files' ({e})") from None


def _walk(directory: Path) -> tuple[list[Path], list[Path]]:
    """(text files, other files) under `directory`, recursively, sorted, hidden ones skipped. A folder
    saved by `datasets` (with state.json) gives its .arrow files; its json files are not text."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if "state.json" in files:
            found.extend(saved_dataset_files(Path(root)))
            continue
        found.extend(Path(root) / f for f in files if not f.startswith(".") and f != "dataset_dict.json")
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
                    f"{p}: directory has no text files ({', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)}; the text "
                    f"ones optionally {', '.join(COMPRESSIONS)}){hint}")
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


def require(module: str, path: Path, extra: str = "corpus"):
    """Import `module` for reading `path`, or say in one line which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LangadaptError(f"{path}: reading this file needs {module.split('.')[0]}: "
                             f"pip install 'langadapt[{extra}]'") from None


def _decompressed(fh, compression: str | None, path: Path):
    """A binary stream of the decompressed bytes of `fh`."""
    if compression is None:
        return fh
    if compression == "gzip":
        return gzip.GzipFile(fileobj=fh, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(fh)
    if compression == "xz":
        return lzma.LZMAFile(fh)
    return io.BufferedReader(_ZstdFrames(fh, require("zstandard", path)), buffer_size=1 << 20)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file of one or more frames. Unlike zstandard's stream_reader, a
    file that ends inside a frame (truncated) raises ZstdError instead of ending quietly."""

    def __init__(self, fh, zstandard):
        self.fh, self.zstandard = fh, zstandard
        self.dctx = zstandard.ZstdDecompressor()
        self.frame = self.dctx.decompressobj()
        self.fed = False  # bytes given to the current frame
        self.out, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.pos == len(self.out):
            chunk = self.fh.read(1 << 20)
            if not chunk:
                if self.fed and not self.frame.eof:
                    raise self.zstandard.ZstdError("the file ends inside a frame (truncated)")
                return 0
            pieces = []
            while chunk:
                if self.frame.eof:  # the next frame
                    self.frame, self.fed = self.dctx.decompressobj(), False
                pieces.append(self.frame.decompress(chunk))
                self.fed = True
                chunk = self.frame.unused_data if self.frame.eof else b""
            self.out, self.pos = b"".join(pieces), 0
        n = min(len(buffer), len(self.out) - self.pos)
        buffer[:n] = self.out[self.pos:self.pos + n]
        self.pos += n
        return n


def _lines(path: Path, on_bad_bytes: str, stats: ReadStats, progress=None,
           part: FilePart | None = None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its newline) for each line of `path`, streamed; with a `part`
    (of an uncompressed file), the lines that start in its byte range, numbered from its start."""
    compression = _suffix_of(path)[1]
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise LangadaptError(f"{path}: cannot open ({e.strerror})") from None
    errors = _DECOMPRESS_ERRORS
    if compression == "zstd":
        errors = errors + (require("zstandard", path).ZstdError,)
    with fh:
        stream = _decompressed(fh, compression, path)
        offset, stop = 0, None
        if part is not None and part.count > 1:  # a byte range (of an uncompressed file: `file_parts`)
            if part.start > 0:
                fh.seek(part.start - 1)
                offset = part.start - 1 + len(fh.readline())  # the first line that starts in the part
            stop = part.stop
        lineno = 0
        done = offset  # bytes already reported to the progress bar
        try:
            for raw in stream:
                if stop is not None and offset >= stop:
                    break
                lineno += 1
                text = _decode(raw, path, offset, lineno, on_bad_bytes, stats)
                if offset == 0 and text.startswith("\ufeff"):
                    text = text[1:]
                offset += len(raw)
                if progress is not None and lineno % 4096 == 0:
                    pos = fh.tell() if compression else offset
                    progress.update(pos - done)
                    done = pos
                yield lineno, text
        except errors as e:
            if compression is None:
                raise LangadaptError(f"{path}: cannot read ({e})") from None
            raise LangadaptError(f"{path}: not a valid {compression} file ({e}) after {offset:,} decompressed "
                                 f"bytes (line {lineno + 1})") from None
        if progress is not None:
            progress.update((fh.tell() if compression else offset) - done)


# ----------------------------------------------------------------------------- parts of big files

SPLITTABLE_SUFFIXES = (".txt", ".text", ".jsonl", ".conllu")  # a record never spans lines


@dataclass(frozen=True)
class FilePart:
    """A part of one corpus file that is read on its own (so that one big file is not one process's job):
    the lines that start in bytes [start, stop) of an uncompressed line-based file (.txt, .jsonl, .conllu),
    or row groups [first_group, end_group) of a Parquet file (which lie in bytes [start, stop))."""

    path: Path
    index: int
    count: int
    start: int
    stop: int
    first_group: int | None = None
    end_group: int | None = None

    def __str__(self) -> str:
        if self.count == 1:
            return str(self.path)
        where = (f"row groups {self.first_group}-{self.end_group - 1}" if self.first_group is not None
                 else f"bytes {self.start:,}-{self.stop:,}")
        return f"{self.path} (part {self.index + 1} of {self.count}: {where})"


def file_parts(path: Path, part_bytes: int) -> list[FilePart]:
    """`path` cut into parts of about `part_bytes` bytes where its format allows (see `FilePart`), else one part."""
    size = path.stat().st_size
    suffix, compression = _suffix_of(path)
    whole = [FilePart(path, 0, 1, 0, size)]
    if size <= part_bytes or compression is not None:
        return whole
    if suffix in SPLITTABLE_SUFFIXES:
        starts = list(range(0, size, part_bytes))
        return [FilePart(path, i, len(starts), s, min(size, s + part_bytes)) for i, s in enumerate(starts)]
    if suffix == ".parquet":
        meta = require("pyarrow.parquet", path).ParquetFile(path).metadata
        spans = []  # (first byte, end byte) of each row group
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            columns = [group.column(c) for c in range(group.num_columns)]
            first = min(c.dictionary_page_offset or c.data_page_offset for c in columns)
            spans.append((first, first + sum(c.total_compressed_size for c in columns)))
        cuts, start = [], 0
        for g in range(len(spans)):
            if spans[g][1] - spans[start][0] >= part_bytes or g == len(spans) - 1:
                cuts.append((start, g + 1))
                start = g + 1
        if len(cuts) <= 1:
            return whole
        return [FilePart(path, i, len(cuts), spans[a][0], spans[b - 1][1], a, b) for i, (a, b) in enumerate(cuts)]
    return whole


def part_digest(part: FilePart) -> str:
    """A hash of a part's bytes (sha256, 20 hex digits): what seeds its BPE-dropout."""
    h = hashlib.sha256()
    with open(part.path, "rb") as f:
        f.seek(part.start)
        left = part.stop - part.start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()[:20]


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


def _table_column(path: Path, names: list[str], field: str, column: str | int | None) -> str:
    """The column of a Parquet/Arrow table to read: `column` (a name or 0-based index), else `field`."""
    wanted = column if column is not None else field
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit() and wanted not in names):
        index = int(wanted)
        if not 0 <= index < len(names):
            raise LangadaptError(f"{path}: column index {index} is out of range (it has {len(names)} columns)")
        return names[index]
    if wanted not in names:
        raise LangadaptError(f"{path}: no column {wanted!r} (its columns: {', '.join(map(repr, names[:20]))}); "
                             f"choose one with --field or --column")
    return wanted


def _column_texts(path: Path, values, name: str, first_row: int) -> Iterator[tuple[int, str]]:
    for row, value in enumerate(values.to_pylist(), first_row):
        if value is None:
            continue
        if not isinstance(value, str):
            raise LangadaptError(f"{path}: row {row}: column {name!r} holds {type(value).__name__}, expected text")
        yield row, value


def _parquet(path: Path, field: str, column, progress=None, part: FilePart | None = None) -> Iterator[tuple[int, str]]:
    """(row, text) of one column of a Parquet file (of the part's row groups), one row group at a time (in
    batches of rows)."""
    pa = require("pyarrow", path)
    pq = require("pyarrow.parquet", path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise LangadaptError(f"{path}: not a valid Parquet file ({e})") from None
    name = _table_column(path, pf.schema_arrow.names, field, column)
    groups = range(pf.num_row_groups)
    if part is not None and part.first_group is not None:
        groups = range(part.first_group, part.end_group)
    size, rows = path.stat().st_size, max(1, pf.metadata.num_rows)
    row = 1 + sum(pf.metadata.row_group(g).num_rows for g in range(groups.start))
    for group in groups:
        try:
            for batch in pf.iter_batches(batch_size=_TABLE_BATCH_ROWS, row_groups=[group], columns=[name]):
                yield from _column_texts(path, batch.column(0), name, row)
                row += batch.num_rows
                if progress is not None:
                    progress.update(size * batch.num_rows // rows)
        except (pa.ArrowException, OSError) as e:
            raise LangadaptError(f"{path}: row group {group} (of {pf.num_row_groups}) cannot be read ({e})") from None


def _arrow(path: Path, field: str, column, progress=None) -> Iterator[tuple[int, str]]:
    """(row, text) of one column of an Arrow IPC file (stream or file format), one record batch at a time."""
    pa = require("pyarrow", path)
    source = pa.memory_map(str(path))
    try:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        source.close()
        raise LangadaptError(f"{path}: not a valid Arrow file ({e})") from None
    row, index, name, done = 1, 0, None, 0
    try:
        for index, batch in enumerate(reader):
            name = name or _table_column(path, batch.schema.names, field, column)
            yield from _column_texts(path, batch.column(name), name, row)
            row += batch.num_rows
            if progress is not None:
                progress.update(source.tell() - done)
                done = source.tell()
    except (pa.ArrowException, OSError) as e:
        raise LangadaptError(f"{path}: record batch {index} at byte offset {source.tell():,} cannot be read ({e})") \
            from None
    finally:
        source.close()


def _file_records(path: Path, *, field: str, column, on_bad_bytes: str, stats: ReadStats,
                  progress=None, part: FilePart | None = None) -> Iterator[tuple[int, str]]:
    """Raw (line or row, text) records of one file (or of one part of it), in its format."""
    suffix = _suffix_of(path)[0]
    if suffix == ".parquet":
        return _parquet(path, field, column, progress, part)
    if suffix == ".arrow":
        return _arrow(path, field, column, progress)
    lines = _lines(path, on_bad_bytes, stats, progress, part)
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
                 stats: ReadStats | None = None, progress: bool = False,
                 part: FilePart | None = None) -> Iterator[Record]:
    """Like `iter_texts`, but each record comes with its file and line (`Record`). With `part` (of the one
    file `paths` names), only that part is read."""
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
                                            stats=stats, progress=bar, part=part):
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


CORPUS_HELP = ("text files, directories (read recursively), globs, .jsonl, .json, .conllu, .csv/.tsv, .parquet, "
               ".arrow and datasets save_to_disk folders; text files also .gz/.zst/.xz/.bz2")
LANGS = "bo (Tibetan), zh (Chinese), ko (Korean), en (English) or any other code (generic profile)"


@dataclass
class ReadingOptions(Options):
    """How to read text files: the language profile, the JSON field or CSV column, markup, bad bytes.

    Every command and recipe section that reads text embeds this one class, so a corpus is read
    the same way for the tokenizer, for training and for evaluation."""

    lang: str | None = option(None, help=f"language profile for normalising and counting: {LANGS} "
                                         "(default: the generic profile)")
    field: str = option("text", help="JSON field to read from .jsonl/.json records, and the column of "
                                      ".parquet/.arrow files unless --column says otherwise")
    column: str | None = option(None, help="column (header name or 0-based index) to read from .csv/.tsv "
                                           "(default: the column with the longest text) and .parquet/.arrow")
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

    def iter_part_texts(self, part: FilePart) -> Iterator[str]:
        """The records of one part of a file (`file_parts`)."""
        for record in iter_records([part.path], part=part, **self.keywords()):
            yield record.text

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
