"""Byte-level BPE extension (langadapt.tokenizer.merge_bpe) and its script-aware pre-tokenizer.

Fast tests use tiny byte-level BPE bases trained here on English (Python's own docs/source)
and a small generated Tibetan corpus; the real SmolLM2 tokenizer and real Tibetan text are
used in the tests marked `slow` / through the `shared_data` fixture.
"""

from __future__ import annotations

import inspect
import json
import random
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.errors import LangadaptError
from langadapt.lang import get_profile
from langadapt.tokenizer.merge_bpe import (
    bpe_alone,
    build_extended,
    extend_byte_level_bpe,
    is_target_specific,
    select_merges,
    target_piece_tokens,
    token_bytes,
    train_target_bpe,
    training_sentences,
)
from langadapt.tokenizer.pretokenize import GPT2_PATTERN, script_aware_pre_tokenizer, target_pattern

BO = get_profile("bo")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}

# Common Tibetan syllables and words for a small generated corpus (no data files needed).
_SYLLABLES = ("ཀྱི གི ནི དང ལ བོད སྐད ཡིག མི ཡོད རེད འདི དེ ཁྱོད ང གདོང པད མ བཞིན མིག དག སྔོན པོ རྒྱལ ཁབ "
              "སློབ གྲྭ ཆེན ཐོབ བྱས ཀྱང ལོ ཟླ ཚེས ཉིན གཞན ཕྱོགས བསམ བློ ཤེས རབ ཨུཏྤལ བཀྲ ཤིས བདེ ལེགས "
              "སངས རྒྱས ཆོས སྒྲུབ ལས ཀ ཁ ག ཏུ དུ སུ ར ན").split()
_WORDS = ("བོད་སྐད", "རྒྱལ་ཁབ", "སློབ་གྲྭ", "བཀྲ་ཤིས", "བདེ་ལེགས", "སངས་རྒྱས", "ཤེས་རབ", "ཕྱོགས་བསམ")


def tibetan_corpus(n: int, seed: int) -> list[str]:
    """`n` generated Tibetan sentences: syllables and frequent words joined by tsheg, ending in a shad."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_WORDS) if rng.random() < 0.3 else rng.choice(_SYLLABLES)
                 for _ in range(rng.randint(3, 12))]
        out.append("་".join(parts) + rng.choice(["།", "། །", "།།"]))
    return out


def english_text() -> list[str]:
    """Plain English and code: the source of a few standard library modules."""
    import argparse
    import json as json_module

    lines = []
    for module in (argparse, json_module, textwrap):
        lines += [ln for ln in inspect.getsource(module).splitlines() if ln.strip()]
    return lines


def make_base(extra: list[str], vocab_size: int = 1200, llama3: bool = False) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE (ByteLevel(use_regex=True) pre-tokenizer; with `llama3`,
    Llama-3's Split regex + ByteLevel(use_regex=False) and ignore_merges) trained on English
    plus `extra`, with <|endoftext|> at id 0, two special tokens after the vocabulary and a chat template."""
    tok = Tokenizer(models.BPE(ignore_merges=llama3))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(english_text() + extra, trainer=trainer)
    base = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                                                 "{% endfor %}")
    base.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return base


@pytest.fixture(scope="module")
def english_base():
    return make_base([])


@pytest.fixture(scope="module")
def tibetan_aware_base():
    """A base that saw some Tibetan through GPT-2's regex: it has partial Tibetan merges
    (characters, mark clusters) that the extension's merges must live with."""
    return make_base(tibetan_corpus(300, seed=7), vocab_size=1500)


@pytest.fixture(scope="module")
def llama3_extended():
    """A Llama-3-shaped base (Split regex, ignore_merges) that saw some Tibetan, and its extension."""
    base = make_base(tibetan_corpus(300, seed=7), vocab_size=1500, llama3=True)
    corpus = tibetan_corpus(2000, seed=1)
    tok, report = extend_byte_level_bpe(base, lambda: iter(corpus), 300, BO)
    return base, tok, report


@pytest.fixture(scope="module")
def extended(tibetan_aware_base):
    """The Tibetan-aware base extended with 300 tokens trained on generated Tibetan."""
    corpus = tibetan_corpus(2000, seed=1)
    return extend_byte_level_bpe(tibetan_aware_base, lambda: iter(corpus), 300, BO)


