"""Language profiles: units, normalisation fixes (each one), sentence splitting, script share."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.lang import get_profile

BO = get_profile("bo")
ZH = get_profile("zh")
KO = get_profile("ko")
EN = get_profile("en")


# ----------------------------------------------------------------------------- units

def test_seed_sentence_has_16_units():
    assert BO.count_units(TIBETAN_SEED_SENTENCE) == 16
    assert BO.units(TIBETAN_SEED_SENTENCE) == [
        "ཁྱོད", "ཀྱི", "གདོང", "ནི", "པད", "མ", "བཞིན", "།", "།",
        "མིག", "དག", "ཨུཏྤལ", "སྔོན", "པོ", "བཞིན", "།",
    ]
    assert BO.unit_name == "syllables+shads"


def test_tibetan_units_split_on_whitespace_and_both_tshegs():
    assert BO.units("བཀྲ་ཤིས༌བདེ་ལེགས། 2016 abc") == ["བཀྲ", "ཤིས", "བདེ", "ལེགས", "།", "2016", "abc"]
    assert BO.units("༄༅། །") == ["༄", "༅", "།", "།"]


def test_chinese_units_han_characters_and_one_per_latin_word_or_number():
    assert ZH.units("我有3个apple, 和 GPT-4。") == ["我", "有", "3", "个", "apple", "和", "GPT", "4"]
    assert ZH.count_units("2016年") == 2
    assert ZH.unit_name == "characters"


def test_korean_and_english_count_whitespace_words():
    assert KO.count_units("대한민국은 민주공화국이다.") == 2
    assert EN.units("Hello,  world!\tagain") == ["Hello,", "world!", "again"]
    assert (KO.unit_name, EN.unit_name) == ("words", "words")


# ----------------------------------------------------------------------------- sentences

def test_tibetan_sentences_keep_their_shads():
    assert BO.split_sentences(TIBETAN_SEED_SENTENCE) == [
        "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།", "མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།"]
    # "། །" closes the sentence before it; head marks with no words join the next sentence.
    assert BO.split_sentences("༄༅༅། །རྒྱ་གར་སྐད་དུ། བི་ན་ཡ། །ཁྱིམ་༎") == [
        "༄༅༅། །རྒྱ་གར་སྐད་དུ།", "བི་ན་ཡ། །", "ཁྱིམ་༎"]


def test_cjk_and_latin_sentences():
    assert ZH.split_sentences("你好。今天天气好吗？“好的！”他说") == ["你好。", "今天天气好吗？", "“好的！”", "他说"]
    assert EN.split_sentences("It is 3.14 now. Really?! Yes") == ["It is 3.14 now.", "Really?!", "Yes"]
    assert KO.split_sentences("안녕하세요. 반갑습니다!") == ["안녕하세요.", "반갑습니다!"]
    assert EN.split_sentences("   ") == []


# ----------------------------------------------------------------------------- Tibetan fixes

def test_nfc_decomposes_discouraged_vowel_signs_and_stacks():
    assert BO.normalize("\u0f40\u0f73") == "\u0f40\u0f71\u0f72"  # ཱི
    assert BO.normalize("\u0f40\u0f75") == "\u0f40\u0f71\u0f74"  # ཱུ
    assert BO.normalize("\u0f40\u0f81") == "\u0f40\u0f71\u0f80"  # ཱྀ
    assert BO.normalize("\u0f43") == "\u0f42\u0fb7"  # གྷ
    assert BO.normalize("\u0f51\u0f93") == "\u0f51\u0f92\u0fb7"  # subjoined གྷ


def test_compatibility_only_vowels_u0f77_u0f79_are_decomposed():
    assert unicodedata.normalize("NFC", "\u0f40\u0f77") == "\u0f40\u0f77"  # NFC alone keeps it
    assert BO.normalize("\u0f40\u0f77") == "\u0f40\u0fb2\u0f71\u0f80"
    assert BO.normalize("\u0f40\u0f79") == "\u0f40\u0fb3\u0f71\u0f80"


def test_non_breaking_tsheg_becomes_tsheg():
    assert BO.normalize("དང\u0f0c།") == "དང\u0f0b།"


def test_vowel_before_subjoined_letter_is_reordered():
    # ཀ + i + subjoined ya renders like ཀྱི; the canonical order is consonant, subjoined, vowel.
    assert BO.normalize("\u0f40\u0f72\u0fb1") == "\u0f40\u0fb1\u0f72"
    assert BO.normalize("\u0f66\u0f7c\u0f92\u0fb2") == "\u0f66\u0f92\u0fb2\u0f7c"
    # two vowels split by a subjoined letter: all subjoined first, vowels in canonical order
    assert BO.normalize("\u0f40\u0f72\u0fb1\u0f71") == "\u0f40\u0fb1\u0f71\u0f72"


def test_vowel_sign_order_is_canonical():
    assert BO.normalize("\u0f50\u0f74\u0f7c") == "\u0f50\u0f7c\u0f74"  # u (ccc 132) after o (ccc 130)


def test_space_after_final_shad_is_removed_but_spaces_between_shads_kept():
    assert BO.normalize("ལོ། ") == "ལོ།"
    assert BO.normalize("ལོ། \t\nགང་། །ཀ") == "ལོ།\nགང་། །ཀ"
    assert BO.normalize("ལོ་ ") == "ལོ་ "  # only after a shad


def test_real_file_changes_under_nfc(shared_data):
    # Tibet Times 2016-01-06 spells གྷ/བྷ/དྷ with precomposed U+0F43/U+0F57/U+0F52.
    path = shared_data / "bo/news-tibettimes-2016/2016-01-06-144219.txt"
    raw = path.read_text(encoding="utf-8")
    assert raw.count("\u0f43") == 3 and raw.count("\u0f57") == 4
    norm = BO.normalize(raw)
    assert norm != raw
    assert "\u0f43" not in norm and "\u0f57" not in norm
    assert len(norm) == len(raw) + 9  # each of the 9 precomposed letters becomes two code points
    assert BO.normalize(norm) == norm
    # and a file where only the vowel order changes: ུ + ོ -> ོ + ུ
    path = shared_data / "bo/news-tibettimes-2016/2016-09-03-151156.txt"
    raw = path.read_text(encoding="utf-8")
    assert "\u0f74\u0f7c" in raw and "\u0f74\u0f7c" not in BO.normalize(raw)


def test_real_file_with_non_breaking_tsheg(shared_data):
    raw = (shared_data / "bo/news-tibettimes-2016/2016-01-01-143940.txt").read_text(encoding="utf-8")
    assert raw.count("\u0f0c") == 1 and "དང\u0f0c།" in raw
    assert unicodedata.normalize("NFC", raw) == raw
    assert "\u0f0c" not in BO.normalize(raw)


# ----------------------------------------------------------------------------- script

def test_script_share_counts_letters_and_marks_only():
    assert BO.script_share("བཀྲ་ཤིས abc 123 !!") == pytest.approx(6 / 9)  # བ ཀ ྲ ཤ ི ས vs a b c
    assert BO.script_share("123 ...") == 0.0
    assert ZH.script_share("中文ab") == 0.5
    assert KO.script_share("한국어") == 1.0
    assert EN.script_share("naïve") == 1.0
    assert BO.is_target_char("ཀ") and not BO.is_target_char("a")
    assert ZH.is_target_char("〇") and not ZH.is_target_char("。")


def test_generic_profile_for_other_codes():
    p = get_profile("mn")
    assert (p.code, p.unit_name) == ("mn", "words")
    assert p.script_share("Монгол 12") == 1.0
    assert p.normalize("e\u0301") == "\u00e9"
    assert get_profile("zh-Hans") is ZH and get_profile("BO") is BO


# ----------------------------------------------------------------------------- properties

TIBETAN_HEAVY = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x0F00, max_codepoint=0x0FFF),
        st.sampled_from(" \t\n་།"),
        st.characters(),
    ),
    max_size=40,
)


@pytest.mark.parametrize("code", ["bo", "zh", "ko", "en", "xx"])
@settings(max_examples=300, deadline=None)
@given(text=TIBETAN_HEAVY)
def test_normalize_is_idempotent(code, text):
    p = get_profile(code)
    once = p.normalize(text)
    assert p.normalize(once) == once
    assert unicodedata.is_normalized("NFC", once)


@settings(max_examples=200, deadline=None)
@given(text=TIBETAN_HEAVY)
def test_tibetan_units_never_contain_separators(text):
    units = BO.units(text)
    assert BO.count_units(text) == len(units)
    assert all(u and not any(ch.isspace() or ch in "\u0f0b\u0f0c" for ch in u) for u in units)


def test_tibetan_syllables_exclude_punctuation():
    from langadapt.lang.tibetan import tibetan_syllables

    assert len(tibetan_syllables(TIBETAN_SEED_SENTENCE)) == 13
    assert tibetan_syllables("༄༅། །བོད་ABC 12 ཡིག།") == ["བོད", "ཡིག"]
