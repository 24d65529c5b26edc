"""`langadapt export gguf`: the file transformers and llama.cpp read back, with the same logits and ids.

Tests marked `llama_cpp` load the file in llama.cpp (the `llama-cpp-python` bindings, extra `gguf`);
they skip with the reason when it is not installed. The others check the file with transformers'
own GGUF reader and the `gguf` package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.export.gguf import ADAPTATION_KEY, EXPORT_CHECK_TEXTS, permute_qk
from conftest import TIBETAN_SEED_SENTENCE
from train_fixtures import NEW_TOKENS, extended_tiny_dir, extended_tiny_tied_dir, train_corpus  # noqa: F401

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed "
                                                                "(pip install 'langadapt[gguf]'; see the README)")
IDS = torch.tensor([[1, 40, 200, 300, 7, 9, 2, 100, 511]])


def _export(model, out: Path, *extra) -> Path:
    assert main(["--debug", "export", "gguf", str(model), "--out", str(out), *extra]) == 0
    return out


def _gguf_fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING and len(field.types) == 1:
            fields[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
        elif field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            fields[name] = field.parts[field.data[0]].tolist()[0]
    fields["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def test_permute_qk_interleaves_rotary_halves():
    w = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3).numpy()
    p = permute_qk(w, 2)
    # llama.cpp interleaves each head's two rotary halves: rows (0,2,1,3) within a head of 4
    assert p[:4, 0].tolist() == [0.0, 6.0, 3.0, 9.0] and p[4:, 0].tolist() == [12.0, 18.0, 15.0, 21.0]


@pytest.mark.parametrize("kind, tolerance", [("f32", 1e-5), ("f16", 2e-2), ("q8_0", 5e-2)])
def test_transformers_reads_back_the_same_model(tiny_llama_dir, tmp_path, kind, tolerance):
    out = _export(tiny_llama_dir, tmp_path / f"tiny-{kind}.gguf", "--type", kind, "--skip-check")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    error = (_logits(back) - _logits(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))).abs().max().item()
    assert error < tolerance
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    base = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for text in EXPORT_CHECK_TEXTS[:4]:
        assert tok.encode(text, add_special_tokens=False) == base.encode(text, add_special_tokens=False)

    fields = _gguf_fields(out)
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # tokenizers' ByteLevel(use_regex) is GPT-2's rule
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.chat_template"] == base.chat_template
    assert "output.weight" in fields["tensors"]  # untied head written
    assert fields["tensors"]["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[kind]
    assert fields["tensors"]["blk.0.attn_norm.weight"] == "F32"
    lineage = json.loads(fields[ADAPTATION_KEY])
    assert lineage["step"] == "export-gguf" and lineage["type"] == kind


def test_tied_head_is_not_written_and_lineage_is_carried(extended_tiny_tied_dir, tmp_path):
    out = _export(extended_tiny_tied_dir, tmp_path / "ext.gguf", "--type", "f32", "--skip-check")
    fields = _gguf_fields(out)
    assert "output.weight" not in fields["tensors"]
    lineage = json.loads(fields[ADAPTATION_KEY])
    assert [r["step"] for r in lineage["history"]][-1] == "model-extend"
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    ids = torch.tensor([[1, 40, 512, 513, 514, 515, 2]])
    assert (_logits(back, ids) - _logits(AutoModelForCausalLM.from_pretrained(extended_tiny_tied_dir), ids)
            ).abs().max() < 1e-5


def test_bad_input_gives_clear_errors(tiny_llama_dir, tmp_path):
    existing = tmp_path / "x.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(LangadaptError, match="already exists; choose another --out or pass --overwrite"):
        main(["--debug", "export", "gguf", str(tiny_llama_dir), "--out", str(existing), "--skip-check"])
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(LangadaptError, match="--type must be one of .*q4_k_m.*got 'q4_k_x'"):
        main(["--debug", "export", "gguf", str(tiny_llama_dir), "--out", str(tmp_path / "y.gguf"),
              "--type", "q4_k_x"])
    with pytest.raises(LangadaptError, match="--out must be a .gguf file name"):
        main(["--debug", "export", "gguf", str(tiny_llama_dir), "--out", str(tmp_path / "y.bin")])

    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)).save_pretrained(gpt2)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(gpt2)
    with pytest.raises(LangadaptError, match="architecture GPT2LMHeadModel is not supported by `export gguf`"):
        main(["--debug", "export", "gguf", str(gpt2), "--out", str(tmp_path / "g.gguf"), "--skip-check"])
    assert not list(tmp_path.glob("*.gguf.tmp-*")) and not (tmp_path / "g.gguf").exists()


def test_adapter_is_merged_and_another_base_is_refused(extended_tiny_dir, extended_tiny_tied_dir, train_corpus,
                                                       tmp_path):
    assert main(["pretrain", "--model", str(extended_tiny_dir), "--corpus", str(train_corpus),
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--stage", "lora",
                 "--block-size", "32", "--batch-size", "2", "--max-steps", "2", "--save-steps", "100",
                 "--eval-steps", "0", "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "5e-2",
                 "--warmup-ratio", "0", "--gradient-checkpointing", "false", "--progress", "false"]) == 0
    adapter = tmp_path / "run" / "adapter"
    out = _export(extended_tiny_dir, tmp_path / "merged.gguf", "--adapter", str(adapter), "--type", "f32",
                  "--skip-check")
    from langadapt.train.adapter import merge_adapter
    merged = merge_adapter(AutoModelForCausalLM.from_pretrained(extended_tiny_dir), adapter)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    assert (_logits(back) - _logits(merged)).abs().max() < 1e-4
    lineage = json.loads(_gguf_fields(out)[ADAPTATION_KEY])
    assert lineage["history"][-1]["step"] == "pretrain-lora"
    with pytest.raises(LangadaptError, match="trained with untied embeddings but this base has tied ones"):
        main(["--debug", "export", "gguf", str(extended_tiny_tied_dir), "--adapter", str(adapter),
              "--out", str(tmp_path / "wrong.gguf"), "--skip-check"])
    assert not (tmp_path / "wrong.gguf").exists()


# ----------------------------------------------------------------------------- llama.cpp itself

@needs_llama_cpp
def test_llama_cpp_tokenises_as_transformers_with_added_tokens(extended_tiny_dir, tmp_path):
    out = _export(extended_tiny_dir, tmp_path / "ext.gguf", "--type", "f16")  # the export's own check passed
    from langadapt.export.gguf import LlamaCppVocab, compare_tokenizers
    tok = AutoTokenizer.from_pretrained(extended_tiny_dir)
    texts = EXPORT_CHECK_TEXTS + [f"{w} and {w}." for w in NEW_TOKENS] + ["<|im_start|>user\nhi<|im_end|>"]
    with LlamaCppVocab(out) as vocab:
        result = compare_tokenizers(tok, vocab, texts)
    assert result["mismatches"] == 0, result["first_difference"]


@needs_llama_cpp
def test_quantised_by_llama_cpp(tiny_llama_dir, tmp_path):
    out = _export(tiny_llama_dir, tmp_path / "tiny-q4_0.gguf", "--type", "q4_0")
    fields = _gguf_fields(out)
    assert fields["general.file_type"] == 2 and fields["tensors"]["blk.0.attn_q.weight"] == "Q4_0"
    assert json.loads(fields[ADAPTATION_KEY])["type"] == "q4_0"


# ----------------------------------------------------------------------------- byte-level BPE extension rules

TIBETAN_LINES = [TIBETAN_SEED_SENTENCE, "བོད་ཀྱི་སྐད་ཡིག་ནི་རྒྱ་ཆེ།", "ཀ་ཁ་ག་ང་། ཨོཾ་མ་ཎི་པདྨེ་ཧཱུྃ༔",
                 "ཁྱོད་ཀྱི་མིག་དག་སྔོན་པོ་ཡིན། ང་ཚོ་བོད་པ་ཡིན།", "སྐད་ཡིག་གི་རིག་གཞུང་ནི་གལ་ཆེན་པོ་ཡིན།"]


@pytest.fixture(scope="module", params=["script-runs", "qwen35"])
def tibetan_extended(request, tiny_llama_dir, tmp_path_factory):
    """`tiny_llama_dir` with 40 Tibetan tokens merged by `tokenizer merge --pre-tokenizer RULE`, then extended."""
    tmp = tmp_path_factory.mktemp(f"bo-{request.param}")
    corpus = tmp / "bo.txt"
    corpus.write_text("\n".join(TIBETAN_LINES * 20) + "\n", encoding="utf-8")
    assert main(["tokenizer", "merge", "--base", str(tiny_llama_dir), "--corpus", str(corpus), "--vocab-size", "40",
                 "--lang", "bo", "--pre-tokenizer", request.param, "--out", str(tmp / "tok")]) == 0
    assert main(["model", "extend", "--init", "mean", "--base", str(tiny_llama_dir), "--tokenizer", str(tmp / "tok"),
                 "--out", str(tmp / "model")]) == 0
    return request.param, tmp / "model"


def test_script_runs_tokenizer_is_refused_and_the_llama_cpp_rule_is_named(tibetan_extended, tiny_llama_dir, tmp_path):
    rule, model = tibetan_extended
    out = tmp_path / "bo.gguf"
    if rule == "script-runs":
        with pytest.raises(LangadaptError, match="script-runs pre-tokenizer .* llama.cpp cannot reproduce.*"
                                                 "--pre-tokenizer qwen35"):
            main(["--debug", "export", "gguf", str(model), "--out", str(out), "--skip-check"])
        assert not out.exists()
        return
    _export(model, out, "--type", "f32", "--skip-check")
    assert _gguf_fields(out)["tokenizer.ggml.pre"] == "qwen35"
    tok, base = AutoTokenizer.from_pretrained(model), AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert len(tok.tokenize(TIBETAN_SEED_SENTENCE)) < len(base.tokenize(TIBETAN_SEED_SENTENCE)) / 2  # new tokens fire


@needs_llama_cpp
def test_llama_cpp_rule_gives_exact_parity_in_llama_cpp(tibetan_extended, tmp_path):
    rule, model = tibetan_extended
    if rule == "script-runs":  # written with GPT-2's rule, llama.cpp cuts Tibetan at every vowel sign
        with pytest.raises(LangadaptError, match=r"llama.cpp tokenises \d+ of \d+ check_set texts differently.*"
                                                 "Nothing was written.*--pre-tokenizer qwen35"):
            main(["--debug", "export", "gguf", str(model), "--out", str(tmp_path / "bo.gguf")])
        assert not (tmp_path / "bo.gguf").exists()
        return
    _export(model, tmp_path / "bo.gguf", "--type", "f16")  # raises on any check-set difference
    from langadapt.export.gguf import LlamaCppVocab, compare_tokenizers
    with LlamaCppVocab(tmp_path / "bo.gguf") as vocab:
        result = compare_tokenizers(AutoTokenizer.from_pretrained(model), vocab, TIBETAN_LINES * 2)
    assert result["mismatches"] == 0, result["first_difference"]


# ----------------------------------------------------------------------------- SentencePiece bases (real data)

def _tiny_llama_around(tokenizer_dir: Path, out: Path) -> Path:
    """A random tiny Llama (tied) whose vocabulary is the tokenizer at `tokenizer_dir`, with its tokenizer.model."""
    import shutil

    from conftest import _save_tiny_llama

    _save_tiny_llama(out, tokenizer_dir, tied=True)
    shutil.copy(tokenizer_dir / "tokenizer.model", out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def llama2_tiny(shared_data, tmp_path_factory):
    """A tiny Llama with Llama-2's tokenizer (32,000 SentencePiece pieces) and a chat template."""
    import shutil

    from langadapt.tokenizer.load import load_tokenizer

    tmp = tmp_path_factory.mktemp("llama2")
    tok = load_tokenizer(shared_data / "tokenizers" / "llama2" / "tokenizer.model")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp / "tok")
    shutil.copy(shared_data / "tokenizers" / "llama2" / "tokenizer.model", tmp / "tok" / "tokenizer.model")
    return _tiny_llama_around(tmp / "tok", tmp / "model")


