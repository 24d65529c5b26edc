"""Decoding shared by chat, serve and eval generate (`langadapt.model.generate`): the UTF-8 state machine
against Python's decoder, the UTF-8 mask with models forced to prefer invalid bytes (byte-level BPE and
SentencePiece byte fallback), the incremental decoder on Chinese, Tibetan and Korean from the SmolLM2 and
Llama-2 tokenizers, stop strings on text, cancellation."""

from __future__ import annotations

import itertools

import pytest
import torch
from fake_lm import RuleLM, preference_logits, scripted_rule
from hypothesis import given, settings
from hypothesis import strategies as st

from langadapt.model.batch import generate_text
from langadapt.model.generate import (CLOSED, STATES, Sampling, StopStrings, TextStream, Utf8Mask, Utf8Table,
                                      token_bytes, utf8_after)
from langadapt.tokenizer.load import load_tokenizer, tokenizer_kind

TEXTS = {
    "bo": "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།",
    "zh": "你好，世界！今天天气很好，我们去公园散步吧。",
    "ko": "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다.",
}


def _valid_prefix(data: bytes) -> bool:
    """Whether some bytes can follow `data` to make valid UTF-8 (Python's decoder decides)."""
    endings = [bytes(c) for k in range(4) for c in itertools.product((0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF), repeat=k)]
    return any(_complete(data + ending) for ending in endings)


def _complete(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ----------------------------------------------------------------------------- the state machine

@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=8) | st.text(max_size=4).map(lambda s: s.encode("utf-8")))
def test_utf8_states_agree_with_pythons_decoder(data):
    after = utf8_after(CLOSED, data)
    assert (after is not None) == _valid_prefix(data)
    assert (after == CLOSED) == _complete(data)
    if after is not None:
        assert after in STATES


# ----------------------------------------------------------------------------- token bytes

@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def byte_fallback_tok(tmp_path_factory):
    """A small SentencePiece BPE with byte fallback, trained here (Llama-2's kind of tokenizer)."""
    import sentencepiece as spm

    from conftest import TINY_CORPUS

    out = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TINY_CORPUS * 5), model_prefix=str(out / "sp"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2)
    return load_tokenizer(out / "sp.model")


@pytest.fixture(scope="module")
def smollm2_tok():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def llama2_tok(shared_data):
    return load_tokenizer(shared_data / "tokenizers" / "llama2" / "tokenizer.model")


