"""Streaming corpus reading, cleaning, stats and the `corpus stats` command."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import unicodedata

import pytest

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.corpus import ReadingOptions, ReadStats, expand_paths, iter_records, iter_texts
from langadapt.corpus.clean import clean_kangyur
from langadapt.corpus.embedded import embedded_corpus_paths
from langadapt.corpus.stats import corpus_stats
from langadapt.errors import LangadaptError
from langadapt.lang import get_profile

BO = get_profile("bo")


def read(paths, **kw):
    stats = ReadStats()
    return list(iter_texts(paths, stats=stats, **kw)), stats


# ----------------------------------------------------------------------------- formats

def test_plain_text_bom_crlf_blank_lines_and_normalisation(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffone  \r\n\r\n   \ntwo e\u0301\n".encode("utf-8"))
    texts, stats = read(f)
    assert texts == ["one", "two \u00e9"]
    assert (stats.files, stats.records, stats.characters) == (1, 2, 8)


def test_jsonl_field_and_missing_field_names_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a b", "id": 1}\n\n"plain string"\n{"body": "x", "id": 3}\n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"d\.jsonl:line 4: record has no field 'text' \(its fields: 'body', 'id'\)"):
        read(f)
    g = tmp_path / "e.jsonl"
    g.write_text('{"body": "x"}\n{"body": null}\n{"body": "y"}\n', encoding="utf-8")
    assert read(g, field="body")[0] == ["x", "y"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"bad\.jsonl:2: invalid JSON"):
        read(bad)


def test_json_list_is_parsed_incrementally(tmp_path):
    f = tmp_path / "r.json"
    f.write_text('[\n  {"review": "좋아요", "rating": "10"},\n  {"review": "별로\\n예요"}, {"review": ""}\n]\n',
                 encoding="utf-8")
    assert read(f, field="review")[0] == ["좋아요", "별로\n예요"]
    # JSON Lines saved as .json (e.g. pCLUE, BELLE seed tasks) is read line by line
    (tmp_path / "l.json").write_text('\n{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert read(tmp_path / "l.json")[0] == ["one", "two"]
    (tmp_path / "o.json").write_text('{\n  "text": "one pretty object"\n}\n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"o\.json:1: invalid JSON .*a JSON list of records or one JSON object per line"):
        read(tmp_path / "o.json")
    (tmp_path / "n.json").write_text('"just a string"', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"n\.json:1: expected a JSON list"):
        read(tmp_path / "n.json")
    (tmp_path / "c.json").write_text('[{"text": "a"},\n{"text": "b"', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"c\.json: invalid JSON list near line 2"):
        read(tmp_path / "c.json")


def test_conllu_reads_only_text_comments(tmp_path):
    f = tmp_path / "s.conllu"
    f.write_text("# sent_id = 1\n# text = ངའི་མིང་ལ།\n# text_en = my name\n1\tངའི\t_\n\n"
                 "# text = བཀྲ་ཤིས།\n1\tབཀྲ\t_\n", encoding="utf-8")
    assert read(f, profile=BO)[0] == ["ངའི་མིང་ལ།", "བཀྲ་ཤིས།"]


def test_csv_by_name_index_and_default_longest_column(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('label,review\n1,"good, really"\n0,"two\nlines"\n', encoding="utf-8")
    assert read(f, column="review")[0] == ["good, really", "two\nlines"]
    assert read(f, column=0)[0] == ["1", "0"]
    texts, stats = read(f)
    assert texts == ["good, really", "two\nlines"] and stats.header_rows == 1
    with pytest.raises(LangadaptError, match=r"t\.csv:1: no column 'body' in the header \['label', 'review'\]"):
        read(f, column="body")


def test_tsv_without_header_and_without_quote_processing(tmp_path):
    long = "采用修正的参数" * 10  # a first row with a long cell is data, not a header
    f = tmp_path / "d.tsv"
    f.write_text(f"p\t{long}\tt1\np\t\"引号\"开头\tt2\n", encoding="utf-8")
    texts, stats = read(f, column="1")
    assert texts == [long, '"引号"开头'] and stats.header_rows == 0
    with pytest.raises(LangadaptError, match=r"d\.tsv:1: row has 3 cells, column 5"):
        read(f, column=5)


def test_gzip_of_each_format(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("one\ntwo\n".encode()))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "three"}\n'))
    (tmp_path / "c.tsv.gz").write_bytes(gzip.compress("id\ttext\n1\tfour\n".encode()))
    texts, stats = read(tmp_path, column="text")
    assert texts == ["one", "two", "three", "four"] and stats.files == 3
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(LangadaptError, match=r"bad\.txt\.gz: not a valid gzip file"):
        read(tmp_path / "bad.txt.gz")


def test_directory_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "2.txt").write_text("b2\n")
    (tmp_path / "b" / "10.txt").write_text("b10\n")
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / ".hidden.txt").write_text("hidden\n")
    (tmp_path / ".git" / "x.txt").write_text("git\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    files = expand_paths([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a.txt", "b/10.txt", "b/2.txt"]
    assert read(tmp_path)[0] == ["a", "b10", "b2"]


def test_glob_and_duplicates(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name + "\n")
    files = expand_paths([str(tmp_path / "x*.txt"), tmp_path / "x1.txt"])
    assert [p.name for p in files] == ["x1.txt", "x2.txt"]
    with pytest.raises(LangadaptError, match=r"z\*\.txt: no file matches this pattern"):
        expand_paths([str(tmp_path / "z*.txt")])


# ----------------------------------------------------------------------------- errors

def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    f = tmp_path / "bad.txt"
    # BOM (3 bytes) + "ok\n" (3) + "ཀ" (3 bytes) + invalid 0xff at file offset 9
    f.write_bytes(b"\xef\xbb\xbfok\n" + "ཀ".encode() + b"\xff rest\n")
    with pytest.raises(LangadaptError) as e:
        read(f)
    assert str(f) in str(e.value)
    assert "invalid UTF-8 at byte offset 9 (line 2)" in str(e.value)


def test_invalid_utf8_offset_in_gzip_is_of_the_decompressed_stream(tmp_path):
    f = tmp_path / "bad.txt.gz"
    f.write_bytes(gzip.compress(b"abc\ndef\xc3(\n"))
    with pytest.raises(LangadaptError, match=r"bad\.txt\.gz: invalid UTF-8 at byte offset 7 \(line 2\)"):
        read(f)


def test_replace_mode_counts_every_bad_byte(tmp_path):
    f = tmp_path / "bad.txt"
    # 0xff 0xfe: two invalid bytes; 0xe0 0xbd: a truncated 3-byte sequence (two bytes); 0x80: one
    f.write_bytes(b"a\xff\xfeb\n" + "ཀ".encode()[:2] + b"\n\x80c\n")
    texts, stats = read(f, on_bad_bytes="replace")
    assert texts == ["a\ufffd\ufffdb", "\ufffd\ufffd", "\ufffdc"]
    assert stats.bad_bytes_replaced == 5
    assert stats.bad_bytes_by_file == {str(f): 5}


def test_missing_file_empty_corpus_and_directory_without_text(tmp_path):
    with pytest.raises(LangadaptError, match=r"nope\.txt: no such file or directory"):
        read(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(LangadaptError, match=r"no text records in .*empty\.txt \(1 file\(s\) read, all empty\)"):
        read(tmp_path / "empty.txt")
    d = tmp_path / "d"
    d.mkdir()
    (d / "README.md").write_text("# hi\n")
    with pytest.raises(LangadaptError, match=r"d: directory has no text files .* it has 1 other file\(s\) \(\.md\)"):
        read(d)


def test_reading_is_streamed(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first\nsecond\n\xff\n")
    texts = iter_texts(f)
    assert next(texts) == "first" and next(texts) == "second"  # the bad line is not read yet
    with pytest.raises(LangadaptError, match="byte offset 13"):
        next(texts)


def test_records_carry_file_and_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x\n\ny\n")
    assert [(r.path.name, r.line, r.text) for r in iter_records(f)] == [("a.txt", 1, "x"), ("a.txt", 3, "y")]


# ----------------------------------------------------------------------------- real data

def test_tibet_times_counts(shared_data):
    root = shared_data / "bo/news-tibettimes-2016"
    records = chars = 0
    for name in sorted(os.listdir(root)):
        for line in (root / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                records += 1
                # the Tibetan fixes beyond NFC never change the length of a stripped line
                chars += len(unicodedata.normalize("NFC", line).strip())
    texts, stats = read(root, profile=BO)
    assert (stats.files, stats.records, stats.characters) == (695, records, chars)
    assert (records, chars) == (1429, 2_573_915)
    assert sum(map(len, texts)) == chars


def test_corpus_stats_on_tibet_times(shared_data):
    s = corpus_stats([shared_data / "bo/news-tibettimes-2016"], ReadingOptions(lang="bo"))
    assert (s["files"], s["records"], s["characters"]) == (695, 1429, 2_573_915)
    assert s["units"] == 677_390 and s["unit_name"] == "syllables+shads"
    assert s["duplicate_records"] == 9
    assert s["other_script_records"] == 0 and s["bad_bytes_replaced"] == 0
    assert 0.98 < s["target_script_share"] < 1.0


def test_kangyur_markup_is_stripped_and_corrections_kept(shared_data):
    path = shared_data / "bo/classical-kangyur/001_འདུལ་བ།_ཀ.txt"
    raw_lines = path.read_text(encoding="utf-8").split("\n")
    assert "(འཆིའོ,མཆིའོ)" in raw_lines[764] and "{བཅྭ་,བཅོ་}" in raw_lines[49]
    records = {r.line: r.text for r in iter_records(path, BO, clean="kangyur")}
    # every line except the folio-only ones ("[1a]") and the empty "[1a.1]" is a record
    expected = [i + 1 for i, line in enumerate(raw_lines) if re.sub(r"^\[\d+[ab](\.\d+)?\]", "", line).strip()]
    assert sorted(records) == expected and len(expected) == 4958 - 621 - 1
    assert all(not re.search(r"[\[\]{}()]", t) for t in records.values())
    assert records[765].startswith("འཚོའི་བར་དུ་རྐང་གཉིས་རྣམས་ཀྱི་མཆོག་སངས་རྒྱས་ལ་སྐྱབས་སུ་མཆིའོ། །འདོད་ཆགས་")
    assert "སྐྱབས་སུ་འཆིའོ" not in records[765]
    assert "བཟོ་སྦྱང་བ་བཅོ་བརྒྱད་པོ" in records[50]
    assert records[4] == "༄༅༅། །རྒྱ་གར་སྐད་དུ། བི་ན་ཡ་བསྟུ། བོད་སྐད་དུ། འདུལ་བ་གཞི། བམ་པོ་དང་པོ། དཀོན་མཆོག་གསུམ་ལ་ཕྱག་འཚལ་ལོ། །གང་གིས་འཆིང་"


def test_clean_kangyur_patterns():
    assert clean_kangyur("[1b.1]{D1}{D1-1}༄༅། །ཀ་(ཁ,ག)་{བཅྭ་,བཅོ་}ང") == "༄༅། །ཀ་ག་བཅོ་ང"
    assert clean_kangyur("[12a]") == ""


def test_embedded_corpus_is_konlpy_korean_text():
    if importlib.util.find_spec("konlpy") is None:
        pytest.skip("konlpy not installed")
    paths = embedded_corpus_paths()
    assert paths[0].parts[-3:] == ("corpus", "kolaw", "constitution.txt")
    assert len(paths) == 11 and all(p.parent.name == "kobill" for p in paths[1:])
    texts, stats = read(paths, profile=get_profile("ko"))
    assert texts[0] == "대한민국헌법"
    assert stats.records == 2480


def test_embedded_corpus_without_konlpy_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(LangadaptError, match=r"pip install --no-deps konlpy"):
        embedded_corpus_paths()


# ----------------------------------------------------------------------------- CLI

def test_cli_stats_prints_table_and_json(tmp_path, capsys):
    f = tmp_path / "bo.txt"
    f.write_text(f"{TIBETAN_SEED_SENTENCE}\n{TIBETAN_SEED_SENTENCE}\nhello world\n", encoding="utf-8")
    out = tmp_path / "s.json"
    assert main(["corpus", "stats", str(f), "--lang", "bo", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^records\s+3$", printed, re.M)
    assert re.search(r"^syllables\+shads\s+34$", printed, re.M)
    assert re.search(r"^duplicate records\s+1 \(33\.3%\)$", printed, re.M)
    assert "warning: 33.3% of records are mostly not in the bo script (e.g. in " in printed
    s = json.loads(out.read_text(encoding="utf-8"))
    assert (s["records"], s["characters"], s["units"], s["other_script_records"]) == (3, 54 * 2 + 11, 16 * 2 + 2, 1)


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["corpus", "stats", str(tmp_path / "missing.txt"), "--lang", "bo"]) == 2
    err = capsys.readouterr().err
    assert err == f"langadapt: error: {tmp_path / 'missing.txt'}: no such file or directory\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    assert main(["corpus", "stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "byte offset 3" in err
    assert main(["corpus", "stats", str(bad), "--on-bad-bytes", "replace"]) == 0
    assert re.search(r"^bad bytes replaced\s+1$", capsys.readouterr().out, re.M)
    assert main(["corpus", "stats", str(bad), "--json", str(tmp_path / "no" / "s.json")]) == 2
    assert capsys.readouterr().err.startswith("langadapt: error: --json ")


def test_cli_stats_with_tokenizer(shared_data, tmp_path, capsys):
    pytest.importorskip("langadapt.tokenizer.load")
    f = tmp_path / "seed.txt"
    f.write_text(TIBETAN_SEED_SENTENCE + "\n", encoding="utf-8")
    out = tmp_path / "s.json"
    spm = shared_data / "tokenizers/llama2/tokenizer.model"
    assert main(["corpus", "stats", str(f), "--lang", "bo", "--tokenizer", str(spm), "--json", str(out)]) == 0
    s = json.loads(out.read_text(encoding="utf-8"))
    # SOURCES.md: Llama-2 encodes the seed sentence into 81 tokens
    assert (s["tokens"], s["units"], s["characters"]) == (81, 16, 54)
    assert s["tokens_per_unit"] == pytest.approx(81 / 16)
    assert re.search(r"^tokens per unit \(syllables\+shads\)\s+5\.062$", capsys.readouterr().out, re.M)
