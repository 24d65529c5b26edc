"""`langadapt demo` on the tiny model (the real embedded model is exercised by the slow test in
test_model_load.py; the demo itself only adds the corpus figures and the generation)."""

from __future__ import annotations

import importlib.util

import pytest

from langadapt.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("konlpy") is None,
                                reason="the embedded sample corpus needs konlpy (pip install --no-deps konlpy)")


def test_demo_on_tiny_model(tiny_llama_dir, capsys):
    from langadapt.corpus.embedded import embedded_corpus_paths
    from langadapt.corpus.stats import corpus_stats
    from langadapt.demo import DEMO_PROMPT, generate_answer, run_demo
    from langadapt.lang import get_profile
    from langadapt.model.load import load_model
    from langadapt.tokenizer.load import load_tokenizer

    result = run_demo(str(tiny_llama_dir), max_new_tokens=5)
    out = capsys.readouterr().out

    tok = load_tokenizer(tiny_llama_dir)
    expected = corpus_stats(embedded_corpus_paths(), get_profile("ko"), tokenizer=tok)
    assert result["corpus"]["tokens"] == expected["tokens"] > 0
    assert result["corpus"]["files"] == 11
    assert f"{expected['tokens']:,} tokens: {expected['tokens_per_character']:.2f} tokens per character, " \
           f"{expected['tokens_per_unit']:.2f} tokens per word" in out
    assert "LlamaForCausalLM (llama)" in out and "147.8K (147,776)" in out and "byte-level BPE" in out

    # The answer is the greedy continuation of the chat-formatted prompt: same text when redone.
    model = load_model(tiny_llama_dir)
    answer, n_new = generate_answer(model, tok, DEMO_PROMPT, 5)
    assert (result["answer"], result["new_tokens"]) == (answer, n_new)
    assert 1 <= n_new <= 5
    assert f"prompt: {DEMO_PROMPT}" in out and f"answer: {answer}" in out


def test_demo_cli(tiny_llama_dir, capsys):
    assert main(["demo", "--model", str(tiny_llama_dir), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "[1] base model" in out and "[2] sample corpus" in out and "[3] greedy generation" in out


def test_demo_bad_model(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nope.gguf")]) == 2
    assert "nope.gguf: no such file" in capsys.readouterr().err