def pieces(pre: dict, text: str) -> list[str]:
    """The pre-tokenizer's pieces of `text`, as text (byte-level symbols decoded)."""
    data = json.loads(Tokenizer(models.BPE()).to_str())
    data["pre_tokenizer"] = pre
    tok = Tokenizer.from_str(json.dumps(data))
    return [token_bytes(p).decode("utf-8") for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


# --- the pre-tokenizer -------------------------------------------------------------------------

def test_gpt2_regex_cuts_syllables_and_the_rewrite_keeps_them():
    assert pieces(BYTE_LEVEL, "ཁྱོད") == ["ཁ", "ྱོ", "ད"]
    new, pattern = script_aware_pre_tokenizer(BYTE_LEVEL, BO)
    assert pattern == target_pattern(BO) + "|" + GPT2_PATTERN
    assert new["pretokenizers"][1] == dict(BYTE_LEVEL, use_regex=False)
    assert pieces(new, "ཁྱོད") == ["ཁྱོད"]
    # Multi-syllable runs stay together up to a space or a shad; shads are pieces of their own.
    assert pieces(new, "ཁྱོད་ཀྱི་གདོང།། མིག་དག hello ༡༢") == [
        "ཁྱོད་ཀྱི་གདོང", "།།", " མིག་དག", " hello", " ༡༢"]
    assert pieces(new, TIBETAN_SEED_SENTENCE) == [
        "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན", "།།", "མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན", "།"]
    assert pieces(new, "༄༅། །བཀྲ་ཤིས།") == ["༄༅", "།", " །", "བཀྲ་ཤིས", "།"]


def test_llama3_shape_gets_the_target_alternative_first():
    new, pattern = script_aware_pre_tokenizer(LLAMA3_PRE, BO)
    assert pattern == target_pattern(BO) + "|" + LLAMA3_PATTERN
    assert new["pretokenizers"][1] == LLAMA3_PRE["pretokenizers"][1]
    assert pieces(LLAMA3_PRE, "ཁྱོད་ཀྱི") == ["ཁ", "ྱོ", "ད", "་ཀ", "ྱི"]
    assert pieces(new, "ཁྱོད་ཀྱི།") == ["ཁྱོད་ཀྱི", "།"]
    assert LLAMA3_PRE["pretokenizers"][0]["pattern"]["Regex"] == LLAMA3_PATTERN  # input untouched


def test_devanagari_profile_keeps_words_with_vowel_signs():
    from langadapt.lang.profiles import LanguageProfile

    hi = LanguageProfile("hi", "Hindi", "words", ((0x0900, 0x097F),), str, str.split)
    new, _ = script_aware_pre_tokenizer(BYTE_LEVEL, hi)
    assert pieces(BYTE_LEVEL, "हिन्दी")[0] == "ह"
    assert pieces(new, "हिन्दी भाषा।") == ["हिन्दी", " भाषा", "।"]


@pytest.mark.parametrize("pre, why", [
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}, "Metaspace"),
    (dict(BYTE_LEVEL, add_prefix_space=True), "add_prefix_space"),
    (None, "no pre-tokenizer"),
    ({"type": "Sequence", "pretokenizers": [LLAMA3_PRE["pretokenizers"][0]] * 2 + [BYTE_LEVEL]}, "Sequence of 3"),
])
def test_unknown_pre_tokenizer_shapes_are_clear_errors(pre, why):
    with pytest.raises(LangadaptError, match=why):
        script_aware_pre_tokenizer(pre, BO)


def test_profile_without_script_ranges_is_an_error():
    with pytest.raises(LangadaptError, match="no script ranges"):
        target_pattern(get_profile("xx"))


# Mixed-script text without Tibetan: English, code, emoji, Chinese, Korean, Devanagari, digits.
_FRAGMENTS = ["Hello", " world", "'s", " don't", "\n", "\n\n", "  ", "\t", "def f(x):\n    return x**2",
              "😀", "👩‍💻", " 中文字符", "한국어 문장", " हिन्दी", "भाषा।", "123", " 4567", "...", "!?", "(a, b)",
              "ελληνικά", "Привет", "«»", "\u00e9t\u00e9", "\u0300", "\xa0", "ཀ"[:0]]
_NON_TIBETAN_CHARS = st.characters(blacklist_categories=("Cs",), max_codepoint=0x1FFFF).filter(
    lambda ch: not 0x0F00 <= ord(ch) <= 0x0FFF)
NON_TIBETAN = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(_NON_TIBETAN_CHARS, max_size=8)),
                       max_size=12).map("".join)
