"""`langadapt tokenizer train`: SentencePiece training on streamed target-language text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.lang import get_profile
from langadapt.tokenizer.train import default_options, train_sentencepiece, unique_sentences

from conftest import TIBETAN_SEED_SENTENCE

BO = get_profile("bo")


def _news(shared_data: Path, n: int) -> list[str]:
    return [str(p) for p in sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir())[:n]]


def test_default_options():
    bo = default_options("bo", 8000)
    assert bo["character_coverage"] == 0.9995 and bo["normalization_rule_name"] == "identity"
    assert bo["split_digits"] and not bo["byte_fallback"] and bo["max_sentence_length"] >= 65536
    assert default_options("en", 8000, "unigram")["character_coverage"] == 1.0
    with pytest.raises(LangadaptError, match="bpe"):
        default_options("bo", 100, "wordpiece")


def test_tibetan_pieces_are_shorter_and_repeated_sentences_are_skipped():
    assert default_options("bo", 8000)["max_sentencepiece_length"] == 12
    assert default_options("zh", 8000)["max_sentencepiece_length"] == 16
    counts: dict = {}
    assert list(unique_sentences(["a", "b", "a", "c", "b"], counts)) == ["a", "b", "c"]
    assert counts["duplicates"] == 2
    assert list(unique_sentences(["a", "b", "a", "b"], max_remembered=1)) == ["a", "b", "b"]  # past the cap
    text = "བཀྲ་ཤིས་བདེ་ལེགས། ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན། " * 50
    model, facts = train_sentencepiece([text], BO, 30, "bpe", progress=False)
    assert (facts["sentences"], facts["duplicate_sentences_skipped"]) == (100, 98)
    _, kept = train_sentencepiece([text], BO, 30, "bpe", progress=False, dedupe=False)
    assert (kept["sentences"], kept["duplicate_sentences_skipped"]) == (100, None)


def test_train_command_writes_model_vocab_and_record(tmp_path, shared_data, capsys):
    out = tmp_path / "donor"
    code = main(["tokenizer", "train", "--corpus", *_news(shared_data, 60), "--lang", "bo",
                 "--vocab-size", "1000", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["adaptation.json", "bo-bpe-1000.model", "bo-bpe-1000.vocab"]
    sp = spm.SentencePieceProcessor(model_file=str(out / "bo-bpe-1000.model"))
    assert sp.get_piece_size() == 1000
    vocab = (out / "bo-bpe-1000.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 1000 and vocab[0] == "<unk>\t0"
    info = json.loads((out / "adaptation.json").read_text())
    assert info["step"] == "tokenizer-train" and info["lang"] == "bo" and info["files_read"] == 60
    assert info["options"]["normalization_rule_name"] == "identity"
    assert info["options"]["character_coverage"] == 0.9995
    assert info["target_script_share"] > 0.95 and info["peak_rss_mb"] > 0 and info["sentences"] > info["records"]
    # a Tibetan sentence is cut into far fewer pieces than Llama-2's 81 tokens, with no unknowns
    pieces = sp.encode(TIBETAN_SEED_SENTENCE)
    assert len(pieces) < 40 and sp.unk_id() not in pieces
    # ASCII digits are split, as the trainer was told (no piece holds two of them)
    assert not [p for p in map(sp.id_to_piece, range(1000)) if sum(c in "0123456789" for c in p) > 1]
    # Tibetan pieces are at most 12 characters (the ▁ word-start mark included)
    assert max(len(sp.id_to_piece(i)) for i in range(1000)) == 12
    assert "peak memory" in capsys.readouterr().out


def test_train_unigram_and_sampling(shared_data):
    from langadapt.corpus import iter_texts

    texts = iter_texts(_news(shared_data, 60), profile=BO)
    model, facts = train_sentencepiece(texts, BO, 400, "unigram", progress=False, input_sentence_size=500)
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert sp.get_piece_size() == 400
    assert facts["options"]["input_sentence_size"] == 500 and facts["options"]["model_type"] == "unigram"
    assert sp.decode(sp.encode(TIBETAN_SEED_SENTENCE)) == TIBETAN_SEED_SENTENCE


def test_long_records_are_split_not_dropped():
    # one 300 KB "paragraph" (sentencepiece drops lines over max_sentence_length)
    text = "བཀྲ་ཤིས་བདེ་ལེགས། " * 12000
    model, facts = train_sentencepiece([text], BO, 20, "bpe", progress=False)
    assert facts["records"] == 1 and facts["sentences"] > 1000
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert sp.get_piece_size() == 20 and sp.unk_id() not in sp.encode("བཀྲ་ཤིས་བདེ་ལེགས།")


def test_vocab_too_large_is_a_clear_error(tmp_path, capsys):
    corpus = tmp_path / "bo.txt"
    corpus.write_text(TIBETAN_SEED_SENTENCE + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--lang", "bo", "--vocab-size", "3000",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size 3000 is larger than this corpus supports" in err and "largest possible bpe vocabulary is" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("  \n\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--lang", "bo", "--vocab-size", "100",
                 "--out", str(out)]) == 2
    assert "no text records" in capsys.readouterr().err and not out.exists()
    with pytest.raises(LangadaptError, match="no text"):
        train_sentencepiece([], BO, 100, progress=False)


def test_no_target_script_is_a_clear_error(tmp_path, capsys):
    corpus = tmp_path / "en.txt"
    corpus.write_text("\n".join(f"Plain English line {i} with several words." for i in range(500)), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--lang", "bo", "--vocab-size", "100",
                 "--out", str(out)]) == 2
    assert "no Tibetan text" in capsys.readouterr().err and not out.exists()


def test_existing_output_is_kept(tmp_path, capsys):
    corpus = tmp_path / "bo.txt"
    corpus.write_text((TIBETAN_SEED_SENTENCE + "\n") * 50, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--lang", "bo", "--vocab-size", "40",
                 "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
