"""BPE-dropout, seeded: at rate 0 exactly the tokenizer's ids; above it, shorter pieces of the same text."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from langadapt.errors import LangadaptError
from langadapt.tokenizer.dropout import DropoutSegmenter, bpe_with_dropout

TEXT = st.text(alphabet=st.sampled_from(list("abcdefghij THEquickbrownfox,.\n\t대한민국은주권국민에게있고 0123é😀")),
               max_size=80)
SPECIAL = st.sampled_from(["", "<|im_end|>", "<|endoftext|>"])


@pytest.fixture(scope="module")
def byte_level(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def byte_fallback():
    """A Llama-2-style BPE: '▁' for spaces, byte-fallback tokens <0x00>..<0xFF> for unknown characters."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for ch in "▁abcdefghijklmnopqrstuvwxyzTHE,.대한민국은":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("대", "한"), ("민", "국"), ("대한", "민국"), ("▁", "대한민국"),
              ("o", "w"), ("b", "r"), ("br", "ow"), ("▁", "brow")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_bpe_merges_lowest_rank_first_and_leftmost_on_ties():
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("ab", "c"): 2, ("a", "a"): 3}
    never = random.Random(0)
    assert bpe_with_dropout(list("abc"), ranks, 0.0, never) == ["abc"]
    assert bpe_with_dropout(list("bcab"), ranks, 0.0, never) == ["bc", "ab"]
    assert bpe_with_dropout(list("aaa"), ranks, 0.0, never) == ["aa", "a"]
    assert bpe_with_dropout(list("xyz"), ranks, 0.0, never) == ["x", "y", "z"]
    # near-certain dropout: almost every merge is skipped, and the symbols still spell the word
    pieces = [bpe_with_dropout(list("abcabc"), ranks, 0.99, random.Random(s)) for s in range(50)]
    assert all("".join(p) == "abcabc" for p in pieces)
    assert sum(p == list("abcabc") for p in pieces) > 40


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, special=SPECIAL, tail=TEXT)
def test_rate_zero_gives_the_tokenizers_ids_byte_level(byte_level, text, special, tail):
    text = text + special + tail
    want = byte_level(text, add_special_tokens=False)["input_ids"]
    assert DropoutSegmenter(byte_level, 0.0).encode(text, random.Random(0)) == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_rate_zero_gives_the_tokenizers_ids_byte_fallback(byte_fallback, text):
    want = byte_fallback(text, add_special_tokens=False)["input_ids"]
    assert DropoutSegmenter(byte_fallback, 0.0).encode(text, random.Random(0)) == want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, seed=st.integers(0, 10))
def test_dropout_keeps_the_text_and_is_seeded(byte_level, text, seed):
    segmenter = DropoutSegmenter(byte_level, 0.3)
    ids = segmenter.encode(text, random.Random(seed))
    assert byte_level.decode(ids) == text
    assert [ids] == segmenter.seeded(seed)([text])
    assert len(ids) >= len(byte_level(text, add_special_tokens=False)["input_ids"])


def test_dropout_cuts_more_pieces_at_a_higher_rate(byte_level):
    text = "대한민국은 민주공화국이다. The quick brown fox jumps over the lazy dog. " * 20
    counts = [len(DropoutSegmenter(byte_level, rate).encode(text, random.Random(1))) for rate in (0.0, 0.1, 0.3, 0.6)]
    assert counts == sorted(counts) and counts[0] < counts[1] and counts[2] < counts[3]
    segmenter = DropoutSegmenter(byte_level, 0.3)
    assert segmenter.seeded(1)([text]) != segmenter.seeded(2)([text])


def test_byte_fallback_without_its_byte_tokens_gives_unk_as_the_tokenizer_does():
    vocab = {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "<0x61>": 4}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(" ", "▁")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    for text in ("ab", "a주b", "é a"):
        assert DropoutSegmenter(tok, 0.0).encode(text, random.Random(0)) == tok(text, add_special_tokens=False)[
            "input_ids"], text


def test_a_tokenizer_that_is_not_bpe_is_refused():
    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(LangadaptError, match="bpe_dropout needs a BPE tokenizer"):
        DropoutSegmenter(PreTrainedTokenizerFast(tokenizer_object=backend), 0.1)