TIBETAN_CHARS = st.characters(min_codepoint=0x0F00, max_codepoint=0x0FFF).filter(lambda ch: ch.isprintable())
MIXED = st.lists(st.one_of(st.sampled_from(_FRAGMENTS + _SYLLABLES + ["་", "།", "། །", TIBETAN_SEED_SENTENCE]),
                           st.text(TIBETAN_CHARS, max_size=6), st.text(_NON_TIBETAN_CHARS, max_size=4)),
                 max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(NON_TIBETAN)
def test_rewritten_pre_tokenizers_split_other_text_exactly_as_before(text):
    for pre in (BYTE_LEVEL, LLAMA3_PRE):
        new, _ = script_aware_pre_tokenizer(pre, BO)
        assert pieces(new, text) == pieces(pre, text)


# --- which merges may be added -----------------------------------------------------------------

def test_training_sentences_cut_records_and_skip_repeats():
    records = ["ཀ་ཁ། ག་ང། ཀ་ཁ།", "ག་ང། ཅ་ཆ།"]
    assert list(training_sentences(records, BO)) == ["ཀ་ཁ།", "ག་ང།", "ཅ་ཆ།"]


def test_target_specific_merges_need_a_target_lead_sequence():
    ranges = [(0x0F00, 0x0FFF)]
    assert is_target_specific("ག".encode(), ranges)
    assert is_target_specific(b"\xe0\xbd", ranges)  # E0 BD: only U+0F40-U+0F7F start with it
    assert is_target_specific(b" \xe0\xbc", ranges)
    assert is_target_specific(b"\x82\xe0\xbd", ranges)  # tail of one character, head of a Tibetan one
    assert not is_target_specific(b"\xe0", ranges)  # lead byte of U+0800-U+0FFF: Devanagari too
    assert not is_target_specific(b"\xbd\x82", ranges)  # also inside U+FF42 (EF BD 82), U+1F42...
    assert not is_target_specific(b"\x8b\xe0", ranges)
    assert not is_target_specific(b" \xe0", ranges)
    assert not is_target_specific("क".encode(), ranges)  # Devanagari
    assert is_target_specific("क".encode()[:2], [(0x0900, 0x097F)])


def test_select_merges_drops_unsafe_merges_and_what_builds_on_them():
    base_vocab = {ch: i for i, ch in enumerate(_byte_alphabet().values())}
    ga = "".join(_byte_alphabet()[b] for b in "ག".encode())  # E0 BD 82
    e0, bd, x82 = ga
    trained = [(bd, x82), (e0, bd + x82), (e0, bd), (e0 + bd, x82), (ga, ga)]
    kept, new_tokens, skipped, walked = select_merges(trained, base_vocab, set(), [(0x0F00, 0x0FFF)], 10, True)
    assert skipped["not_target_specific"] == [(bd, x82)]
    assert skipped["input_unavailable"] == [(e0, bd + x82)]  # needs the dropped token
    assert kept == [(e0, bd), (e0 + bd, x82), (ga, ga)]
    assert new_tokens == [e0 + bd, ga, ga + ga] and walked == 5
    # num_new_tokens counts vocabulary entries: stop after the second new token.
    kept, new_tokens, _, walked = select_merges(trained, base_vocab, set(), [(0x0F00, 0x0FFF)], 2, True)
    assert new_tokens == [e0 + bd, ga] and walked == 4


def _byte_alphabet() -> dict[int, str]:
    from langadapt.tokenizer.merge_bpe import bytes_to_unicode

    return bytes_to_unicode()


# --- the extension -----------------------------------------------------------------------------

def test_new_tokens_are_appended_and_base_ids_keep_their_strings(tibetan_aware_base, extended):
    tok, report = extended
    base_vocab = tibetan_aware_base.get_vocab()
    assert report["tokens_added"] == 300 and report["tokens_requested"] == 300
    assert report["base_vocab_size"] == len(tibetan_aware_base) == 1502  # 1500 + two added specials
    assert report["new_vocab_size"] == len(tok) == 1802
    new_vocab = tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in base_vocab.items())
    new_ids = sorted(set(new_vocab.values()) - set(base_vocab.values()))
    assert new_ids == list(range(1502, 1802))
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1500, 1501]
    assert tok.chat_template == tibetan_aware_base.chat_template
    assert tok.eos_token == "<|endoftext|>"
    assert report["merges_skipped"]["not_target_specific"] == 0  # char-aligned merges all start at a lead byte
    # The base already had Tibetan merges: the trained ones it shares are ranked first, not duplicated.
    assert report["base_merges_moved_first"] > 0


