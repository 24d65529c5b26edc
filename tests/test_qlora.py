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
