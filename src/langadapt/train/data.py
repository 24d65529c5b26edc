"""The packed-block cache: tokenize a corpus once, then serve fixed-size blocks from disk.

Layout under the cache root (default `$LANGADAPT_HOME/blocks`):

    <tokenizer key>/<file key>.bin       uint32 token ids of one corpus file: every record's
                                         tokens followed by EOS (documents joined with EOS)
    <tokenizer key>/<file key>.hashes    uint64 hashes of the file's records (held-out checks)
    <tokenizer key>/<file key>.json      facts about the file (records, tokens, characters)
    <tokenizer key>/<file key>-NNNNNofMMMMM.bin  (.hashes, .json)  the same for each part of a file
                                         bigger than PART_BYTES (byte ranges or Parquet row groups)

The tokenizer key is a hash of the tokenizer's full definition (vocabulary, merges, normaliser)
and its EOS id; the file key a hash of the file's resolved path, size, mtime and the read
options (language profile, field, column, cleaning; with BPE-dropout, its rate and seed). A
file (or part) is written to a temporary name and renamed when complete, so an interrupted build
leaves only whole files and the next run goes on with the ones still missing (resumable); a second
run with the same inputs reads no text.
Memory stays flat: records are streamed, tokenised in batches and appended to the file as they come.

Blocks are a view over the concatenation of the files in corpus order: block `i` is tokens
`[i * block_size, (i + 1) * block_size)`, so a document's remainder carries into the next
block instead of being dropped. Only the final tail (fewer than `block_size` tokens at the
very end of the corpus) is left out; `BlockDataset.tail_tokens` says how many.
"""

from __future__ import annotations

import array
import hashlib
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from langadapt.corpus import ReadingOptions, expand_paths
from langadapt.corpus.read import FilePart, file_parts, part_digest
from langadapt.errors import LangadaptError
from langadapt.options import to_mapping
from langadapt.sources import langadapt_home
from langadapt.tokenizer.dropout import DropoutSegmenter

# A batch is tokenised in one call (the fast tokenizer spreads it over its threads) and then
# appended to disk; bounding it by characters too keeps memory flat whatever the record length.
BATCH_RECORDS = 512
BATCH_CHARS = 200_000
PART_BYTES = 64 << 20  # a bigger file is cut into parts of about this size (see build_token_cache)
ENCODER_THREADS = 8


