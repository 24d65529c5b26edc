"""`langadapt tokenizer report`: tokens per unit, byte fallback and vocabulary use, per tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.tokenizer.report import tokenizer_names

CORPUS_KEYS = {"paths", "records", "chars", "units", "unit_name"}
TOKENIZER_KEYS = {"name", "vocab_size", "tokens", "chars", "units", "tokens_per_char", "tokens_per_unit",
                  "byte_fallback_share", "unk_share", "bytes_per_token", "vocab_used_share", "tokens_per_second"}


@pytest.fixture(scope="module")
def bytes_tok_dir(tmp_path_factory) -> Path:
    """A byte-level BPE with no merges: every UTF-8 byte is one token, so counts are checkable by hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    out = tmp_path_factory.mktemp("bytes") / "bytes-only"
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(out))
    return out


def test_exact_counts_on_a_small_text(bytes_tok_dir, tmp_path, capsys):
    # "aé 你": 4 chars, 2 words, 7 UTF-8 bytes = 7 tokens (a, é as 2 bytes, space, 你 as 3 bytes);
    # the 5 tokens holding part of é or 你 are not whole characters: byte fallback 5/7.
    out_json = tmp_path / "r.json"
    assert main(["tokenizer", "report", "--tokenizer", str(bytes_tok_dir), "--text", "aé 你", "--lang", "en",
                 "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())
    c = r["corpus"]
    assert (c["paths"], c["records"], c["chars"], c["units"], c["unit_name"]) == ([], 1, 4, 2, "words")
    t = r["tokenizers"][0]
    assert (t["name"], t["vocab_size"], t["tokens"], t["chars"], t["units"]) == ("bytes-only", 256, 7, 4, 2)
    assert (t["tokens_per_char"], t["tokens_per_unit"], t["bytes_per_token"]) == (1.75, 3.5, 1.0)
    assert (t["byte_fallback_tokens"], t["byte_fallback_share"], t["unk_share"]) == (5, 0.7143, 0.0)
    assert t["vocab_used"] == 7 and t["pieces"] == ["a", "<0xC3>", "<0xA9>", "▁", "<0xE4>", "<0xBD>", "<0xA0>"]
    out = capsys.readouterr().out
    assert "| bytes-only | 256 | 7 | 4 | 2 | 1.750 | 3.500 | 1.000 | 71.4% | 0.0% | 2.7% |" in out
    assert "| bytes-only | 7 | a <0xC3> <0xA9> ▁ <0xE4> <0xBD> <0xA0> |" in out
    assert "tokens/s" in out


def test_corpus_json_schema_plot_and_max_chars(bytes_tok_dir, tmp_path):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("你好，世界\nHello world\n\n今天天气很好\n", encoding="utf-8")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["tokenizer", "report", "--tokenizer", str(bytes_tok_dir), "--tokenizer", str(bytes_tok_dir),
                 "--name", "first", "--corpus", str(corpus), "--lang", "zh", "--json", str(out_json),
                 "--plot", str(out_png)]) == 0
    r = json.loads(out_json.read_text())
    assert set(r) == {"corpus", "tokenizers"}
    assert CORPUS_KEYS <= set(r["corpus"]) and TOKENIZER_KEYS <= set(r["tokenizers"][0])
    # 3 records, 5 + 11 + 6 chars; units: 4 Han + Hello + world + 6 Han = 12
    c = r["corpus"]
    assert (c["paths"], c["records"], c["chars"], c["units"], c["unit_name"]) == ([str(corpus)], 3, 22, 12,
                                                                                 "characters")
    names = [t["name"] for t in r["tokenizers"]]
    assert names == ["first", "bytes-only"]
    # one token per byte: 10 Han chars x 3 + ， (3) + "Hello world" (11) = 44 tokens
    assert [t["tokens"] for t in r["tokenizers"]] == [44, 44]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 5000

    assert main(["tokenizer", "report", "--tokenizer", str(bytes_tok_dir), "--corpus", str(corpus), "--lang", "zh",
                 "--max-chars", "8", "--json", str(out_json)]) == 0
    c = json.loads(out_json.read_text())["corpus"]
    assert (c["records"], c["chars"], c["units"]) == (2, 8, 5)  # "你好，世界" + "Hel"


def test_names():
    assert tokenizer_names(["/a/llama2/tokenizer.model", "/b/pruned/", "x"], ["mine"]) == ["mine", "pruned", "x"]
    assert tokenizer_names(["/a/t", "/b/t"], None) == ["t", "t#2"]


def test_llama2_seed_sentence_81_pieces(shared_data, tmp_path, capsys):
    llama2 = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    out_json = tmp_path / "seed.json"
    assert main(["tokenizer", "report", "--tokenizer", str(llama2), "--text", TIBETAN_SEED_SENTENCE, "--lang", "bo",
                 "--json", str(out_json)]) == 0
    t = json.loads(out_json.read_text())["tokenizers"][0]
    assert (t["name"], t["tokens"], t["units"], t["chars"]) == ("llama2", 81, 16, 54)
    assert len(t["pieces"]) == 81 and t["pieces"][:5] == ["▁", "<0xE0>", "<0xBD>", "<0x81>", "ྱ"]
    # 13 of the 54 characters are not in Llama-2's vocabulary: 3 byte pieces each
    assert t["byte_fallback_tokens"] == 39 and t["byte_fallback_share"] == 0.4815
    assert "| llama2 | 81 | ▁ <0xE0> <0xBD> <0x81> ྱ ོ ད ་" in capsys.readouterr().out


def test_llama2_byte_fallback_on_tibetan_corpus(shared_data, tmp_path):
    llama2 = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    out_json = tmp_path / "bo.json"
    assert main(["tokenizer", "report", "--tokenizer", str(llama2), "--corpus", str(shared_data / "bo" / "dev-conllu"),
                 "--lang", "bo", "--max-chars", "100000", "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())
    t = r["tokenizers"][0]
    assert r["corpus"]["chars"] == 100_000 and t["units"] == 27_887 and t["tokens"] == 138_927
    # Llama-2 has 15 Tibetan letters; every other Tibetan character costs 3 byte pieces. By token count
    # that is 41% (not over half: the 15 letters it has are the most frequent ones, and the tsheg is one).
    assert t["byte_fallback_tokens"] == 57_216 and t["byte_fallback_share"] == 0.4118
    assert t["tokens_per_unit"] == 4.9818 and t["unk_share"] == 0.0


def test_bad_input_one_line_error_nothing_written(bytes_tok_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["tokenizer", "report", "--tokenizer", str(bytes_tok_dir), "--corpus", str(empty), "--lang", "en",
                 "--json", str(out_json), "--plot", str(out_png)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("langadapt: error:")
    assert not out_json.exists() and not out_png.exists()

    assert main(["tokenizer", "report", "--tokenizer", str(tmp_path / "nope"), "--text", "hi", "--lang", "en",
                 "--json", str(out_json)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("langadapt: error:") and "nope" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_byte_level_pieces_are_shown_readably(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from langadapt.tokenizer.report import readable_pieces

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = "the ཀ"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = readable_pieces(tok, "byte-level-bpe", ids)
    # Whole characters read as text (space as ▁); the Tibetan letter's three bytes, which the
    # tiny English tokenizer has no merges for, read as <0xNN>.
    assert "".join(pieces) == "the▁<0xE0><0xBD><0x80>"
