"""`langadapt model prune`: slice embedding/LM-head rows with a pruned tokenizer's id_map.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from langadapt.cli import main

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "What is the capital of France? The capital of France is Paris.",
]


@pytest.fixture(scope="module")
def pruned_tok_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """The tiny tokenizer pruned by `tokenizer prune` to the tokens of three English sentences."""
    root = tmp_path_factory.mktemp("pruned")
    corpus = root / "english.txt"
    corpus.write_text("\n".join(ENGLISH) + "\n", encoding="utf-8")
    out = root / "tok"
    assert main(["tokenizer", "prune", "--base", str(tiny_tokenizer_dir), "--corpus", str(corpus), "--lang", "en",
                 "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_prune_keeps_logits_of_kept_tokens(tied, tiny_llama_dir, tiny_llama_tied_dir, pruned_tok_dir, tmp_path,
                                           capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_llama_tied_dir if tied else tiny_llama_dir
    out = tmp_path / "pruned-model"
    assert main(["model", "prune", "--base", str(base_dir), "--tokenizer", str(pruned_tok_dir),
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    id_map = json.loads((pruned_tok_dir / "id_map.json").read_text())
    new_to_old = [o for o, _ in sorted(((int(o), n) for o, n in id_map["old_to_new"].items()), key=lambda x: x[1])]
    m = len(new_to_old)
    assert 256 < m < 512  # byte symbols, specials and the English tokens kept; the Korean ones dropped

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base_tok, pruned_tok = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(out)
    assert pruned.config.vocab_size == m == len(pruned_tok)
    assert pruned.get_input_embeddings().weight.shape == (m, 64) and pruned.lm_head.weight.shape == (m, 64)
    assert (pruned.lm_head.weight.data_ptr() == pruned.get_input_embeddings().weight.data_ptr()) is tied
    assert torch.equal(pruned.get_input_embeddings().weight, base.get_input_embeddings().weight[new_to_old])

    for text in ENGLISH:
        old_ids = base_tok(text, add_special_tokens=False)["input_ids"]
        new_ids = pruned_tok(text, add_special_tokens=False)["input_ids"]
        assert new_ids == [id_map["old_to_new"][str(i)] for i in old_ids]
        with torch.no_grad():
            old = base(torch.tensor([old_ids])).logits[0]
            new = pruned(torch.tensor([new_ids])).logits[0]
        assert torch.allclose(new, old[:, new_to_old], atol=1e-5, rtol=0)

    # Special ids follow their tokens to their new ids.
    for field, token in [("bos_token_id", "<|im_start|>"), ("eos_token_id", "<|im_end|>"),
                         ("pad_token_id", "<|endoftext|>")]:
        assert getattr(pruned.config, field) == pruned_tok.convert_tokens_to_ids(token)
        assert getattr(pruned.config, field) == id_map["old_to_new"][str(getattr(base.config, field))]

    params = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert params(base) - params(pruned) == (512 - m) * 64 * (1 if tied else 2)
    record = json.loads((out / "adaptation.json").read_text())
    assert record["step"] == "model-prune"
    assert (record["parameters_before"], record["parameters_after"]) == (params(base), params(pruned))
    assert (printed["old_vocab_size"], printed["new_vocab_size"]) == (512, m)
    gen = pruned.generate(torch.tensor([pruned_tok("The quick")["input_ids"]]), max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == len(pruned_tok("The quick")["input_ids"]) + 4


def test_pruned_tokenizer_without_id_map_is_refused(tiny_llama_dir, pruned_tok_dir, tmp_path, capsys):
    bare = tmp_path / "no-map"
    shutil.copytree(pruned_tok_dir, bare)
    (bare / "id_map.json").unlink()
    out = tmp_path / "out"
    assert main(["model", "prune", "--base", str(tiny_llama_dir), "--tokenizer", str(bare), "--out", str(out)]) == 2
    assert f"{bare}: no id_map.json" in capsys.readouterr().err
    assert not out.exists()


def test_id_map_of_another_tokenizer_is_refused(tiny_llama_dir, pruned_tok_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    shutil.copytree(pruned_tok_dir, wrong)
    id_map = json.loads((wrong / "id_map.json").read_text())
    # Exchange the new ids of two kept tokens: the map no longer matches the pruned vocabulary.
    old_a, old_b = sorted(id_map["old_to_new"], key=int)[300:302]
    id_map["old_to_new"][old_a], id_map["old_to_new"][old_b] = id_map["old_to_new"][old_b], id_map["old_to_new"][old_a]
    (wrong / "id_map.json").write_text(json.dumps(id_map))
    out = tmp_path / "out"
    assert main(["model", "prune", "--base", str(tiny_llama_dir), "--tokenizer", str(wrong), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"maps old id {old_a}" in err and "does not belong to this model's tokenizer" in err
    assert not out.exists()


def test_malformed_id_map_names_the_file(tiny_llama_dir, pruned_tok_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(pruned_tok_dir, bad)
    (bad / "id_map.json").write_text(json.dumps({"old_vocab_size": 512, "old_to_new": {"0": 0, "5": 2}}))
    assert main(["model", "prune", "--base", str(tiny_llama_dir), "--tokenizer", str(bad),
                 "--out", str(tmp_path / "out")]) == 2
    assert "new ids in old_to_new must be exactly 0..1" in capsys.readouterr().err
