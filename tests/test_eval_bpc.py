"""`langadapt eval bpc`: sliding-window NLL turned into bits per character and per byte."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.corpus import read_text
from langadapt.model.score import bpc_of_text, score_ids, segment_bits_per_char, standard_error, window_spans
from langadapt.model.fingerprint import model_fingerprint
from langadapt.model.score import cached_score, score_cache_key, score_text_cached

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


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh LANGADAPT_HOME (score cache, file-hash memo) for one test."""
    monkeypatch.setenv("LANGADAPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


def score_ids_reference(model, ids, context, stride):
    """The straightforward computation: one window per forward, every logit of the window, fp32
    log_softmax over the whole vocabulary, the scored positions picked afterwards."""
    nll = 0.0
    with torch.no_grad():
        for begin, end, start in window_spans(len(ids), context, stride):
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].float(), -1)
            targets = torch.tensor(ids[start:end])
            nll -= logp[start - begin - 1:end - begin - 1].gather(1, targets[:, None]).sum().item()
    return nll, len(ids) - 1 if len(ids) > 1 else 0


@pytest.mark.parametrize("context,stride,n,batch_tokens", [
    (16, 5, 200, 4096),   # ragged last window (199 targets: 15 + 36 * 5 + 4)
    (16, 8, 200, 32),     # two windows per forward
    (16, 15, 97, 16),     # one window per forward, stride context - 1
    (8, 1, 40, 4096),     # stride 1: every window scores one token
    (64, 32, 64, 4096),   # exactly one full window
    (64, 32, 65, 4096),   # one full window and a window scoring one token
    (512, 256, 23, 4096),  # a text shorter than one window
    (16, 5, 2, 4096),     # one target
])
def test_fast_scoring_equals_the_straightforward_computation(tiny, context, stride, n, batch_tokens):
    model, tok = tiny
    ids = ([tok.bos_token_id] + tok(TEXT * 4, add_special_tokens=False)["input_ids"])[:n]
    assert len(ids) == n
    fast, scored = score_ids(model, ids, context, stride, progress=False, batch_tokens=batch_tokens)
    ref, ref_scored = score_ids_reference(model, ids, context, stride)
    assert scored == ref_scored == n - 1
    assert fast == pytest.approx(ref, rel=1e-5)


def test_a_model_that_post_processes_its_logits_is_scored_through_its_own_forward(tiny_llama_dir):
    """A model whose logits are not just the LM head (here: doubled, like soft-capping or scaling)
    keeps its own logits in the exact path, and is refused under autocast."""
    from transformers import LlamaForCausalLM

    class DoubledLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    model = DoubledLogits.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = list(range(3, 60))
    fast, _ = score_ids(model, ids, 16, 8, progress=False)
    assert fast == pytest.approx(score_ids_reference(model, ids, 16, 8)[0], rel=1e-5)
    with pytest.raises(LangadaptError, match="cannot be scored under autocast"):
        score_ids(model, ids, 16, 8, progress=False, autocast="bfloat16")


@pytest.mark.slow
def test_fast_scoring_equals_the_straightforward_computation_on_smollm2():
    from langadapt.model.load import load_model
    from langadapt.tokenizer.load import load_tokenizer

    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m", dtype="float32").eval()
    text = read_text(["embedded:ko-heldout"], "ko", max_chars=700)
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1100  # five windows of 512 at stride 256, the last one ragged
    fast, scored = score_ids(model, ids, 512, 256, progress=False)
    ref, _ = score_ids_reference(model, ids, 512, 256)
    assert scored == len(ids) - 1
    assert fast == pytest.approx(ref, rel=1e-5)


def test_autocast_scoring_is_close_to_exact(tiny):
    model, tok = tiny
    ids = [tok.bos_token_id] + tok(TEXT * 2, add_special_tokens=False)["input_ids"]
    exact, n = score_ids(model, ids, 32, 16, progress=False)
    mixed, _ = score_ids(model, ids, 32, 16, progress=False, autocast="bfloat16")
    assert mixed != exact and mixed == pytest.approx(exact, rel=1e-2)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left as it was
    with pytest.raises(LangadaptError, match="autocast must be bfloat16 or float16"):
        score_ids(model, ids, 32, 16, progress=False, autocast="float64")


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