def test_every_new_token_is_reachable_and_whole_characters(tibetan_aware_base, extended):
    tok, _ = extended
    for i in range(len(tibetan_aware_base), len(tok)):
        text = tok.decode([i])
        assert "\ufffd" not in text
        assert tok(text, add_special_tokens=False)["input_ids"] == [i], text


def test_seed_sentence_needs_far_fewer_tokens(tibetan_aware_base, extended):
    tok, _ = extended
    before = tibetan_aware_base.tokenize(TIBETAN_SEED_SENTENCE)
    after = tok.tokenize(TIBETAN_SEED_SENTENCE)
    assert len(before) == 42
    assert len(after) == 15
    assert tok.convert_tokens_to_string(after) == TIBETAN_SEED_SENTENCE


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=NON_TIBETAN)
def test_text_without_tibetan_keeps_its_ids(tibetan_aware_base, extended, text):
    tok, _ = extended
    assert tok(text)["input_ids"] == tibetan_aware_base(text)["input_ids"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=NON_TIBETAN)
def test_llama3_shaped_base_text_without_tibetan_keeps_its_ids(llama3_extended, text):
    base, tok, _ = llama3_extended
    assert tok(text)["input_ids"] == base(text)["input_ids"]


def test_llama3_shaped_base_extension(llama3_extended):
    base, tok, report = llama3_extended
    assert report["tokens_added"] == 300 and len(tok) == len(base) + 300
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1500, 1501]
    assert report["pre_tokenizer"]["after"]["pretokenizers"][0]["pattern"]["Regex"].endswith(LLAMA3_PATTERN)
    ids = tok(TIBETAN_SEED_SENTENCE)["input_ids"]
    assert tok.decode(ids) == TIBETAN_SEED_SENTENCE
    assert (len(base(TIBETAN_SEED_SENTENCE)["input_ids"]), len(ids)) == (30, 15)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED)
def test_decode_encode_round_trip(extended, text):
    tok, _ = extended
    text = BO.normalize(text)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_saved_tokenizer_loads_both_ways(extended, tmp_path):
    tok, _ = extended
    tok.save_pretrained(tmp_path)
    text = "Hello <|im_end|> " + TIBETAN_SEED_SENTENCE + " 中文 😀"
    want = tok(text)["input_ids"]
    auto = AutoTokenizer.from_pretrained(tmp_path)
    direct = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert auto(text)["input_ids"] == want == direct(text)["input_ids"]
    assert auto.chat_template == tok.chat_template
    assert auto.convert_tokens_to_ids("<|im_end|>") == 1501
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["pre_tokenizer"]["type"] == "Sequence"


def test_merges_first_beats_merges_last_when_the_base_knows_partial_merges(tibetan_aware_base):
    """Pitfall (b): the base's own Tibetan merges (learned through GPT-2's cut-up pieces) fire
    first when new merges are ranked last and block the trained path."""
    corpus, held_out = tibetan_corpus(2000, seed=1), tibetan_corpus(300, seed=99)
    data = json.loads(tibetan_aware_base.backend_tokenizer.to_str())
    _, pattern = script_aware_pre_tokenizer(data["pre_tokenizer"], BO)
    trained, _ = train_target_bpe(iter(corpus), pattern, target_pattern(BO), 256 + 600)
    counts = {}
    for first in (True, False):
        tok, report = build_extended(tibetan_aware_base, trained, 300, BO, new_merges_first=first)
        alone = bpe_alone(trained[:report["trained_merges_used"]], pattern)
        counts[first] = (target_piece_tokens(tok.backend_tokenizer, held_out, BO),
                         target_piece_tokens(alone, held_out, BO))
    (first_ext, first_alone), (last_ext, last_alone) = counts[True], counts[False]
    assert first_ext <= 1.01 * first_alone
    assert last_ext > first_ext
    # Ranked last, the base's partial merges nearly double the count on held-out text.
    assert (first_ext, first_alone, last_ext, last_alone) == (2448, 2448, 4513, 2277)


def test_learned_token_already_in_base_reuses_its_id(tibetan_aware_base, extended):
    tok, report = extended
    base_vocab = tibetan_aware_base.get_vocab()
    ka = "".join(_byte_alphabet()[b] for b in "ཀ".encode())
    assert ka in base_vocab
    assert tok.convert_tokens_to_ids(ka) == base_vocab[ka]
    assert tok.tokenize("ཀ") == [ka]
    # Trained merges the base already had are moved ahead, not duplicated; trained merges that
    # reach a base token by another path are added without a new id.
    assert (report["base_merges_moved_first"], report["merges_to_existing_tokens"]) == (57, 4)
    assert report["merges_added"] == 304 and report["tokens_added"] == 300