@pytest.fixture(scope="module")
def llama2_tibetan_tiny(llama2_tiny, shared_data, tmp_path_factory):
    """The tiny Llama-2 model with 2,000 Tibetan pieces merged (`tokenizer merge` + `model extend`)."""
    tmp = tmp_path_factory.mktemp("llama2-bo")
    files = sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir())[:200]
    assert main(["tokenizer", "merge", "--base", str(llama2_tiny), "--corpus", *map(str, files), "--vocab-size",
                 "2000", "--lang", "bo", "--out", str(tmp / "tok")]) == 0
    assert main(["model", "extend", "--init", "mean", "--base", str(llama2_tiny), "--tokenizer", str(tmp / "tok"),
                 "--out", str(tmp / "model")]) == 0
    return tmp / "model"


@needs_llama_cpp
def test_llama2_vocab_passes_llama_cpps_own_vocab_test(llama2_tiny, shared_data, tmp_path):
    """The published llama.cpp tokenizer test (ggml-vocab-llama-spm.gguf.inp/.out) on our Llama-2 export."""
    from langadapt.export.gguf import LlamaCppVocab

    out = _export(llama2_tiny, tmp_path / "llama2.gguf", "--type", "f16")
    fields = _gguf_fields(out)
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("llama", "default")
    assert (fields["tokenizer.ggml.add_bos_token"], fields["tokenizer.ggml.add_eos_token"]) == (True, False)
    folder = shared_data / "tokenizers" / "llama.cpp-vocab"
    inputs = (folder / "ggml-vocab-llama-spm.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (folder / "ggml-vocab-llama-spm.gguf.out").read_text(encoding="utf-8").split("\n")
    cases = [(text, [int(i) for i in ids.split()]) for text, ids in zip(inputs[:-1], expected)]
    assert len(cases) == 46
    with LlamaCppVocab(out) as vocab:
        assert [vocab.tokenize(text) for text, _ in cases] == [ids for _, ids in cases]
    tok = AutoTokenizer.from_pretrained(llama2_tiny)
    assert [tok.encode(text, add_special_tokens=False) for text, _ in cases] == [ids for _, ids in cases]


@needs_llama_cpp
def test_llama2_with_tibetan_pieces_is_exact_on_all_of_dev_conllu(llama2_tibetan_tiny, shared_data, tmp_path):
    from langadapt.corpus import iter_texts
    from langadapt.export.gguf import LlamaCppVocab, compare_tokenizers
    from langadapt.lang import get_profile

    out = _export(llama2_tibetan_tiny, tmp_path / "bo.gguf", "--type", "q8_0")
    dev = list(iter_texts(shared_data / "bo" / "dev-conllu", profile=get_profile("bo")))
    assert len(dev) == 1011
    tok = AutoTokenizer.from_pretrained(llama2_tibetan_tiny)
    with LlamaCppVocab(out) as vocab:
        result = compare_tokenizers(tok, vocab, dev + [TIBETAN_SEED_SENTENCE])
    assert result["mismatches"] == 0, result["first_difference"]
    assert len(tok.encode(TIBETAN_SEED_SENTENCE, add_special_tokens=False)) < 40  # the Tibetan pieces are used


# ----------------------------------------------------------------------------- generation parity (real SmolLM2)

PROMPTS = {"en": "The three most important inventions of the twentieth century are",
           "ko": "대한민국 헌법 제1조에 따르면 대한민국은",
           "bo": "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་"}


def _greedy_transformers(model, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


def _greedy_llama_cpp(path: Path, ids: list[int], n: int) -> list[int]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    out = []
    llm.eval(list(ids))
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


@pytest.fixture(scope="module")
def smollm2_tibetan(shared_data, tmp_path_factory):
    """SmolLM2 extended with 2,000 Tibetan tokens merged with llama.cpp's qwen35 rule (mean init)."""
    tmp = tmp_path_factory.mktemp("smollm2-bo")
    files = sorted((shared_data / "bo" / "news-tibettimes-2016").iterdir())[:200]
    assert main(["tokenizer", "merge", "--base", "smollm2-135m", "--corpus", *map(str, files), "--vocab-size", "2000",
                 "--lang", "bo", "--pre-tokenizer", "qwen35", "--out", str(tmp / "tok")]) == 0
    assert main(["model", "extend", "--init", "mean", "--base", "smollm2-135m", "--tokenizer", str(tmp / "tok"),
                 "--out", str(tmp / "model")]) == 0
    return tmp / "model"


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("which", ["smollm2-135m", "extended"])
def test_greedy_generation_equals_transformers(which, request, tmp_path):
    from langadapt.model.load import load_model
    from langadapt.tokenizer.load import load_tokenizer

    model_spec = "smollm2-135m" if which == "smollm2-135m" else str(request.getfixturevalue("smollm2_tibetan"))
    out = _export(model_spec, tmp_path / "model.gguf", "--type", "f32")
    model, tok = load_model(model_spec, dtype="float32").eval(), load_tokenizer(model_spec)
    for lang, prompt in PROMPTS.items():
        ids = tok.encode(prompt, add_special_tokens=False)
        expected = _greedy_transformers(model, ids, 32)
        assert _greedy_llama_cpp(out, ids, 32) == expected, (lang, tok.decode(expected))