def test_segment_bits_per_char_cuts_the_characters_into_equal_stretches():
    ln2 = math.log(2)
    # tokens ending at chars 30, 50 (stretch 1: chars 0-50), 51 and 100 (stretch 2: 50-100)
    got = segment_bits_per_char(np.array([ln2, ln2, 2 * ln2, 4 * ln2]), np.array([30, 50, 51, 100]), 100, segments=2)
    assert got == pytest.approx([2 / 50, 6 / 50])
    assert segment_bits_per_char(np.array([1.0]), np.array([60]), 60) == []  # one stretch of 50 chars: no spread
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_the_stretches_add_up_to_bits_per_char_and_give_its_standard_error(tiny):
    model, tok = tiny
    text = (TEXT + "\n") * 6
    r = bpc_of_text(model, tok, text, context=32, stride=16, progress=False)
    segments = r["segment_bits_per_char"]
    assert len(segments) == min(20, len(text) // 50) and len(segments) > 5
    bounds = np.linspace(0, len(text), len(segments) + 1).round()
    assert np.dot(segments, np.diff(bounds)) / len(text) == pytest.approx(r["bits_per_char"], abs=1e-3)
    assert r["bits_per_char_se"] == pytest.approx(np.std(segments, ddof=1) / math.sqrt(len(segments)), abs=1e-4)
    assert 0 < r["bits_per_char_se"] < r["bits_per_char"]


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


def test_cli_writes_json_with_max_chars(tiny_llama_dir, tmp_path, capsys, home):
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


# ----------------------------------------------------------------------------- score cache

@pytest.fixture
def model_copy(tiny_llama_dir, tmp_path):
    import shutil
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


def test_a_cached_score_equals_a_fresh_one_and_skips_the_model(home, model_copy, monkeypatch):
    fresh = score_text_cached(model_copy, TEXT, context=32, stride=16, progress=False)
    assert fresh["cached"] is False and len(list((home / "scores").glob("*.json"))) == 1
    monkeypatch.setattr("langadapt.model.load.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    again = score_text_cached(model_copy, TEXT, context=32, stride=16, progress=False)
    assert again["cached"] is True and {**again, "cached": False} == fresh
    monkeypatch.undo()
    monkeypatch.setenv("LANGADAPT_HOME", str(home))
    recomputed = score_text_cached(model_copy, TEXT, context=32, stride=16, progress=False, cache=False)
    assert recomputed["cached"] is False
    for field in ("bits_per_char", "bits_per_byte", "nll_nats", "tokens_scored", "perplexity"):
        assert recomputed[field] == fresh[field]


def test_the_cache_key_follows_weights_text_and_settings(home, model_copy):
    from safetensors.torch import load_file, save_file

    fingerprint = model_fingerprint(model_copy)
    assert model_fingerprint(model_copy) == fingerprint  # stable; the second time from the hash memo
    assert len(list((home / "file-hashes").glob("*.json"))) == len([p for p in model_copy.iterdir() if p.is_file()])
    key = score_cache_key(fingerprint, TEXT, 32, 16, "float32")
    for other in (score_cache_key(fingerprint, TEXT + ".", 32, 16, "float32"),
                  score_cache_key(fingerprint, TEXT, 64, 16, "float32"),
                  score_cache_key(fingerprint, TEXT, 32, 8, "float32"),
                  score_cache_key(fingerprint, TEXT, 32, 16, "bfloat16"),
                  score_cache_key(fingerprint, TEXT, 32, 16, "float32", autocast="bfloat16"),
                  score_cache_key(fingerprint, TEXT, 32, 16, "float32", device="cuda")):
        assert other != key

    before = score_text_cached(model_copy, TEXT, context=32, stride=16, progress=False)
    weights = load_file(str(model_copy / "model.safetensors"))
    weights["lm_head.weight"][5] += 1.0
    save_file(weights, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    changed = model_fingerprint(model_copy)
    assert changed != fingerprint
    after = score_text_cached(model_copy, TEXT, context=32, stride=16, progress=False)
    assert after["cached"] is False and after["nll_nats"] != before["nll_nats"]
    assert cached_score(score_cache_key(changed, TEXT, 32, 16, "float32"))["nll_nats"] == after["nll_nats"]
    (model_copy / "tokenizer_config.json").write_text("{}", encoding="utf-8")  # the tokenizer counts too
    assert model_fingerprint(model_copy) != changed


def test_cli_says_when_the_figure_comes_from_the_cache(home, model_copy, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text(TEXT + "\n", encoding="utf-8")
    argv = ["eval", "bpc", "--model", str(model_copy), "--text", str(f), "--context", "32", "--stride", "16"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "from the score cache" not in first
    assert main(argv + ["--json", str(tmp_path / "r.json")]) == 0
    second = capsys.readouterr().out
    assert "from the score cache" in second and json.loads((tmp_path / "r.json").read_text())["cached"] is True
    assert [line for line in first.splitlines() if "bits per" in line] == \
        [line for line in second.splitlines() if "bits per" in line]
    assert main(argv + ["--no-cache"]) == 0
    assert "from the score cache" not in capsys.readouterr().out