TOKENIZERS = ["tiny_tok", "byte_fallback_tok", "smollm2_tok", "llama2_tok"]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_token_bytes_spell_the_text(name, request):
    tok = request.getfixturevalue(name)
    pieces = token_bytes(tok)
    for text in [*TEXTS.values(), "Hello, world! 123"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        spelt = b"".join(pieces[i] for i in ids).decode("utf-8")
        assert spelt.lstrip(" ") == text.lstrip(" ")  # SentencePiece's leading "▁" is the only difference
    assert all(pieces[i] is None for i in tok.all_special_ids)


# ----------------------------------------------------------------------------- the mask

def _byte_ids(tok) -> dict[int, int]:
    """{byte value: the id of the token that is exactly that byte}."""
    return {p[0]: i for i, p in enumerate(token_bytes(tok)) if p is not None and len(p) == 1}


@pytest.mark.parametrize("name", ["tiny_tok", "byte_fallback_tok"])
def test_a_model_that_prefers_invalid_bytes_writes_valid_text_under_the_mask(name, request):
    tok = request.getfixturevalue(name)
    byte = _byte_ids(tok)
    assert len(byte) == 256 and tokenizer_kind(tok) in ("byte-level-bpe", "sentencepiece")
    # First choices: bytes that never start a character, then the lead byte E0 (whose next byte must be
    # A0..BF, so 0x80 is wrong there too), then A0 and BF.
    preferred = [byte[b] for b in (0xFF, 0x80, 0xC0, 0xE0, 0xA0, 0xBF)]
    model = RuleLM(len(tok), lambda ids: preference_logits(len(tok), preferred).expand(ids.shape[0], -1),
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    prompt = torch.tensor([tok("hello", add_special_tokens=False)["input_ids"]])

    plain = model.generate(prompt, max_new_tokens=9, do_sample=False, pad_token_id=tok.eos_token_id)
    assert tok.decode(plain[0, prompt.shape[1]:]) == "\ufffd" * 9  # the model really prefers broken bytes

    table = Utf8Table(tok)
    masked = model.generate(prompt, max_new_tokens=9, do_sample=False, pad_token_id=tok.eos_token_id,
                            logits_processor=[Utf8Mask(table)])
    new = masked[0, prompt.shape[1]:].tolist()
    assert new == [byte[0xE0], byte[0xA0], byte[0x80]] * 3  # the best valid choice at every step
    assert tok.decode(new) == "\u0800" * 3

    result = generate_text(model, tok, table, prompt[0].tolist(), Sampling(max_new_tokens=10), [tok.eos_token_id])
    assert result.text == "\u0800" * 3 and result.finish_reason == "length"  # the cut 4th character is dropped
    assert result.completion_tokens == 10


def test_eval_generate_answers_under_the_mask(tiny_tok):
    """The report's sample answers (`eval generate`) come through the mask too."""
    from langadapt.eval.generate import generate_answers
    from langadapt.tokenizer.templates import BUILTIN_TEMPLATES

    byte = _byte_ids(tiny_tok)
    preferred = [byte[b] for b in (0xFF, 0x80, 0xC0, 0xE0, 0xA0, 0xBF)]
    model = RuleLM(len(tiny_tok), lambda ids: preference_logits(len(tiny_tok), preferred).expand(ids.shape[0], -1),
                   eos_token_id=tiny_tok.eos_token_id, pad_token_id=tiny_tok.eos_token_id)
    answers = generate_answers(model, tiny_tok, BUILTIN_TEMPLATES["chatml"], [[{"role": "user", "content": "hi"}]], 9)
    assert answers[0]["answer"] == "\u0800" * 3 and answers[0]["tokens"] == 9


@pytest.mark.parametrize("name", ["tiny_tok", "byte_fallback_tok"])
def test_sampling_from_noise_never_breaks_utf8(name, request):
    tok = request.getfixturevalue(name)
    byte_tokens = torch.tensor(sorted(_byte_ids(tok).values()))
    generator = torch.Generator().manual_seed(0)

    def noisy(ids):  # random logits, with the lone bytes made 20x likelier than the rest, and no EOS
        logits = torch.randn(ids.shape[0], len(tok), generator=generator)
        logits[:, byte_tokens] += 3.0
        logits[:, tok.eos_token_id] = -1e4
        return logits

    model = RuleLM(len(tok), noisy, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    table, pieces = Utf8Table(tok), token_bytes(tok)
    prompt = torch.tensor([tok("hi", add_special_tokens=False)["input_ids"]])
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=300, do_sample=True, top_k=0, pad_token_id=tok.eos_token_id,
                         logits_processor=[Utf8Mask(table)])
    data = b"".join(pieces[i] or b"" for i in out[0, prompt.shape[1]:].tolist())
    assert len(data) > 300 and _valid_prefix(data)
    unmasked = model.generate(prompt, max_new_tokens=300, do_sample=True, top_k=0, pad_token_id=tok.eos_token_id)
    assert not _valid_prefix(b"".join(pieces[i] or b"" for i in unmasked[0, prompt.shape[1]:].tolist()))


def test_special_tokens_only_between_characters(tiny_tok):
    table = Utf8Table(tiny_tok, width=len(tiny_tok) + 64)
    eos = tiny_tok.eos_token_id
    assert table.allowed[0, eos] and not table.allowed[1:, eos].any()
    assert not table.allowed[:, len(tiny_tok):].any()  # rows beyond the tokenizer are never chosen


# ----------------------------------------------------------------------------- text out

@pytest.mark.parametrize("name", ["smollm2_tok", "llama2_tok"])
@pytest.mark.parametrize("lang", sorted(TEXTS))
def test_decoder_streams_characters_and_equals_the_text(name, lang, request):
    tok = request.getfixturevalue(name)
    text = TEXTS[lang]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, Utf8Table(tok))
    chunks = [c for c in (stream.push(i) for i in ids) if c]
    chunks.append(stream.finish())
    assert "".join(chunks) == text == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in c for c in chunks)
    if lang == "bo":  # every syllable on its own, at least: no waiting for a space
        assert len(chunks) >= text.count("་") + 2
        assert all(c.count("་") <= 1 for c in chunks)


@pytest.mark.parametrize("name", ["smollm2_tok", "llama2_tok"])
def test_decoder_drops_a_character_cut_in_the_middle(name, request):
    tok = request.getfixturevalue(name)
    table, pieces = Utf8Table(tok), token_bytes(tok)
    ids = tok(TEXTS["bo"], add_special_tokens=False)["input_ids"]
    cut = next(k for k in range(1, len(ids)) if not _complete(b"".join(pieces[i] for i in ids[:k])))
    stream = TextStream(tok, table)
    text = "".join(stream.push(i) for i in ids[:cut]) + stream.finish()
    assert "\ufffd" not in text and TEXTS["bo"].startswith(text.lstrip(" ")) and len(text) < len(TEXTS["bo"])
    assert "\ufffd" in tok.decode(ids[:cut], skip_special_tokens=True)  # what a plain decode shows


# ----------------------------------------------------------------------------- stop strings

