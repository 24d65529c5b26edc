"""QLoRA (`quantization: nf4|fp4|int8` on stage lora) on CPU with bitsandbytes: the base's decoder is
quantised, the embeddings and LM head are not, the loss falls, plain peft reproduces langadapt's
logits, and `merge` folds the adapter into the full-precision base."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from langadapt.errors import LangadaptError
from langadapt.train.pretrain import pretrain
from test_train_pretrain import _recipe
from train_fixtures import train_corpus  # noqa: F401

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="needs bitsandbytes (pip install 'langadapt[qlora]')")

IDS = torch.tensor([[1, 40, 200, 300, 7, 9, 412, 414, 2, 415, 413]])


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_nf4_lora_trains_and_plain_peft_reads_its_adapter(tiny_llama_dir, train_corpus, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel

    from langadapt.train.engine import quantization_config

    run = tmp_path / "run"
    summary, model = pretrain(_recipe(tiny_llama_dir, train_corpus, run, quantization="nf4", max_steps=8,
                                      eval_steps=0, save_steps=100, lora_dropout=0.0, learning_rate=2e-2))
    losses = _losses(run)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5  # it learns
    base = model.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert base.get_input_embeddings().weight.dtype == torch.float32  # never quantised
    assert not isinstance(base.get_output_embeddings(), bnb.nn.Linear4bit)
    with torch.no_grad():
        ours = model.eval()(IDS).logits
    # a user's plain peft: the same 4-bit base, the adapter on top
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 quantization_config=quantization_config("nf4", tiny_llama_dir))
    plain = PeftModel.from_pretrained(plain, run / "adapter").eval()
    with torch.no_grad():
        theirs = plain(IDS).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    record = json.loads((run / "adapter" / "adaptation.json").read_text())
    assert record["recipe"]["quantization"] == "nf4"

    # merge folds the adapter into the fp32 base: close to the 4-bit model, up to nf4's rounding of the base
    from langadapt.cli import main

    assert main(["merge", "--adapter", str(run / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    with torch.no_grad():
        full = merged(IDS).logits
    gap = (full.log_softmax(-1) - ours.log_softmax(-1)).abs().mean().item()
    print(f"mean |log p merged - log p 4-bit| = {gap:.4f}")
    assert gap < 0.05, gap  # the base's 4-bit rounding: 0.020 on this model


def test_quantization_is_for_stage_lora_only(tiny_llama_dir, train_corpus, tmp_path):
    with pytest.raises(LangadaptError, match="quantization quantises the frozen base of stage lora"):
        _recipe(tiny_llama_dir, train_corpus, tmp_path / "a", quantization="nf4", stage="full")


@pytest.mark.slow
def test_smollm2_nf4_lora_steps_and_its_merge_score_alike(tmp_path):
    """SmolLM2 with an nf4 base: 6 LoRA steps on the embedded Korean corpus, then the adapter merged into the
    float32 base, scored on 2,000 held-out characters. Measured: float32 base 5.437 bits/char, nf4 base 6.068,
    nf4 + adapter 5.741, merged float32 5.442. nf4 costs a 135M model 0.63 bits/char; the steps recover half
    of it, which is the adapter correcting the 4-bit rounding, so on the float32 base it changes nothing
    (+0.005). Asserted: the 4-bit model learns, the merged model is better than it by less than 0.4 bits/char
    (the rounding the merge undoes), and the merge leaves the float32 base's score within 0.1."""
    from langadapt.cli import main
    from langadapt.corpus.embedded import embedded_set_paths
    from langadapt.corpus.read import iter_texts
    from langadapt.model.score import bpc_of_text
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.engine import quantization_config

    run = tmp_path / "run"
    summary, model = pretrain(recipe_for_smollm2(run))
    assert len(_losses(run)) == 6
    heldout = "\n".join(iter_texts(embedded_set_paths("ko-heldout")))[:2000]
    tok = load_tokenizer("smollm2-135m")
    trained_4bit = bpc_of_text(model.eval(), tok, heldout, context=256, stride=128, progress=False)["bits_per_char"]
    assert main(["merge", "--adapter", str(run / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    merged_bpc = bpc_of_text(merged, tok, heldout, context=256, stride=128, progress=False)["bits_per_char"]
    source = resolve_model_source("smollm2-135m")
    base_4bit = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                     quantization_config=quantization_config("nf4", source)).eval()
    before = bpc_of_text(base_4bit, tok, heldout, context=256, stride=128, progress=False)["bits_per_char"]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    base_bpc = bpc_of_text(base, tok, heldout, context=256, stride=128, progress=False)["bits_per_char"]
    print(f"bits/char: fp32 base {base_bpc:.3f}, nf4 base {before:.3f}, nf4 + adapter {trained_4bit:.3f}, "
          f"merged fp32 {merged_bpc:.3f}")
    assert trained_4bit < before - 0.1
    assert merged_bpc <= trained_4bit < merged_bpc + 0.4
    assert abs(merged_bpc - base_bpc) < 0.1


def recipe_for_smollm2(run):
    return _recipe("smollm2-135m", "embedded:ko-train", run, quantization="nf4", block_size=128, batch_size=2,
                   max_steps=6, eval_steps=0, save_steps=100, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                   learning_rate=2e-3)
