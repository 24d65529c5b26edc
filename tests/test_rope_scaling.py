"""--rope-scaling through transformers' rope config: parsing, what each kind sets, `auto` exact within the
trained context, longer windows for `eval bpc`, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.model.load import AUTO_MAX_FACTOR, load_model, model_context, parse_rope_scaling


@pytest.mark.parametrize("spec, parsed", [
    (None, None), ("none", None), ("", None), ("linear:2", ("linear", 2.0)), ("dynamic:1.5", ("dynamic", 1.5)),
    ("YARN:4", ("yarn", 4.0)), ("auto", ("auto", float(AUTO_MAX_FACTOR))),
])
def test_parse(spec, parsed):
    assert parse_rope_scaling(spec) == parsed


@pytest.mark.parametrize("spec", ["linear", "linear:0.5", "ntk:2", "yarn:x", "linear:2:3"])
def test_parse_refuses(spec):
    with pytest.raises(LangadaptError, match="linear:F, dynamic:F or yarn:F"):
        parse_rope_scaling(spec)


def _logits(model, n):
    ids = torch.arange(5, 5 + n).unsqueeze(0)
    with torch.inference_mode():
        return model(ids).logits[0]


def test_each_kind_sets_transformers_rope_parameters(tiny_llama_dir):
    plain = load_model(tiny_llama_dir, dtype="float32").eval()
    assert model_context(plain) == 256
    linear = load_model(tiny_llama_dir, dtype="float32", rope_scaling="linear:2").eval()
    assert linear.config.rope_parameters["rope_type"] == "linear" and model_context(linear) == 512
    assert torch.allclose(linear.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 2)
    yarn = load_model(tiny_llama_dir, dtype="float32", rope_scaling="yarn:4").eval()
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 256 and model_context(yarn) == 1024
    dynamic = load_model(tiny_llama_dir, dtype="float32", rope_scaling="dynamic:2").eval()
    assert dynamic.config.max_position_embeddings == 256 and model_context(dynamic) == 512
    # Within the trained context dynamic and auto compute exactly what the plain model does; linear does not.
    auto = load_model(tiny_llama_dir, dtype="float32", rope_scaling="auto").eval()
    assert model_context(auto) == 256 * AUTO_MAX_FACTOR
    assert torch.equal(_logits(auto, 100), _logits(plain, 100))
    assert torch.equal(_logits(dynamic, 100), _logits(plain, 100))
    assert not torch.allclose(_logits(linear, 100), _logits(plain, 100))
    # Beyond it, auto's NTK base grows with the input's length: the same tokens are computed differently.
    assert not torch.allclose(_logits(auto, 400)[:100], _logits(plain, 400)[:100])


def test_eval_bpc_with_a_window_beyond_the_trained_context(tiny_llama_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    args = ["eval", "bpc", "--model", str(tiny_llama_dir), "--text", str(text), "--context", "400", "--stride", "200"]
    assert main(args) == 2
    assert "longer than the model's 256 positions (--rope-scaling extends them)" in capsys.readouterr().err
    out = tmp_path / "bpc.json"
    assert main([*args, "--rope-scaling", "yarn:2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rope_scaling"] == "yarn:2" and result["context"] == 400 and result["bits_per_char"] > 0
    capsys.readouterr()
    assert main([*args, "--rope-scaling", "ntk:2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("langadapt: error: --rope-scaling must be") and err.count("\n") == 1


def test_chat_with_rope_scaling(tiny_llama_dir, capsys):
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--prompt", "hi", "--greedy",
                 "--max-new-tokens", "4", "--rope-scaling", "dynamic:2"]) == 0
    assert capsys.readouterr().out.endswith("\n")