def _run_stops(chunks, stops):
    s = StopStrings(stops)
    out, stopped = [], False
    for c in chunks:
        shown, stopped = s.feed(c)
        out.append(shown)
    if not stopped:
        out.append(s.flush())
    return out, stopped


@pytest.mark.parametrize("chunks, stops, expected, stopped", [
    (["Hel", "lo ST", "OP more"], ["STOP"], ["Hel", "lo ", ""], True),     # spans chunks, held back
    (["ab S", "x"], ["STOP"], ["ab ", "Sx", ""], False),                       # a false start is released
    (["ab S"], ["STOP"], ["ab ", "S"], False),                                 # held text flushed at the end
    (["xabc"], ["b", "abc"], ["xa"], True),                                    # the first completed stop wins
    (["TSS"], ["S", "TSS"], ["T"], True),                                      # ... whatever the chunks
    (["STOP now"], ["STOP"], [""], True),                                      # at the very start
    (["a", "a", "a", "b", "c"], ["aab"], ["", "", "a", "", ""], True),          # overlapping false start
    (["\n", "\nUser:"], ["\n\nUser:"], ["", ""], True),                      # a newline held back
    (["abc"], [], ["abc", ""], False),                                         # no stops: nothing held
])
def test_stop_string_hold_back(chunks, stops, expected, stopped):
    assert _run_stops(chunks, stops) == (expected, stopped)


def _cut_character_by_character(text, stops):
    """The reference: the text up to the first stop string completed, reading one character at a time."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            return text[:end - max(map(len, ending))], True
    return text, False


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abST ", max_size=30), st.lists(st.text(alphabet="abST", min_size=1, max_size=4), max_size=3),
       st.randoms(use_true_random=False))
def test_stop_strings_cut_at_the_first_stop_whatever_the_chunking(text, stops, rnd):
    cuts = sorted(rnd.sample(range(len(text) + 1), k=min(len(text) + 1, rnd.randint(0, 6))))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    out, stopped = _run_stops(chunks, stops)
    assert ("".join(out), stopped) == _cut_character_by_character(text, stops)


# ----------------------------------------------------------------------------- whole generations

@pytest.fixture(scope="module")
def scripted(tiny_tok):
    """(model, tokenizer, table, script ids) of a model that says "Hello STOP world" then EOS."""
    script = tiny_tok("Hello STOP world", add_special_tokens=False)["input_ids"]
    model = RuleLM(len(tiny_tok), scripted_rule(script, len(tiny_tok), then=tiny_tok.eos_token_id),
                   eos_token_id=tiny_tok.eos_token_id, pad_token_id=tiny_tok.eos_token_id)
    return model, tiny_tok, Utf8Table(tiny_tok), script


def test_generation_streams_the_decoded_text_and_ends_at_eos(scripted):
    model, tok, table, script = scripted
    prompt = tok("Say it:", add_special_tokens=False)["input_ids"]
    pieces = []
    result = generate_text(model, tok, table, prompt, Sampling(max_new_tokens=50), [tok.eos_token_id],
                           on_text=pieces.append)
    assert result.text == "".join(pieces) == "Hello STOP world" == tok.decode(script)
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", len(prompt),
                                                                                      len(script) + 1)


def test_a_stop_string_spanning_tokens_is_cut_exactly(scripted):
    model, tok, table, script = scripted
    assert not any(tok.decode([i]) == "STOP" for i in script)  # "STOP" is more than one token here
    prompt = tok("Say it:", add_special_tokens=False)["input_ids"]
    pieces = []
    result = generate_text(model, tok, table, prompt, Sampling(max_new_tokens=50, stop=["OP w"]),
                           [tok.eos_token_id], on_text=pieces.append)
    assert result.text == "".join(pieces) == "Hello ST" and result.finish_reason == "stop"
    assert result.completion_tokens < len(script)  # generation stopped there, not at the end


def test_cancellation_is_checked_at_every_step(scripted):
    model, tok, table, script = scripted
    seen = []
    result = generate_text(model, tok, table, tok("x")["input_ids"], Sampling(max_new_tokens=50),
                           [tok.eos_token_id], on_text=seen.append, cancelled=lambda: len(seen) >= 2)
    assert result.finish_reason == "cancelled" and result.completion_tokens <= 3


def test_a_seed_makes_sampling_repeatable(tiny_tok):
    def rule(ids):
        return torch.zeros(ids.shape[0], len(tiny_tok))  # every token equally likely: only the draw decides

    model = RuleLM(len(tiny_tok), rule, eos_token_id=tiny_tok.eos_token_id, pad_token_id=tiny_tok.eos_token_id)
    table = Utf8Table(tiny_tok)
    runs = [generate_text(model, tiny_tok, table, [5, 6], Sampling(max_new_tokens=12, temperature=1.0, seed=s),
                          [tiny_tok.eos_token_id]).text for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