def tokenizer_key(tokenizer) -> str:
    """A hash of everything that decides the ids a tokenizer produces, plus its EOS id."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:  # a slow tokenizer: its vocabulary is the best we have
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    h.update(f"eos={tokenizer.eos_token_id}".encode())
    return h.hexdigest()[:20]


def file_key(path: Path, read_options: dict) -> str:
    """A hash of a corpus file's identity (resolved path, size, mtime) and how it is read."""
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **read_options}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def record_hash(text: str) -> int:
    """A 64-bit hash of one normalised record (to find held-out records in the training data)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def default_cache_root() -> Path:
    """`$LANGADAPT_HOME/blocks`."""
    return langadapt_home() / "blocks"


@dataclass
class CorpusSpec:
    """Which text to read (`paths`), how (`reading`), and how to cut it (with `bpe_dropout` > 0,
    BPE-dropout seeded by `seed` and the file's contents; else the tokenizer as it is)."""

    paths: list
    reading: ReadingOptions = field(default_factory=ReadingOptions)
    bpe_dropout: float = 0.0
    seed: int = 0

    def read_options(self) -> dict:
        """What decides a file's tokens besides its bytes and the tokenizer (part of the cache key)."""
        # "seeded_by": caches cut before BPE-dropout was seeded by the file's contents (then by its path
        # and mtime) are not reused.
        dropout = ({"bpe_dropout": self.bpe_dropout, "seed": self.seed, "seeded_by": "contents"}
                   if self.bpe_dropout else {})
        return {**to_mapping(self.reading), **dropout}

    def segmenter(self, tokenizer) -> DropoutSegmenter | None:
        """The BPE-dropout segmenter (read once per build: it parses the whole tokenizer), or None."""
        return DropoutSegmenter(tokenizer, self.bpe_dropout) if self.bpe_dropout else None

    def files(self) -> list[Path]:
        files = expand_paths(self.paths)
        if not files:
            raise LangadaptError(f"no readable files in {', '.join(map(str, self.paths))}")
        return files

    def records(self, part: FilePart):
        return self.reading.iter_part_texts(part)


def batch_encoder(tokenizer):
    """`encode(texts) -> list of id lists` without special tokens: the fast tokenizer's own
    `encode_batch_fast` (ids only, no offsets; the same ids as `tokenizer(texts)`), else the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]


def packed_ids(ids: list[list[int]], eos: int) -> np.ndarray:
    """The sequences of `ids`, each followed by `eos`, as one uint32 array."""
    out = array.array("I")  # C's unsigned int: 4 bytes where numpy and torch run
    for seq in ids:
        out.extend(seq)
        out.append(eos)
    return np.frombuffer(out, dtype=np.uint32)


def record_batches(texts) -> Iterator[list[str]]:
    """`texts` in batches of BATCH_RECORDS records or BATCH_CHARS characters, whichever comes first."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == BATCH_RECORDS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _tokenize_part(tokenizer, corpus: CorpusSpec, part: FilePart, dest: Path, bar, segmenter=None,
                   threads: int = 1) -> dict:
    """Write `dest.bin`, `dest.hashes` and `dest.json` for one file part, each through a rename, tokenising
    on `threads` threads. With a `segmenter`, the text is cut with BPE-dropout seeded by the corpus seed
    and a hash of the part's bytes: not by its cache key, which holds the path and mtime, so the same text
    gives the same blocks wherever it lies (the embedded corpus lies inside the virtualenv of each clone)."""
    eos = tokenizer.eos_token_id
    encode = segmenter.seeded(f"{corpus.seed}/{part_digest(part)}") if segmenter else batch_encoder(tokenizer)
    tmp_bin = dest.with_name(f".{dest.name}.bin.tmp-{os.getpid()}")
    tmp_hash = dest.with_name(f".{dest.name}.hashes.tmp-{os.getpid()}")
    threads = 1 if segmenter else threads  # BPE-dropout draws from one generator, in record order
    records = tokens = chars = 0

    def write(batch: list[str], encoded) -> None:
        nonlocal records, tokens, chars
        flat = packed_ids(encoded.result(), eos)
        out.write(flat.tobytes())
        hashes.write(np.fromiter(map(record_hash, batch), dtype=np.uint64, count=len(batch)).tobytes())
        records, tokens, chars = records + len(batch), tokens + len(flat), chars + sum(map(len, batch))
        bar.update(sum(len(t.encode("utf-8")) + 1 for t in batch))

    try:
        # `threads` threads encode whole batches (the tokenizer releases the GIL) while this one reads the
        # next and packs, hashes and writes the oldest, in order.
        with open(tmp_bin, "wb") as out, open(tmp_hash, "wb") as hashes, ThreadPoolExecutor(threads) as encoder:
            try:
                pending: deque = deque()
                for batch in record_batches(corpus.records(part)):
                    pending.append((batch, encoder.submit(encode, batch)))
                    if len(pending) > threads:
                        write(*pending.popleft())
                while pending:
                    write(*pending.popleft())
            except LangadaptError as e:
                if "no text records" not in str(e):  # an empty file is fine: it adds no tokens
                    raise LangadaptError(f"{e}" if part.count == 1 else
                                         f"{e} [in {part}; line numbers count from its start]") from None
        meta = {"file": str(part.path), "records": records, "tokens": tokens, "characters": chars}
        if part.count > 1:
            meta["part"] = {"index": part.index, "count": part.count, "start": part.start, "stop": part.stop}
        # The .bin is renamed last: its presence means the part is complete.
        tmp_hash.replace(dest.with_suffix(".hashes"))
        dest.with_suffix(".json").write_text(json.dumps(meta) + "\n")
        tmp_bin.replace(dest.with_suffix(".bin"))
        return meta
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_hash.unlink(missing_ok=True)


