"""`langadapt tokenizer merge` for SentencePiece bases and the pure merge functions (merge_spm)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings, strategies as st

from langadapt.cli import main
from langadapt.corpus import iter_texts
from langadapt.lang import get_profile
from langadapt.tokenizer.merge_spm import (BPE, compat_merge, merge_sentencepiece, model_proto,
                                           read_model, unreachable_pieces)
from langadapt.tokenizer.train import train_sentencepiece

from conftest import TIBETAN_SEED_SENTENCE

BO = get_profile("bo")
ZH = get_profile("zh")
COMPAT_SHA256 = "e2676d4ca29ca1750f6ff203328d73b189321dc5776ceede037cbd36541d70c0"
ENGLISH_AND_CODE = [
    "The quick brown fox jumps over the lazy dog in 2024.",
    "  Leading spaces, tabs\tand a trailing space ",
    "import numpy as np\nfor i in range(10):\n    print(np.sqrt(i))  # roots\n",
    "Ünïcödé café résumé — “quotes” and émojis 🙂🚀",
    "<s> not special here </s> <unk>",
]


def _news_files(shared_data: Path, max_bytes: int) -> list[Path]:
    files, total = [], 0
    for path in sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir()):
        files.append(path)
        total += path.stat().st_size
        if total >= max_bytes:
            break
    return files


@pytest.fixture(scope="module")
def llama2(shared_data):
    return read_model(shared_data / "tokenizers" / "llama2" / "tokenizer.model")


@pytest.fixture(scope="module")
def donor_bo(shared_data):
    """A 2,000-piece Tibetan BPE donor trained on ~1 MB of Tibet Times (about a second)."""
    texts = iter_texts(_news_files(shared_data, 1_000_000), profile=BO)
    model_bytes, _ = train_sentencepiece(texts, BO, 2000, "bpe", progress=False)
    proto = model_proto()
    proto.ParseFromString(model_bytes)
    return proto


@pytest.fixture(scope="module")
def merged_bo(llama2, donor_bo):
    return merge_sentencepiece(llama2, donor_bo, BO.is_target_char)


@pytest.fixture(scope="module")
def dev_bo(shared_data):
    return list(iter_texts(shared_data / "bo" / "dev-conllu", profile=BO))


def _sp(proto) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


# ----------------------------------------------------------------------------- pure functions

def _toy_model(pieces: list[str]):
    proto = model_proto()
    proto.trainer_spec.model_type = BPE
    for i, piece in enumerate(pieces):
        p = proto.pieces.add()
        p.piece, p.score = piece, -float(i)
    return proto


def test_unreachable_pieces_toy():
    proto = _toy_model(["a", "b", "c", "ab", "abc", "bca", "cc"])
    # "bca": neither b+ca nor bc+a are pieces; "abc" = ab+c; "cc" = c+c.
    assert unreachable_pieces(proto) == ["bca"]


def test_merge_toy_repairs_and_drops():
    """Target script = x, y, z. Donor (unigram) pieces: xyx has no two-piece split until yx is
    added; "x»" needs the non-target » that the base lacks, so it is dropped; "ab" is not target."""
    base = _toy_model(["a", "b", "ab", "▁"])
    unk = base.pieces.add()
    unk.piece, unk.type = "<unk>", 2
    donor = _toy_model(["x", "y", "z", "xyx", "x»", "ab", "zz"])
    donor.trainer_spec.model_type = 1  # unigram: ordered by score (here: by position)
    merged, report = merge_sentencepiece(base, donor, lambda c: c in "xyz")
    pieces = [p.piece for p in merged.pieces]
    assert pieces[:5] == ["a", "b", "ab", "▁", "<unk>"]
    assert pieces[5:] == ["x", "y", "z", "yx", "xyx", "zz"]
    assert unreachable_pieces(merged) == []
    assert report["unreachable"]["fixed_by_adding_intermediates"]["examples"] == [{"piece": "xyx", "added": ["yx"]}]
    assert report["unreachable"]["dropped"]["examples"][0]["piece"] == "x»"
    assert report["pieces_skipped"]["already in base"]["examples"] == ["ab"]
    scores = {p.piece: p.score for p in merged.pieces}
    # the block follows donor order, above every base score, intermediates just above their piece
    assert scores["x"] > scores["y"] > scores["z"] > scores["yx"] > scores["xyx"] > scores["zz"] > scores["a"]
    assert [scores[p] for p in ("a", "b", "ab", "▁")] == [0.0, -1.0, -2.0, -3.0]
    sp = _sp(merged)
    assert sp.encode("xyx", out_type=str) == ["▁", "xyx"]


def test_unreachable_pieces_chinese_llama_2(shared_data):
    proto = read_model(shared_data / "tokenizers" / "chinese-llama-2" / "tokenizer.model")
    dead = unreachable_pieces(proto)
    # 630, counting "<pad>", which Chinese-LLaMA-2 added as a NORMAL piece (never produced either).
    assert len(dead) == 630
    assert "意大利" in dead and "<pad>" in dead
    sp = _sp(proto)
    assert "意大利" not in sp.encode("意大利", out_type=str)  # really never produced


def test_compat_merge_reproduces_chinese_llama_v1(shared_data, llama2):
    donor = read_model(shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model")
    merged, report = compat_merge(llama2, donor)
    data = merged.SerializeToString()
    assert len(merged.pieces) == 49953 and report["pieces_added"] == 17953
    assert hashlib.sha256(data).hexdigest() == COMPAT_SHA256
    assert report["unreachable"]["count"] > 0


def test_default_merge_structure(llama2, merged_bo):
    merged, report = merged_bo
    assert unreachable_pieces(merged) == []
    assert report["unreachable"]["left"] == 0
    # base ids keep their strings (and types); new pieces are appended
    assert [p.piece for p in merged.pieces[:32000]] == [p.piece for p in llama2.pieces]
    assert [p.type for p in merged.pieces[:32000]] == [p.type for p in llama2.pieces]
    new = [p.piece for p in merged.pieces[32000:]]
    assert len(new) == report["pieces_added"] == len(merged.pieces) - 32000 > 1500
    assert all(any(BO.is_target_char(c) for c in s) for s in new)
    # base pieces without target script keep their scores
    for old, p in zip(llama2.pieces, merged.pieces):
        if not any(BO.is_target_char(c) for c in p.piece):
            assert p.score == old.score


def test_default_merge_keeps_donor_segmentation(llama2, donor_bo, merged_bo, dev_bo):
    merged, _ = merged_bo
    donor_tokens = sum(map(len, _sp(donor_bo).encode(dev_bo)))
    merged_tokens = sum(map(len, _sp(merged).encode(dev_bo)))
    base_tokens = sum(map(len, _sp(llama2).encode(dev_bo)))
    assert merged_tokens <= 1.01 * donor_tokens
    assert merged_tokens < base_tokens / 4
    assert len(_sp(merged).encode(TIBETAN_SEED_SENTENCE)) < 30  # Llama-2 alone: 81


def test_default_merge_leaves_other_text_alone(llama2, merged_bo, shared_data):
    merged, _ = merged_bo
    texts = ENGLISH_AND_CODE + list(iter_texts(shared_data / "zh" / "reviews-chnsenticorp", profile=ZH))[:50]
    assert _sp(merged).encode(texts) == _sp(llama2).encode(texts)


def test_default_merge_with_unigram_donor_repairs_unreachable(llama2, shared_data):
    # chinese_sp is a unigram model: most multi-character pieces have no two-piece split in the
    # merged vocabulary until intermediates are added.
    donor = read_model(shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model")
    merged, report = merge_sentencepiece(llama2, donor, ZH.is_target_char)
    assert unreachable_pieces(merged) == []
    assert report["unreachable"]["fixed_by_adding_intermediates"]["count"] > 0
    assert report["pieces_skipped"]["not target script"]["count"] > 0
    assert _sp(merged).encode(ENGLISH_AND_CODE) == _sp(llama2).encode(ENGLISH_AND_CODE)
    assert "▁意大利" in _sp(merged).encode("意大利", out_type=str) or \
        "意大利" in _sp(merged).encode("意大利", out_type=str)


def test_merge_rejects_unigram_base(llama2, donor_bo):
    from langadapt.errors import LangadaptError

    base = model_proto()
    base.CopyFrom(llama2)
    base.trainer_spec.model_type = 1
    with pytest.raises(LangadaptError, match="not BPE"):
        merge_sentencepiece(base, donor_bo, BO.is_target_char)


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, shared_data):
    """Llama-2's tokenizer as an HF directory with a chat template and its tokenizer.model."""
    from langadapt.tokenizer.load import load_tokenizer

    d = tmp_path_factory.mktemp("llama2-base")
    tok = load_tokenizer(shared_data / "tokenizers" / "llama2" / "tokenizer.model")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tok.save_pretrained(str(d))
    shutil.copy(shared_data / "tokenizers" / "llama2" / "tokenizer.model", d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, base_dir, shared_data):
    out = tmp_path_factory.mktemp("merge") / "out"
    files = [str(p) for p in _news_files(shared_data, 1_000_000)]
    assert main(["tokenizer", "merge", "--base", str(base_dir), "--corpus", *files, "--vocab-size", "2000",
                 "--lang", "bo", "--out", str(out)]) == 0
    return out


