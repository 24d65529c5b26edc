"""`langadapt eval bpc`: sliding-window NLL turned into bits per character and per byte."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.eval.bpc import bpc_of_text, read_text, score_ids, window_spans

TEXT = "The quick brown fox jumps over the lazy dog. 모든 국민은 법 앞에 평등하다. " + TIBETAN_SEED_SENTENCE


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), context=st.integers(2, 64), data=st.data())
def test_windows_score_every_target_once_with_enough_context(n, context, data):
    stride = data.draw(st.integers(1, context - 1))
    spans = window_spans(n, context, stride)
    scored = [p for _, end, start in spans for p in range(start, end)]
    assert scored == list(range(1, n))  # each target once, in order; position 0 is never a target
    for i, (begin, end, start) in enumerate(spans):
        assert 0 <= begin < start <= end <= n and end - begin <= context
        if i > 0:  # later windows: at least context - stride tokens before the first scored one
            assert end - start <= stride and start - begin >= min(context - stride, start)


def test_stride_must_be_below_context():
    with pytest.raises(LangadaptError, match="--stride must be between 1 and context-1"):
        window_spans(100, 8, 8)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


def test_sliding_window_nll_matches_token_by_token_reference(tiny):
    model, tok = tiny
    ids = [tok.bos_token_id] + tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 60
    context, stride = 16, 5
    nll, scored = score_ids(model, ids, context, stride, progress=False)
    # Reference: each target p predicted from exactly the positions of its window before p.
    ref = 0.0
    with torch.no_grad():
        for begin, end, start in window_spans(len(ids), context, stride):
            for p in range(start, end):
                logits = model(torch.tensor([ids[begin:p]])).logits[0, -1]
                ref -= torch.log_softmax(logits.float(), -1)[ids[p]].item()
    assert scored == len(ids) - 1
    assert nll == pytest.approx(ref, rel=1e-5)
    # One window holding everything equals a plain full forward.
    full, _ = score_ids(model, ids, len(ids) + 1, 1, progress=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    assert full == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]),
                                                                   reduction="sum").item(), rel=1e-6)


def test_bits_per_char_and_byte_from_the_summed_nll(tiny):
    model, tok = tiny
    r = bpc_of_text(model, tok, TEXT, context=32, stride=16, progress=False)
    n_tokens = len(tok(TEXT, add_special_tokens=False)["input_ids"])
    assert (r["characters"], r["bytes"], r["tokens"]) == (len(TEXT), len(TEXT.encode()), n_tokens)
    assert r["first_token_scored"] is True and r["tokens_scored"] == n_tokens  # BOS in front
    assert r["bits_per_char"] == pytest.approx(r["nll_nats"] / math.log(2) / len(TEXT), abs=1e-4)
    assert r["bits_per_byte"] == pytest.approx(r["nll_nats"] / math.log(2) / len(TEXT.encode()), abs=1e-4)
    assert r["perplexity"] == pytest.approx(math.exp(r["nll_nats"] / n_tokens), rel=1e-4)
    # An untrained model is near uniform over 512 tokens: about log2(512) = 9 bits per token.
    assert 8.0 < r["nll_nats"] / math.log(2) / n_tokens < 10.0


def test_without_bos_the_first_token_is_not_scored(tiny):
    model, tok = tiny
    tok = type(tok).from_pretrained(tok.name_or_path, bos_token=None)
    assert tok.bos_token_id is None
    r = bpc_of_text(model, tok, TEXT, context=32, stride=16, progress=False)
    assert r["first_token_scored"] is False and r["tokens_scored"] == r["tokens"] - 1


def test_read_text_joins_records_and_cuts_after_normalisation(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first line\n\nse\u0301cond line\nthird\n", encoding="utf-8")  # decomposed é
    assert read_text([f], "en") == "first line\nsécond line\nthird"  # empty line skipped, NFC
    assert read_text([f], "en", max_chars=14) == "first line\nséc"


def test_cli_writes_json_with_max_chars(tiny_llama_dir, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text((TEXT + "\n") * 3, encoding="utf-8")
    out = tmp_path / "bpc.json"
    assert main(["eval", "bpc", "--model", str(tiny_llama_dir), "--text", str(f), "--lang", "bo",
                 "--max-chars", "100", "--context", "64", "--stride", "32", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["characters"] == 100 and r["max_chars"] == 100 and r["context"] == 64
    assert f"bits per char   {r['bits_per_char']}" in capsys.readouterr().out


def test_cli_refuses_bad_stride_before_loading(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("text\n", encoding="utf-8")
    assert main(["eval", "bpc", "--model", str(tmp_path / "missing"), "--text", str(f),
                 "--context", "8", "--stride", "9"]) == 2
    assert "--stride must be between 1 and context-1 (7), got 9" in capsys.readouterr().err


def test_real_tibetan_text_read_through_profile(shared_data):
    text = read_text([shared_data / "bo" / "dev-conllu"], "bo", max_chars=2000)
    assert len(text) == 2000 and text.count("\n") > 5
    assert sum(0x0F00 <= ord(c) <= 0x0FFF for c in text) > 1500
