"""Corpora as users have them: one set of records written as JSON Lines, compressed JSON Lines (.gz, .zst,
.xz, .bz2), Parquet (several row groups), a `datasets` save_to_disk folder (two shards), a DatasetDict and
an Arrow IPC file reads as the same records, gives the same `corpus stats` and the same cache bytes; bad
files get one-line errors naming the file and where; a missing extra names itself."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")
datasets = pytest.importorskip("datasets")

from langadapt.cli import main  # noqa: E402
from langadapt.corpus import ReadingOptions, ReadStats, iter_records  # noqa: E402
from langadapt.corpus.stats import corpus_stats  # noqa: E402
from langadapt.errors import LangadaptError  # noqa: E402

ROWS = [
    {"text": "대한민국은 민주공화국이다.", "id": 1},
    {"text": "བཀྲ་ཤིས་བདེ་ལེགས། ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།", "id": 2},
    {"text": "   ", "id": 3},                                      # blank after stripping: skipped everywhere
    {"text": "你好，世界！今天天气很好。", "id": 4},
    {"text": None, "id": 5},                                     # null: skipped
    {"text": "모든 권력은 국민으로부터 나온다.\n둘째 줄.", "id": 6},   # a newline inside a record
] + [{"text": f"기록 {i}: 한국어 문장입니다. ཀ་ཁ་ག {i}", "id": 10 + i} for i in range(40)]


def _jsonl_bytes() -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode("utf-8")


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict:
    """{name: path} of the same records in every format."""
    d = tmp_path_factory.mktemp("formats")
    data = _jsonl_bytes()
    out = {"jsonl": d / "c.jsonl"}
    out["jsonl"].write_bytes(data)
    out["jsonl.gz"] = d / "c.jsonl.gz"
    out["jsonl.gz"].write_bytes(gzip.compress(data))
    out["jsonl.zst"] = d / "c.jsonl.zst"
    out["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(data))
    out["jsonl.xz"] = d / "c.jsonl.xz"
    out["jsonl.xz"].write_bytes(lzma.compress(data))
    out["jsonl.bz2"] = d / "c.jsonl.bz2"
    out["jsonl.bz2"].write_bytes(bz2.compress(data))
    table = pa.Table.from_pylist(ROWS)
    out["parquet"] = d / "c.parquet"
    pq.write_table(table, out["parquet"], row_group_size=7)  # 7 row groups
    out["arrow-file"] = d / "c.arrow"
    with pa.ipc.new_file(out["arrow-file"], table.schema) as w:
        for batch in table.to_batches(max_chunksize=9):
            w.write_batch(batch)
    out["saved"] = d / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(out["saved"], num_shards=2)
    out["dict"] = d / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(out["dict"])
    return out


def _texts(path, **kw):
    return [r.text for r in iter_records([path], **kw)]


def test_every_format_reads_the_same_records(formats):
    expected = _texts(formats["jsonl"])
    assert len(expected) == len(ROWS) - 2 and "둘째 줄" in expected[3]
    for name, path in formats.items():
        assert _texts(path) == expected, name
    rows = [r.line for r in iter_records([formats["parquet"]])]
    assert rows[:4] == [1, 2, 4, 6]  # a table's record says its row


def test_corpus_stats_are_the_same_for_every_format(formats, tmp_path):
    reading = ReadingOptions(lang="ko")
    expected = corpus_stats([str(formats["jsonl"])], reading)
    for name, path in formats.items():
        got = corpus_stats([str(path)], reading)
        for key in ("records", "characters", "units", "duplicate_records"):
            assert got[key] == expected[key], (name, key)
    assert main(["corpus", "stats", str(formats["parquet"]), "--lang", "ko", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["records"] == expected["records"]


def test_the_cache_bytes_are_the_same_for_every_format(formats, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from langadapt.train.data import CorpusSpec, build_token_cache

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    blobs = {}
    for name, path in formats.items():
        bins = build_token_cache(tok, CorpusSpec([str(path)]), tmp_path / "cache", progress=False)
        blobs[name] = b"".join(b.read_bytes() for b in bins)
    assert {name: len(b) for name, b in blobs.items() if b != blobs["jsonl"]} == {}
    assert len(blobs["jsonl"]) > 4 * 100


def test_field_and_column_choose_the_table_column(formats, tmp_path):
    table = pa.table({"body": ["안녕하세요", "세계"], "title": ["제목", "둘"]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert _texts(path, field="body") == ["안녕하세요", "세계"]
    assert _texts(path, column="title") == ["제목", "둘"] == _texts(path, column="1")
    with pytest.raises(LangadaptError, match=r"t\.parquet: no column 'text' \(its columns: 'body', 'title'\)"):
        _texts(path)
    ints = tmp_path / "i.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    with pytest.raises(LangadaptError, match=r"i\.parquet: row 1: column 'text' holds int, expected text"):
        _texts(ints)


def test_bad_files_get_one_line_naming_the_file_and_where(formats, tmp_path):
    zst = formats["jsonl.zst"].read_bytes()
    for name, data, message in [
            ("cut.jsonl.zst", zst[:len(zst) // 2], r"not a valid zstd file .* after [\d,]+ decompressed bytes"),
            ("g.jsonl.xz", b"not xz at all", "not a valid xz file"),
            ("b.parquet", b"PAR1 this is not parquet", "not a valid Parquet file"),
            ("a.arrow", b"ARROW1 but not really", "not a valid Arrow file")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LangadaptError, match=re.escape(name) + ": " + message):
            _texts(tmp_path / name)
    raw = bytearray(formats["parquet"].read_bytes())
    meta = pq.ParquetFile(formats["parquet"]).metadata
    chunk = meta.row_group(3).column(0)
    start = chunk.data_page_offset
    raw[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size  # one row group's pages
    damaged = tmp_path / "d.parquet"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(LangadaptError, match=r"d\.parquet: row group 3 \(of 7\) cannot be read"):
        _texts(damaged)


def test_bad_bytes_in_compressed_text_are_replaced_on_request(tmp_path):
    path = tmp_path / "bad.txt.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("좋은 줄\n".encode() + b"bad \xff byte\n"))
    with pytest.raises(LangadaptError, match=r"bad\.txt\.zst: invalid UTF-8 at byte offset 15 \(line 2\)"):
        _texts(path)
    stats = ReadStats()
    assert _texts(path, on_bad_bytes="replace", stats=stats) == ["좋은 줄", "bad \ufffd byte"]
    assert stats.bad_bytes_replaced == 1


def test_a_missing_extra_names_itself(formats, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    with pytest.raises(LangadaptError, match=r"c\.jsonl\.zst: reading this file needs zstandard: "
                                             r"pip install 'langadapt\[corpus\]'"):
        _texts(formats["jsonl.zst"])


def test_a_folder_of_parquet_files_is_walked_in_order(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"text": [f"파일 {i} 줄 {j}" for j in range(2)]}), tmp_path / f"part-{i:05d}.parquet")
    (tmp_path / "README.md").write_text("not read")
    assert _texts(tmp_path) == [f"파일 {i} 줄 {j}" for i in range(3) for j in range(2)]


@pytest.mark.parametrize("name", ["jsonl", "parquet"])
def test_a_big_file_is_cut_into_parts_that_give_the_same_cache(formats, name, tiny_tokenizer_dir, tmp_path,
                                                                monkeypatch):
    """Parts (byte ranges starting mid-line; Parquet row groups) give the bytes of the whole file, at 1 and 2
    workers, and a build interrupted after some parts resumes with only the missing ones."""
    from transformers import AutoTokenizer

    from langadapt.corpus.read import file_parts
    from langadapt.train import data

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    whole = b"".join(b.read_bytes() for b in data.build_token_cache(tok, data.CorpusSpec([str(formats[name])]),
                                                                    tmp_path / "whole", progress=False))
    monkeypatch.setattr(data, "PART_BYTES", 600)
    parts = file_parts(formats[name], 600)
    assert len(parts) >= 3
    for workers in (1, 2):
        bins = data.build_token_cache(tok, data.CorpusSpec([str(formats[name])]), tmp_path / f"w{workers}",
                                      progress=False, workers=workers)
        assert len(bins) == len(parts) and b"".join(b.read_bytes() for b in bins) == whole
    bins[1].unlink()  # as if the build had stopped before this part
    before = {b: b.stat().st_mtime_ns for b in bins if b.exists()}
    again = data.build_token_cache(tok, data.CorpusSpec([str(formats[name])]), tmp_path / "w2", progress=False)
    assert again == bins and b"".join(b.read_bytes() for b in again) == whole
    assert all(b.stat().st_mtime_ns == t for b, t in before.items())  # the others were not rewritten


def test_an_error_in_a_part_names_the_part(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    from langadapt.train import data

    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"text": f"줄 {i} " * 5}, ensure_ascii=False) + "\n" for i in range(60))
                    + "{not json}\n", encoding="utf-8")
    monkeypatch.setattr(data, "PART_BYTES", 1000)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with pytest.raises(LangadaptError, match=r"big\.jsonl:\d+: invalid JSON .* \[in .*big\.jsonl \(part \d+ of \d+: "
                                             r"bytes [\d,]+-[\d,]+\); line numbers count from its start\]"):
        data.build_token_cache(tok, data.CorpusSpec([str(path)]), tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("*.tmp-*"))  # nothing half-written is left