def test_bad_arguments_are_clear_errors(english_base):
    with pytest.raises(LangadaptError, match="at least 1"):
        extend_byte_level_bpe(english_base, lambda: iter(["ཀ"]), 0, BO)
    with pytest.raises(LangadaptError, match="no script ranges"):
        extend_byte_level_bpe(english_base, lambda: iter(["ཀ"]), 10, get_profile("xx"))


# --- real data and the real SmolLM2 tokenizer --------------------------------------------------

def _dev_texts(shared_data):
    from langadapt.corpus import iter_texts

    return list(iter_texts([shared_data / "bo" / "dev-conllu"], BO))


def test_real_tibetan_merged_is_within_1pct_of_the_trained_bpe_alone(shared_data, tibetan_aware_base):
    """Pitfall (b) on real text: the tiny Tibetan-aware base extended from 40 Tibet Times
    articles, measured on the held-out dev-conllu target pieces."""
    from langadapt.corpus import iter_texts

    news = sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir())[:40]
    train = list(iter_texts(news, BO))
    data = json.loads(tibetan_aware_base.backend_tokenizer.to_str())
    _, pattern = script_aware_pre_tokenizer(data["pre_tokenizer"], BO)
    trained, _ = train_target_bpe(iter(train), pattern, target_pattern(BO), 256 + 1500)
    tok, report = build_extended(tibetan_aware_base, trained, 1000, BO)
    alone = bpe_alone(trained[:report["trained_merges_used"]], pattern)
    dev = _dev_texts(shared_data)
    ext, ref = target_piece_tokens(tok.backend_tokenizer, dev, BO), target_piece_tokens(alone, dev, BO)
    assert ext <= 1.01 * ref
    assert (ext, ref) == (38323, 38345)


@pytest.fixture(scope="module")
def smol_extended(request):
    shared_data = request.getfixturevalue("shared_data")
    from langadapt.corpus import iter_texts
    from langadapt.tokenizer.load import load_tokenizer

    base = load_tokenizer("smollm2-135m")
    news = sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir())[:150]
    train = list(iter_texts(news, BO))
    # What extend_byte_level_bpe does, in its two steps, to keep the trained merges for comparison.
    _, pattern = script_aware_pre_tokenizer(json.loads(base.backend_tokenizer.to_str())["pre_tokenizer"], BO)
    trained, _ = train_target_bpe(iter(train), pattern, target_pattern(BO), 256 + 3500)
    tok, report = build_extended(base, trained, 3000, BO)
    alone = bpe_alone(trained[:report["trained_merges_used"]], pattern)
    return base, tok, report, alone


@pytest.mark.slow
def test_smollm2_extension_on_real_tibetan(shared_data, smol_extended):
    base, tok, report, alone = smol_extended
    dev = _dev_texts(shared_data)
    units = sum(BO.count_units(t) for t in dev)
    before = sum(len(base(t, add_special_tokens=False)["input_ids"]) for t in dev)
    after = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in dev)
    seed = tok.tokenize(TIBETAN_SEED_SENTENCE)
    print(f"SmolLM2 {before / units:.3f} -> extended (+3000) {after / units:.3f} tokens/syllable; "
          f"seed sentence {len(seed)} pieces")
    assert report["tokens_added"] == 3000 and len(tok) == 49152 + 3000
    assert before / units > 8
    assert after / units < 1.2
    assert len(seed) < 25
    assert all(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in dev)
    # Pitfall (b): merged tokens vs the trained BPE alone, on the same held-out target pieces.
    ext_pieces = target_piece_tokens(tok.backend_tokenizer, dev, BO)
    alone_pieces = target_piece_tokens(alone, dev, BO)
    print(f"held-out Tibetan pieces: extended {ext_pieces} tokens, trained BPE alone {alone_pieces}")
    assert ext_pieces <= 1.01 * alone_pieces
    assert (ext_pieces, alone_pieces, len(seed), before, after, units) == (31010, 31068, 21, 256174, 31399, 30700)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=NON_TIBETAN)
def test_smollm2_text_without_tibetan_keeps_its_ids(smol_extended, text):
    base, tok, _, _ = smol_extended
    assert tok(text)["input_ids"] == base(text)["input_ids"]
