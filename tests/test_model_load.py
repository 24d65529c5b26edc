"""Loading tokenizers (HF dir, SentencePiece .model, GGUF incl. vocab-only) and models; `model info`."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.model.load import format_model_info, human_count, load_model, model_info
from langadapt.tokenizer.load import load_tokenizer, sentencepiece_model_path, tokenizer_kind

# Strings beyond llama.cpp's test set: Tibetan, Korean, Chinese, mixed spacing, special-looking text.
EXTRA_STRINGS = [
    TIBETAN_SEED_SENTENCE,
    "대한민국은 민주공화국이다.  모든 권력은 국민으로부터 나온다.",
    "我想在apple工作，你呢？",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n",
    "ü é ñ ß Ω ≈ ∑ 🙂",
]


def llama_cpp_cases(shared_data):
    """(text, expected ids) from llama.cpp's tokenizer test for the Llama SPM vocabulary.

    The .inp file separates texts with "\\n__ggml_vocab_test__\\n"; the .out file has one line
    of ids per text. Splitting gives 47 pieces (the last one empty, as is the .out's last line).
    """
    base = shared_data / "tokenizers" / "llama.cpp-vocab" / "ggml-vocab-llama-spm.gguf"
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(ids) == 47
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


@pytest.fixture(scope="module")
def llama2_model(shared_data):
    return shared_data / "tokenizers" / "llama2" / "tokenizer.model"


@pytest.fixture(scope="module")
def llama2_tok(llama2_model):
    return load_tokenizer(llama2_model)


@pytest.fixture(scope="module")
def llama2_sp(llama2_model):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(llama2_model))


# ----------------------------------------------------------------------------- HF dirs

def test_tiny_tokenizer_dir(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert len(tok) == 512
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tokenizer_kind(tok) == "byte-level-bpe"
    text = "대한민국 Hello world, 2024!"
    assert tok.decode(tok.encode(text)) == text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) \
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert sentencepiece_model_path(tiny_tokenizer_dir) is None


def test_model_dir_tokenizer(tiny_llama_dir, tiny_tokenizer_dir):
    text = "The capital of France is Paris."
    assert load_tokenizer(tiny_llama_dir).encode(text) == load_tokenizer(tiny_tokenizer_dir).encode(text)


# ----------------------------------------------------------------------------- SentencePiece

def test_spm_model_matches_sentencepiece(llama2_tok, llama2_sp, llama2_model, shared_data):
    # The seed sentence: 81 tokens without BOS (82 with the BOS that encode() adds by default).
    ids = llama2_tok.encode(TIBETAN_SEED_SENTENCE, add_special_tokens=False)
    assert len(ids) == 81
    assert ids == llama2_sp.encode(TIBETAN_SEED_SENTENCE)
    assert llama2_tok.encode(TIBETAN_SEED_SENTENCE) == [1] + ids
    assert tokenizer_kind(llama2_tok) == "sentencepiece"
    assert len(llama2_tok) == 32000
    assert (llama2_tok.bos_token, llama2_tok.eos_token, llama2_tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert sentencepiece_model_path(llama2_model) == llama2_model
    texts = [t for t, _ in llama_cpp_cases(shared_data)] + EXTRA_STRINGS
    for text in texts:
        ours = llama2_tok.encode(text, add_special_tokens=False)
        assert ours == llama2_sp.encode(text), repr(text)
        assert llama2_tok.decode(ours) == llama2_sp.decode(ours), repr(text)


def test_spm_special_token_text_is_special(llama2_tok, llama2_sp):
    # The one deliberate difference from sentencepiece: like every transformers tokenizer,
    # "<s>"/"</s>" written in the text are the special tokens (chat templates rely on it);
    # sentencepiece spells them out as ordinary pieces.
    assert llama2_tok.encode("<s>hi</s>", add_special_tokens=False) == [1, 7251, 2]
    assert llama2_sp.encode("<s>hi</s>")[:3] == [529, 29879, 29958]


def test_spm_matches_llama_cpp_expected_ids(llama2_tok, shared_data):
    for text, expected in llama_cpp_cases(shared_data):
        assert llama2_tok.encode(text, add_special_tokens=False) == expected, repr(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_spm_matches_sentencepiece_on_any_text(llama2_tok, llama2_sp, text):
    assert llama2_tok.encode(text, add_special_tokens=False) == llama2_sp.encode(text)


def test_spm_dir_with_only_tokenizer_model(shared_data):
    import sentencepiece as spm

    folder = shared_data / "tokenizers" / "chinese-llama-2"  # tokenizer.model + config, no tokenizer.json
    tok = load_tokenizer(folder)
    assert sentencepiece_model_path(folder) == folder / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert len(tok) == sp.get_piece_size() == 55296
    for text in EXTRA_STRINGS:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), repr(text)
    assert tokenizer_kind(tok) == "sentencepiece"


def test_unigram_spm_model(shared_data):
    import sentencepiece as spm

    path = shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model"
    tok = load_tokenizer(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert len(tok) == 20000
    assert tokenizer_kind(tok) == "sentencepiece"
    for text, _ in llama_cpp_cases(shared_data):
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), repr(text)


# ----------------------------------------------------------------------------- GGUF

def test_vocab_only_gguf_matches_llama_cpp(shared_data):
    path = shared_data / "tokenizers" / "llama.cpp-vocab" / "ggml-vocab-llama-spm.gguf"
    tok = load_tokenizer(path)
    assert len(tok) == 32000
    assert tokenizer_kind(tok) == "sentencepiece"
    assert sentencepiece_model_path(path) is None
    cases = llama_cpp_cases(shared_data)
    mismatches = [text for text, expected in cases if tok.encode(text, add_special_tokens=False) != expected]
    assert mismatches == []
    assert len(tok.encode(TIBETAN_SEED_SENTENCE, add_special_tokens=False)) == 81


def test_model_gguf_tokenizer(tiny_llama_gguf, tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LANGADAPT_HOME", str(tmp_path))
    tok = load_tokenizer(tiny_llama_gguf)
    text = "대한민국 Hello world, 2024!"
    assert tok.encode(text) == load_tokenizer(tiny_tokenizer_dir).encode(text)
    assert tokenizer_kind(tok) == "byte-level-bpe"


def test_tokenizer_kind_other():
    from tokenizers import Tokenizer, models, pre_tokenizers

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    assert tokenizer_kind(wordpiece) == "other"


# ----------------------------------------------------------------------------- tokenizer errors

def test_tokenizer_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(LangadaptError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\xff\xfe not protobuf at all \x00\x01")
    with pytest.raises(LangadaptError, match=r"junk.model: not a tokenizer"):
        load_tokenizer(junk)
    fake = tmp_path / "fake.gguf"
    fake.write_text("hello")
    with pytest.raises(LangadaptError, match=r"fake.gguf: not a GGUF file"):
        load_tokenizer(fake)
    with pytest.raises(LangadaptError, match="no such file or directory"):
        load_tokenizer(tmp_path / "missing" / "tokenizer.model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LangadaptError, match=r"'some-org/no-such-model' is not a local path and could not be loaded"):
        load_tokenizer("some-org/no-such-model")


# ----------------------------------------------------------------------------- models

def test_load_model_from_dir(tiny_llama_dir, tiny_llama_tied_dir):
    import torch

    model = load_model(tiny_llama_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == 512 and model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    tied = load_model(tiny_llama_tied_dir, dtype="bfloat16")
    assert tied.dtype == torch.bfloat16
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    with pytest.raises(LangadaptError, match="unknown dtype 'float33'"):
        load_model(tiny_llama_dir, dtype="float33")


def test_load_model_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(LangadaptError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(LangadaptError, match="weights.bin: not a model"):
        load_model(tmp_path / "weights.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LangadaptError) as err:
        load_model("some-org/no-such-model")
    assert "\n" not in str(err.value) and "Hugging Face hub" in str(err.value)


def test_human_count():
    assert [human_count(n) for n in (999, 147_776, 134_515_008, 6_738_415_616)] == \
        ["999", "147.8K", "134.5M", "6.74B"]


def test_model_info_tiny(tiny_llama_dir, tiny_llama_tied_dir):
    start = time.perf_counter()
    info = model_info(tiny_llama_dir)
    assert time.perf_counter() - start < 10
    # embeddings 512*64 twice (untied) + 2 layers * (4*64*64 attn + 3*64*128 mlp + 2*64 norms) + 64 final norm
    assert info["parameters"] == 2 * 512 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 == 147_776
    assert {k: info[k] for k in ("architecture", "model_type", "parameters_human", "vocab_size",
                                 "tokenizer_vocab_size", "tokenizer_kind", "tied_embeddings", "chat_template",
                                 "hidden_size", "num_layers", "num_heads", "num_kv_heads", "context_length",
                                 "dtype")} == {
        "architecture": "LlamaForCausalLM", "model_type": "llama", "parameters_human": "147.8K",
        "vocab_size": 512, "tokenizer_vocab_size": 512, "tokenizer_kind": "byte-level-bpe",
        "tied_embeddings": False, "chat_template": True, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 4, "context_length": 256, "dtype": "float32"}
    assert info["loaded_from"] == str(tiny_llama_dir)
    tied = model_info(tiny_llama_tied_dir)
    assert tied["tied_embeddings"] is True and tied["parameters"] == 147_776 - 512 * 64
    text = format_model_info(info)
    assert "LlamaForCausalLM" in text and "147.8K (147,776)" in text and "byte-level BPE" in text
    assert "tied embeddings no" in text and "chat template   yes" in text


def test_meta_parameter_count_matches_safetensors(tiny_llama_dir, tiny_llama_tied_dir):
    # The count used for hub models (built on the meta device, no weights) agrees with the headers.
    from transformers import AutoConfig

    from langadapt.model.load import _meta_parameter_count

    assert _meta_parameter_count(AutoConfig.from_pretrained(tiny_llama_dir)) == 147_776
    assert _meta_parameter_count(AutoConfig.from_pretrained(tiny_llama_tied_dir)) == 147_776 - 512 * 64


def test_model_info_cli(tiny_llama_dir, capsys):
    assert main(["model", "info", str(tiny_llama_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 147_776 and info["tokenizer_kind"] == "byte-level-bpe"
    assert main(["model", "info", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "hidden size 64, 2 layers, 4 heads" in out


def test_model_info_cli_error(tmp_path, capsys):
    assert main(["model", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a model directory (no config.json)" in err


# ----------------------------------------------------------------------------- the real embedded model

@pytest.mark.slow
def test_embedded_default_through_alias(tmp_path, monkeypatch):
    """Convert the embedded SmolLM2 GGUF into a fresh LANGADAPT_HOME, check it, then reload from the cache."""
    import torch

    from langadapt.sources import resolve_model_source

    monkeypatch.setenv("LANGADAPT_HOME", str(tmp_path))
    start = time.perf_counter()
    model = load_model("smollm2-135m")
    convert_s = time.perf_counter() - start
    tok = load_tokenizer("smollm2-135m")
    cache = resolve_model_source("smollm2-135m")
    assert cache.parent == tmp_path / "models"
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.tie_word_embeddings is True
    assert tokenizer_kind(tok) == "byte-level-bpe"
    assert tok.chat_template
    info = model_info("smollm2-135m")
    assert (info["architecture"], info["parameters_human"], info["tied_embeddings"], info["chat_template"]) == \
        ("LlamaForCausalLM", "134.5M", True, True)

    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris")

    stat = cache.stat()
    weights = (cache / "model.safetensors").stat()
    start = time.perf_counter()
    load_model("smollm2-135m")
    cached_s = time.perf_counter() - start
    assert cache.stat().st_ino == stat.st_ino and cache.stat().st_mtime_ns == stat.st_mtime_ns
    assert (cache / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns
    print(f"\nconversion + load: {convert_s:.1f} s, cached load: {cached_s:.2f} s")