@contextmanager
def _tokenizer_pool_off():
    """The fast tokenizer's own thread pool off while the cache is built (it reads TOKENIZERS_PARALLELISM at
    every call): whole batches on threads or processes of ours use the cores better, since its pool waits
    for a batch's last record and leaves the packing to one core (docs/benchmarks.md)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def encoder_threads() -> int:
    """Threads that tokenise in one process: one per usable core, at most ENCODER_THREADS (the thread that
    packs and writes their output keeps up with about that many; beyond, `cache_workers` processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, ENCODER_THREADS))


class _NoBar:
    def update(self, n):
        pass


_WORKER: dict = {}  # a cache worker process's tokenizer, corpus, segmenter and threads (set once by _start_worker)


def _start_worker(tokenizer, corpus: CorpusSpec, threads: int) -> None:
    _WORKER.update(tokenizer=tokenizer, corpus=corpus, segmenter=corpus.segmenter(tokenizer), threads=threads)


def _tokenize_parts(jobs: list[tuple[FilePart, Path]]) -> int:
    """Worker: tokenise a group of parts; return their size in bytes (for the progress bar)."""
    for part, dest in jobs:
        _tokenize_part(_WORKER["tokenizer"], _WORKER["corpus"], part, dest, _NoBar(), _WORKER["segmenter"],
                       _WORKER["threads"])
    return sum(part.stop - part.start for part, _ in jobs)