def test_merge_command_output(merged_dir, base_dir, dev_bo):
    from transformers import AutoTokenizer

    names = {p.name for p in merged_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "merge_report.json",
            "adaptation.json", "donor.model"} <= names
    report = json.loads((merged_dir / "merge_report.json").read_text())
    info = json.loads((merged_dir / "adaptation.json").read_text())
    assert report["unreachable"]["left"] == 0 and report["hf_equals_sentencepiece"]["mismatches"] == 0
    assert info["mode"] == "default" and len(info["base_sha256"]) == 64 and len(info["donor_sha256"]) == 64
    assert info["vocab_size_after"] == 32000 + report["pieces_added"]

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    base = AutoTokenizer.from_pretrained(str(base_dir))
    assert len(tok) == info["vocab_size_after"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok.chat_template == base.chat_template
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi"
    # HF fast tokenizer == sentencepiece on the merged model, on Tibetan and English
    sp = spm.SentencePieceProcessor(model_file=str(merged_dir / "tokenizer.model"))
    # (HF matches "<s>" in text as the special token, sentencepiece does not: left out here)
    texts = dev_bo[:300] + ENGLISH_AND_CODE[:-1] + [TIBETAN_SEED_SENTENCE]
    assert [tok.encode(t, add_special_tokens=False) for t in texts] == sp.encode(texts)
    assert tok.encode("Hello")[0] == 1  # BOS kept
    for t in ENGLISH_AND_CODE:
        assert tok.encode(t) == base.encode(t)


_TIBETAN = "ཀཁགངཅཆཇཉཏཐདནཔཕབམཙཚཛཝཞཟའཡརལཤསཧཨ" + "ིེོུ" + "ྐྒྱྲླྷ" + "་།"
_TEXT = st.lists(st.sampled_from(list(_TIBETAN) + list("中文字的是") + list("abcXYZ019 .,!\n")
                                 + ["🙂", "👍🏽", "é", "e\u0301", "\u0f0b\u0f0b", "  "]), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_TEXT)
def test_roundtrip_property(merged_dir, raw):
    """decode(encode(x)) == profile.normalize(x) for mixes of Tibetan, Chinese, English and emoji."""
    tok = _hf_cache(merged_dir)
    x = BO.normalize(raw)
    ids = tok.encode(x, add_special_tokens=False)
    assert tok.decode(ids) == x


_HF: dict = {}


def _hf_cache(path):
    from transformers import AutoTokenizer

    if path not in _HF:
        _HF[path] = AutoTokenizer.from_pretrained(str(path))
    return _HF[path]


# ----------------------------------------------------------------------------- bad input

def _merge(tmp_path, base, *extra):
    out = tmp_path / "out"
    code = main(["tokenizer", "merge", "--base", str(base), "--lang", "bo", "--out", str(out), *extra])
    return code, out


def test_merge_empty_corpus_writes_nothing(tmp_path, shared_data, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model",
                       "--corpus", str(empty), "--vocab-size", "500")
    assert code == 2 and not out.exists()
    assert "no text records" in capsys.readouterr().err
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_merge_no_target_script_writes_nothing(tmp_path, shared_data, capsys):
    english = tmp_path / "en.txt"
    english.write_text("\n".join(f"This is English sentence number {i} about tokenizers and models."
                                 for i in range(300)), encoding="utf-8")
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model",
                       "--corpus", str(english), "--vocab-size", "200")
    assert code == 2 and not out.exists()
    assert "no Tibetan text" in capsys.readouterr().err


