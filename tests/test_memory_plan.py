"""The memory plan (`train/memory.py`): parameter counts against real models, sharding, quantisation,
checkpointing, and `run --dry-run --plan-json`."""

from __future__ import annotations

import json

import pytest

from langadapt.cli import main
from langadapt.model.known_configs import KNOWN_CONFIGS
from langadapt.train.memory import ModelShape, TrainingShape, memory_plan
from test_run import tiny_recipe  # noqa: F401
from train_fixtures import heldout_file, train_corpus  # noqa: F401


def test_parameter_counts_of_known_models():
    assert ModelShape.from_config(KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B"]).params == 8_030_261_248
    assert ModelShape.from_config(KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"]).params == 6_738_415_616
    assert ModelShape.from_config(KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"]).params == 134_515_008


@pytest.mark.parametrize("tied", [False, True])
def test_the_plan_counts_what_the_model_and_peft_hold(tiny_llama_dir, tiny_llama_tied_dir, tied):
    from transformers import AutoModelForCausalLM

    from langadapt.train.adapter import new_adapter

    path = tiny_llama_tied_dir if tied else tiny_llama_dir
    model = AutoModelForCausalLM.from_pretrained(path)
    shape = ModelShape.from_config(json.loads((path / "config.json").read_text()))
    assert shape.tied is tied
    assert shape.params == sum(p.numel() for p in model.parameters())
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    wrapped = new_adapter(model, None, lora)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    plan = memory_plan(shape, TrainingShape(stage="lora", lora_r=4, lora_targets=("q_proj", "v_proj", "down_proj")))
    assert plan["trainable_params"] == trainable


def test_zero_shards_optimizer_then_gradients_then_weights():
    shape = ModelShape.from_config(KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B"])
    one = memory_plan(shape, TrainingShape(stage="full", weights_dtype="bfloat16"))
    z1, z2, z3 = (memory_plan(shape, TrainingShape(stage="full", weights_dtype="bfloat16", zero_stage=z, world_size=8))
                  for z in (1, 2, 3))
    assert z1["optimizer"] == pytest.approx(one["optimizer"] / 8, abs=1e-3) and z1["trainable"] == one["trainable"]
    assert z2["trainable"] == pytest.approx(one["trainable"] / 8, abs=1e-3) and z2["weights"] == one["weights"]
    assert z3["weights"] == pytest.approx(one["weights"] / 8, abs=1e-3)
    # full training of 8B: 8.03e9 x (2 bytes weights + 4 gradient + 8 Adam) = 104.7 GiB before activations
    assert one["weights"] + one["trainable"] + one["optimizer"] == pytest.approx(8_030_261_248 * 14 / 2 ** 30, rel=1e-3)


def test_quantisation_shrinks_the_decoder_not_the_embeddings():
    shape = ModelShape.from_config(KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B"])
    bf16 = memory_plan(shape, TrainingShape(weights_dtype="bfloat16"))
    nf4 = memory_plan(shape, TrainingShape(weights_dtype="bfloat16", quantization="nf4"))
    decoder = shape.layers * shape.layer_linear_params
    assert bf16["weights"] - nf4["weights"] == pytest.approx(decoder * (2 - 0.5625) / 2 ** 30, rel=1e-3)
    assert nf4["weights"] > shape.embedding_params * 2 / 2 ** 30  # embeddings and head stay bf16
    with pytest.raises(ValueError, match="quantization must be one of nf4, fp4, int8"):
        memory_plan(shape, TrainingShape(quantization="int3"))


def test_checkpointing_and_smaller_batches_cut_activations_only():
    shape = ModelShape.from_config(KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"])
    kept = memory_plan(shape, TrainingShape(block_size=512, micro_batch=4, gradient_checkpointing=False))
    ckpt = memory_plan(shape, TrainingShape(block_size=512, micro_batch=4, gradient_checkpointing=True))
    half = memory_plan(shape, TrainingShape(block_size=512, micro_batch=2, gradient_checkpointing=False))
    assert ckpt["activations"] < kept["activations"] / 3 and ckpt["weights"] == kept["weights"]
    assert half["activations"] == pytest.approx(kept["activations"] / 2, abs=1e-3)


def test_dry_run_prints_the_plan_and_writes_plan_json(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["run", str(tiny_recipe), "--dry-run", "--plan-json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "memory plan, peak per device" in printed
    plan = json.loads(out.read_text())
    assert [s["name"] for s in plan["steps"]] == ["pretrain-embeddings", "pretrain-lora", "sft"]
    first = plan["steps"][0]
    assert set(first["memory_gib"]) == {"weights", "trainable", "optimizer", "activations", "total"}
    m = first["memory_gib"]
    assert m["total"] == pytest.approx(m["weights"] + m["trainable"] + m["optimizer"] + m["activations"], abs=2e-3)
    assert main(["run", str(tiny_recipe), "--plan-json", str(out)]) == 2  # only with --dry-run
    assert "plan_json" in capsys.readouterr().err


def test_the_hub_models_plan_offline_from_their_known_sizes(capsys, monkeypatch):
    from transformers import AutoConfig

    def no_hub(*args, **kwargs):
        raise AssertionError("the plan must not go to the hub for a known model")

    monkeypatch.setattr(AutoConfig, "from_pretrained", no_hub)
    from langadapt.run_memory import _hub_config

    assert _hub_config("meta-llama/Meta-Llama-3-8B")["num_key_value_heads"] == 8