def build_token_cache(tokenizer, corpus: CorpusSpec, cache_root: str | os.PathLike | None = None,
                      progress: bool = True, workers: int = 1) -> list[Path]:
    """Tokenise every corpus file (or file part) not yet in the cache; return the `.bin` files in corpus order.

    A file bigger than `PART_BYTES` is cut into parts where its format allows (line-based text by byte
    ranges, Parquet by row groups: `corpus.read.file_parts`), each written whole or not at all, so an
    interrupted build resumes from the parts already written. With `workers` > 1, parts (small files in
    groups) are tokenised by that many processes (at most one per PART_BYTES of text to do), each given
    the tokenizer once; with 1, in this process. Either way the cores are shared out as threads that
    each tokenise whole batches (`encoder_threads`), with the tokenizer's own pool off.
    """
    if tokenizer.eos_token_id is None:
        raise LangadaptError("the tokenizer has no EOS token; packing needs one to separate documents")
    root = Path(cache_root) if cache_root else default_cache_root()
    folder = root / tokenizer_key(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    jobs, read_options = [], corpus.read_options()
    for path in corpus.files():
        key = file_key(path, read_options)
        whole = folder / key
        if whole.with_suffix(".bin").is_file():  # read whole (before parts, or small)
            jobs.append((FilePart(path, 0, 1, 0, path.stat().st_size), whole))
            continue
        for part in file_parts(path, PART_BYTES):
            jobs.append((part, whole if part.count == 1 else folder / f"{key}-{part.index:05d}of{part.count:05d}"))
    todo = [(part, dest) for part, dest in jobs if not dest.with_suffix(".bin").is_file()]
    if todo:
        total = sum(part.stop - part.start for part, _ in todo)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {len(todo)} file(s) or parts",
                  file=sys.stderr, disable=not progress) as bar, _tokenizer_pool_off():
            # A process costs seconds to start (torch, transformers, the tokenizer): below PART_BYTES of text
            # per process it is not worth it (7.6 MB in 695 files took 3.5x longer on 2 processes than on 1).
            workers = min(workers, -(-total // PART_BYTES))
            if workers <= 1 or len(todo) == 1:
                segmenter, threads = corpus.segmenter(tokenizer), encoder_threads()
                for part, dest in todo:
                    _tokenize_part(tokenizer, corpus, part, dest, bar, segmenter, threads)
            else:
                groups, group, size = [], [], 0  # small files together, so each task is worth a process's time
                for job in todo:
                    group.append(job)
                    size += job[0].stop - job[0].start
                    if size >= PART_BYTES // 8:
                        groups.append(group)
                        group, size = [], 0
                groups += [group] if group else []
                processes = min(workers, len(groups))
                with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker,
                                         initargs=(tokenizer, corpus, max(1, encoder_threads() // processes))) as pool:
                    for done in as_completed([pool.submit(_tokenize_parts, g) for g in groups]):
                        bar.update(done.result())
    return [dest.with_suffix(".bin") for _, dest in jobs]


class BlockDataset:
    """Fixed-size blocks over memory-mapped token files; item `i` is {input_ids, labels}."""

    def __init__(self, bin_files: list[Path], block_size: int):
        if block_size < 2:
            raise LangadaptError(f"block_size must be at least 2 tokens, got {block_size}")
        self.block_size = block_size
        self.files = [Path(f) for f in bin_files]
        self.arrays = [np.memmap(f, dtype=np.uint32, mode="r") if f.stat().st_size else np.zeros(0, np.uint32)
                       for f in self.files]
        lengths = [len(a) for a in self.arrays]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.total_tokens = int(self.offsets[-1])
        self.n_blocks = self.total_tokens // block_size
        self.tail_tokens = self.total_tokens - self.n_blocks * block_size

    def __len__(self) -> int:
        return self.n_blocks

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the concatenated corpus."""
        parts = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            a, base = self.arrays[i], self.offsets[i]
            take = min(stop, base + len(a)) - start
            if take > 0:
                parts.append(a[start - base:start - base + take])
                start += take
            i += 1
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n_blocks:
            raise IndexError(i)
        ids = torch.from_numpy(self.tokens(i * self.block_size, (i + 1) * self.block_size).astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}

    def record_hashes(self) -> np.ndarray:
        """Hashes of every training record (read from the cache)."""
        arrays = [np.fromfile(f.with_suffix(".hashes"), dtype=np.uint64) for f in self.files]
        return np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)

    def facts(self) -> dict:
        """Records, characters and tokens of the corpus, blocks and the tail left out."""
        metas = [json.loads(f.with_suffix(".json").read_text()) for f in self.files]
        return {"files": len(metas), "records": sum(m["records"] for m in metas),
                "characters": sum(m["characters"] for m in metas), "tokens": self.total_tokens,
                "block_size": self.block_size, "blocks": self.n_blocks, "tail_tokens": self.tail_tokens}


def load_blocks(tokenizer, corpus: CorpusSpec, block_size: int, cache_root=None, progress: bool = True,
                workers: int = 1) -> BlockDataset:
    """Build (or reuse) the token cache of `corpus` and return its blocks; error if not one block fits."""
    data = BlockDataset(build_token_cache(tokenizer, corpus, cache_root, progress=progress, workers=workers),
                        block_size)
    if data.n_blocks == 0:
        raise LangadaptError(f"the corpus {', '.join(map(str, corpus.paths))} has {data.total_tokens} tokens, "
                             f"fewer than one block of {block_size}; add text or lower block_size")
    return data


MIN_LEAK_CHARS = 32


def unseen_heldout(train: BlockDataset, heldout_files: list[Path], heldout_records: list[str]) -> tuple[list[str], int]:
    """The held-out records that do not appear in training, and how many did.

    A held-out file that is also a training file is an error. A record that also appears in
    training (boilerplate shared by documents of one genre, e.g. a budget note in every bill) is
    left out of the held-out score. Records shorter than `MIN_LEAK_CHARS` are kept: headings
    and short lines recur everywhere without leaking anything."""
    train_files = {Path(json.loads(f.with_suffix(".json").read_text())["file"]).resolve() for f in train.files}
    for f in heldout_files:
        if f.resolve() in train_files:
            raise LangadaptError(f"held-out file {f} is also in the training corpus; held-out text must stay "
                                 "out of training")
    if not heldout_records:
        return [], 0
    held = np.array([record_hash(r) for r in heldout_records], dtype=np.uint64)
    seen = np.isin(held, train.record_hashes())
    seen &= np.array([len(r.strip()) >= MIN_LEAK_CHARS for r in heldout_records])
    return [r for r, s in zip(heldout_records, seen) if not s], int(seen.sum())