def test_merge_vocab_too_large_writes_nothing(tmp_path, shared_data, capsys):
    small = tmp_path / "bo.txt"
    small.write_text(TIBETAN_SEED_SENTENCE + "\n", encoding="utf-8")
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model",
                       "--corpus", str(small), "--vocab-size", "5000")
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "larger than this corpus supports" in err and "largest possible" in err


def test_merge_normalizer_mismatch_is_an_error(tmp_path, shared_data, capsys):
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model",
                       "--add", str(shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model"))
    assert code == 2 and not out.exists()
    assert "nmt_nfkc" in capsys.readouterr().err


def test_merge_compat_command(tmp_path, shared_data):
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model",
                       "--add", str(shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model"),
                       "--compat", "chinese-llama")
    assert code == 0
    sha = hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    assert sha == COMPAT_SHA256
    report = json.loads((out / "merge_report.json").read_text())
    assert "nmt_nfkc" in report["warning"] and report["vocab_size_after"] == 49953


def test_merge_needs_one_donor(tmp_path, shared_data, capsys):
    code, out = _merge(tmp_path, shared_data / "tokenizers" / "llama2" / "tokenizer.model")
    assert code == 2 and not out.exists()
    assert "exactly one donor" in capsys.readouterr().err


# ----------------------------------------------------------------------------- byte-level dispatch

@pytest.fixture(scope="module")
def byte_level_base(tmp_path_factory):
    """A tiny GPT-2-style byte-level BPE (trained on English in well under a second) as an HF dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(ENGLISH_AND_CODE * 20, trainer=trainer)
    d = tmp_path_factory.mktemp("bytelevel")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(d))
    return d


def test_merge_dispatches_byte_level_base(tmp_path, byte_level_base, shared_data):
    from transformers import AutoTokenizer

    files = [str(p) for p in _news_files(shared_data, 200_000)]
    code, out = _merge(tmp_path, byte_level_base, "--corpus", *files, "--vocab-size", "50")
    assert code == 0
    info = json.loads((out / "adaptation.json").read_text())
    assert info["mode"] == "byte-level-bpe" and info["vocab_size_after"] == info["vocab_size_before"] + 50
    tok = AutoTokenizer.from_pretrained(str(out))
    base = AutoTokenizer.from_pretrained(str(byte_level_base))
    assert tok.eos_token == "<|endoftext|>"
    assert tok.encode(ENGLISH_AND_CODE[0]) == base.encode(ENGLISH_AND_CODE[0])
    assert len(tok.encode(TIBETAN_SEED_SENTENCE)) < len(base.encode(TIBETAN_SEED_SENTENCE))


def test_merge_add_needs_sentencepiece_base(tmp_path, byte_level_base, shared_data, capsys):
    code, out = _merge(tmp_path, byte_level_base, "--add",
                       str(shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model"))
    assert code == 2 and not out.exists()
    assert "byte-level BPE" in capsys.readouterr().err
