"""The packed-block cache: exact packing, reuse, resumability, held-out checks, bad input."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

from langadapt.corpus import ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.train.data import (BlockDataset, CorpusSpec, build_token_cache, file_key,
                                  load_blocks, tokenizer_key)
from train_fixtures import make_corpus


@pytest.fixture()
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _expected_stream(tok, records: list[str]) -> list[int]:
    out = []
    for r in records:
        out += tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def test_blocks_are_the_eos_joined_stream_cut_in_order(tok, tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("The quick brown fox.\n\n  \nA language model predicts the next token.\n", encoding="utf-8")
    b = tmp_path / "b.jsonl"
    b.write_text('{"text": "모든 국민은 법 앞에 평등하다."}\n{"text": "Paris is the capital."}\n', encoding="utf-8")
    data = load_blocks(tok, CorpusSpec([a, b]), block_size=7, cache_root=tmp_path / "cache", progress=False)
    stream = _expected_stream(tok, ["The quick brown fox.", "A language model predicts the next token.",
                                    "모든 국민은 법 앞에 평등하다.", "Paris is the capital."])
    assert data.total_tokens == len(stream)
    assert len(data) == len(stream) // 7 and data.tail_tokens == len(stream) % 7
    got = [t for i in range(len(data)) for t in data[i]["input_ids"].tolist()]
    assert got == stream[:len(data) * 7]  # remainders carry over, across documents and files
    assert data[0]["labels"].tolist() == data[0]["input_ids"].tolist()
    assert stream.count(tok.eos_token_id) == 4
    facts = data.facts()
    assert (facts["files"], facts["records"], facts["blocks"]) == (2, 4, len(stream) // 7)
    with pytest.raises(IndexError):
        data[len(data)]


def test_second_run_reuses_the_cache_and_block_size_is_a_view(tok, tmp_path):
    corpus = CorpusSpec([make_corpus(tmp_path / "c.txt", 300)])
    start = time.perf_counter()
    first = build_token_cache(tok, corpus, tmp_path / "cache", progress=False)
    build_s = time.perf_counter() - start
    mtime = first[0].stat().st_mtime_ns
    start = time.perf_counter()
    again = build_token_cache(tok, corpus, tmp_path / "cache", progress=False)
    assert again == first and first[0].stat().st_mtime_ns == mtime
    assert time.perf_counter() - start < max(0.5, build_s)
    b64, b32 = BlockDataset(first, 64), BlockDataset(first, 32)
    assert b64[3]["input_ids"].tolist() == b32[6]["input_ids"].tolist() + b32[7]["input_ids"].tolist()


def test_interrupted_build_resumes_with_the_missing_files_only(tok, tmp_path):
    f1, f2 = make_corpus(tmp_path / "1.txt", 50, seed=1), make_corpus(tmp_path / "2.txt", 50, seed=2)
    corpus = CorpusSpec([f1, f2])
    bins = build_token_cache(tok, corpus, tmp_path / "cache", progress=False)
    whole = BlockDataset(bins, 16)[5]["input_ids"].tolist()
    # An interruption while writing file 2: its .bin never got renamed, a temp file is left.
    bins[1].rename(bins[1].with_name(f".{bins[1].stem}.bin.tmp-999"))
    kept_mtime = bins[0].stat().st_mtime_ns
    again = build_token_cache(tok, corpus, tmp_path / "cache", progress=False)
    assert again == bins and bins[1].is_file() and bins[0].stat().st_mtime_ns == kept_mtime
    assert BlockDataset(again, 16)[5]["input_ids"].tolist() == whole


def test_cache_keys_follow_tokenizer_file_and_read_options(tok, tiny_tokenizer_dir, tmp_path):
    f = make_corpus(tmp_path / "c.txt", 5)
    key = file_key(f, CorpusSpec([f]).read_options())
    assert key != file_key(f, CorpusSpec([f], ReadingOptions(lang="ko")).read_options())
    os.utime(f, ns=(1, 1))
    assert key != file_key(f, CorpusSpec([f]).read_options())
    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tokenizer_key(other) == tokenizer_key(tok)
    other.add_tokens(["대한민국"])
    assert tokenizer_key(other) != tokenizer_key(tok)


def test_corpus_smaller_than_one_block_is_an_error(tok, tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("The quick brown fox.\n", encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"fewer than one block of 512"):
        load_blocks(tok, CorpusSpec([f]), 512, tmp_path / "cache", progress=False)


def test_heldout_records_seen_in_training_are_left_out(tok, tmp_path):
    from langadapt.train.data import unseen_heldout

    f = make_corpus(tmp_path / "train.txt", 40)
    data = load_blocks(tok, CorpusSpec([f]), 16, tmp_path / "cache", progress=False)
    with pytest.raises(LangadaptError, match="also in the training corpus"):
        unseen_heldout(data, [f], [])
    line = f.read_text(encoding="utf-8").splitlines()[7]
    unseen = "an unseen sentence, long enough to be compared"
    assert unseen_heldout(data, [tmp_path / "held.txt"], [unseen, line]) == ([unseen], 1)
    # a short line that recurs in every document of a genre (a heading) is not a leak: kept
    g = tmp_path / "bills.txt"
    g.write_text("의안\n" + f.read_text(encoding="utf-8"), encoding="utf-8")
    bills = load_blocks(tok, CorpusSpec([g]), 16, tmp_path / "cache", progress=False)
    assert unseen_heldout(bills, [tmp_path / "held.txt"], ["의안", unseen]) == (["의안", unseen], 0)


def test_memory_stays_flat_tokens_are_memory_mapped(tok, tmp_path):
    data = load_blocks(tok, CorpusSpec([make_corpus(tmp_path / "c.txt", 100)]), 16, tmp_path / "cache",
                       progress=False)
    assert all(isinstance(a, np.memmap) for a in data.arrays)


def test_parallel_workers_write_the_same_cache(tok, tmp_path, monkeypatch):
    from langadapt.train import data

    files = [make_corpus(tmp_path / f"{i}.txt", 20, seed=i) for i in range(4)]
    one = build_token_cache(tok, CorpusSpec(files), tmp_path / "c1", progress=False, workers=1)
    monkeypatch.setattr(data, "PART_BYTES", 256)  # so little text is worth two processes
    two = build_token_cache(tok, CorpusSpec(files), tmp_path / "c2", progress=False, workers=2)
    assert len(two) > len(one) == 4  # the files were cut into parts

    def joined(bins, suffix):
        return b"".join(b.with_suffix(suffix).read_bytes() for b in bins)

    assert joined(one, ".bin") == joined(two, ".bin") and joined(one, ".hashes") == joined(two, ".hashes")


@pytest.mark.parametrize("parallelism", [None, "true"])
def test_encoder_threads_write_the_same_cache_and_leave_the_tokenizer_as_it_was(tok, tmp_path, monkeypatch,
                                                                                parallelism):
    from langadapt.train import data

    if parallelism is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", parallelism)
    monkeypatch.setattr(data, "BATCH_RECORDS", 7)  # many batches in flight at once
    files = [make_corpus(tmp_path / f"{i}.txt", 60, seed=i) for i in range(2)]
    built = {}
    for threads in (1, 3):
        monkeypatch.setattr(data, "encoder_threads", lambda threads=threads: threads)
        bins = build_token_cache(tok, CorpusSpec(files), tmp_path / f"t{threads}", progress=False)
        built[threads] = [(b.read_bytes(), b.with_suffix(".hashes").read_bytes()) for b in bins]
        assert os.environ.get("TOKENIZERS_PARALLELISM") == parallelism  # its own pool is back as it was
    assert built[1] == built[3]
    stream = np.frombuffer(built[3][0][0], dtype=np.uint32).tolist()
    assert stream == _expected_stream(tok, [line for line in files[0].read_text(encoding="utf-8").splitlines()
                                            if line.strip()])


def test_bpe_dropout_blocks_are_seeded_longer_cuts_of_the_same_text(tok, tmp_path):
    corpus = make_corpus(tmp_path / "c.txt", 40)
    plain = BlockDataset(build_token_cache(tok, CorpusSpec([corpus]), tmp_path / "cache", progress=False), 16)
    spec = CorpusSpec([corpus], bpe_dropout=0.2, seed=7)
    cut = BlockDataset(build_token_cache(tok, spec, tmp_path / "cache", progress=False), 16)
    again = BlockDataset(build_token_cache(tok, spec, tmp_path / "other-cache", progress=False), 16)
    reseeded = BlockDataset(build_token_cache(tok, CorpusSpec([corpus], bpe_dropout=0.2, seed=8), tmp_path / "cache",
                                              progress=False), 16)

    def text(data):
        return tok.decode(data.tokens(0, data.total_tokens).tolist())

    assert text(cut) == text(plain)  # the same documents, EOS-joined
    assert cut.total_tokens > 1.1 * plain.total_tokens
    assert cut.tokens(0, cut.total_tokens).tolist() == again.tokens(0, again.total_tokens).tolist()
    assert reseeded.tokens(0, 200).tolist() != cut.tokens(0, 200).tolist()


def test_bpe_dropout_blocks_do_not_depend_on_where_the_file_lies(tok, tmp_path):
    # The embedded corpus lies in each clone's virtualenv, with the install's mtime: the same text at
    # another path and time must be cut the same way (it was not when the seed was the file's cache key).
    (tmp_path / "a").mkdir()
    corpus = make_corpus(tmp_path / "a" / "c.txt", 40)
    moved = tmp_path / "elsewhere" / "deeper" / "c.txt"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(corpus.read_bytes())
    os.utime(moved, ns=(corpus.stat().st_mtime_ns + 10**9, corpus.stat().st_mtime_ns + 10**9))
    assert file_key(moved, {}) != file_key(corpus, {})

    def ids(path, cache):
        data = BlockDataset(build_token_cache(tok, CorpusSpec([path], bpe_dropout=0.3, seed=5), tmp_path / cache,
                                              progress=False), 16)
        return data.tokens(0, data.total_tokens).tolist()

    here = ids(corpus, "cache")
    plain = BlockDataset(build_token_cache(tok, CorpusSpec([corpus]), tmp_path / "cache", progress=False), 16)
    assert len(here) > 1.1 * plain.total_tokens  # dropout did cut the text
    assert ids(moved, "cache") == here
    assert ids(moved, "other-cache") == here
