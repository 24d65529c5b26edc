"""Adapters in peft's own format: every kind `pretrain` and `sft` write loads with plain
`PeftModel.from_pretrained` and gives the logits of `langadapt merge`'s output (shard by shard and
in memory); a base that is not the adapter's is refused."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.train.adapter import load_adapter, read_adapter
from train_fixtures import extended_tiny_dir, extended_tiny_tied_dir, train_corpus  # noqa: F401

IDS = torch.tensor([[1, 40, 200, 300, 7, 9, 512, 514, 2, 515, 513]])
NEW_ROWS = [512, 513, 514, 515]
TRAIN = ["--block-size", "32", "--batch-size", "2", "--max-steps", "2", "--save-steps", "100", "--eval-steps", "0",
         "--logging-steps", "1", "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "5e-2",
         "--warmup-ratio", "0", "--gradient-checkpointing", "false", "--progress", "false"]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def _pretrain(base, corpus, out, *extra) -> str:
    assert main(["pretrain", "--model", str(base), "--corpus", str(corpus), "--out", str(out),
                 "--cache-dir", str(out.parent / "cache"), *TRAIN, *extra]) == 0
    return out / "adapter"


def _check_plain_peft_equals_merges(adapter, base, tmp_path) -> dict:
    """Merge shard by shard and in memory; plain peft on `base` gives the same logits (1e-4).
    Return the adapter's peft config."""
    for name, extra in (("by-shard", []), ("in-memory", ["--in-memory"])):
        assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / name), *extra]) == 0
    by_shard = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "by-shard"))
    in_memory = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "in-memory"))
    plain = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)))
    assert (plain - by_shard).abs().max() < 1e-4 and (plain - in_memory).abs().max() < 1e-4
    assert (plain - _logits(AutoModelForCausalLM.from_pretrained(base))).abs().max() > 1e-3  # it trained
    assert not (adapter / "trained_rows.safetensors").exists()
    return json.loads((adapter / "adapter_config.json").read_text())


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def extended(request, extended_tiny_dir, extended_tiny_tied_dir):
    return extended_tiny_tied_dir if request.param else extended_tiny_dir


def _embedding_names(tied: bool) -> list[str]:
    return ["model.embed_tokens"] if tied else ["model.embed_tokens", "lm_head"]


@pytest.mark.parametrize("new_rows_only", [True, False], ids=["new-rows", "all-rows"])
def test_embeddings_stage_is_trainable_tokens(extended, new_rows_only, train_corpus, tmp_path):
    adapter = _pretrain(extended, train_corpus, tmp_path / "run", "--stage", "embeddings",
                        "--new-rows-only", str(new_rows_only).lower())
    config = _check_plain_peft_equals_merges(adapter, extended, tmp_path)
    tied = extended.name.endswith("tied")
    assert config["peft_type"] == "TRAINABLE_TOKENS" and config["target_modules"] == _embedding_names(tied)
    assert config["token_indices"] == (NEW_ROWS if new_rows_only else list(range(516)))
    if new_rows_only:  # the base vocabulary's rows and every other weight are exactly the base's
        base = dict(AutoModelForCausalLM.from_pretrained(extended).named_parameters())
        merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "by-shard").named_parameters())
        for name, w in base.items():
            rows = slice(0, 512) if name in ("model.embed_tokens.weight", "lm_head.weight") else slice(None)
            assert torch.equal(merged[name][rows], w[rows]), name
        assert read_adapter(adapter)["adapter_format"] == "trainable_tokens"


@pytest.mark.parametrize("new_rows_only", [True, False], ids=["new-rows", "all-rows"])
def test_lora_stage_with_embedding_rows(extended, new_rows_only, train_corpus, tmp_path):
    adapter = _pretrain(extended, train_corpus, tmp_path / "run", "--stage", "lora",
                        "--new-rows-only", str(new_rows_only).lower())
    config = _check_plain_peft_equals_merges(adapter, extended, tmp_path)
    tied = extended.name.endswith("tied")
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    if new_rows_only:
        assert config["trainable_token_indices"] == {m: NEW_ROWS for m in _embedding_names(tied)}
        assert not config["modules_to_save"]
    else:
        assert set(config["modules_to_save"]) >= set(_embedding_names(tied)) and not config["trainable_token_indices"]
        assert config["ensure_weight_tying"] is tied
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "by-shard")
    tied_after = merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    assert tied_after is tied
    record = json.loads((tmp_path / "by-shard" / "adaptation.json").read_text())
    assert record["lora_weights_merged"] == 2 * 7 and record["row_weights_merged"] == (1 if tied else 2)
    assert [h["step"] for h in record["history"]][-2:] == ["model-extend", "pretrain-lora"]


def _write_instructions(path):
    rows = [{"instruction": f"Say the fox line {i}.", "output": "The quick brown fox jumps over the lazy dog."}
            for i in range(12)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


SFT = ["--template", "chatml", "--max-seq-len", "64", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "2",
       "--learning-rate", "5e-2", "--lora-r", "4", "--lora-alpha", "8", "--save-steps", "100", "--eval-steps", "0",
       "--logging-steps", "1", "--heldout-share", "0", "--gradient-checkpointing", "false", "--progress", "false"]


@pytest.mark.parametrize("stage", ["embeddings", "lora"])
def test_sft_continues_a_pretrain_adapter(stage, extended_tiny_tied_dir, train_corpus, tmp_path):
    pretrained = _pretrain(extended_tiny_tied_dir, train_corpus, tmp_path / "pre", "--stage", stage,
                           "--new-rows-only", "true")
    data = _write_instructions(tmp_path / "sft.json")
    assert main(["sft", "--adapter", str(pretrained), "--data", str(data), "--out", str(tmp_path / "sft"),
                 "--stage", stage, *SFT]) == 0
    adapter = tmp_path / "sft" / "adapter"
    config = _check_plain_peft_equals_merges(adapter, extended_tiny_tied_dir, tmp_path)
    # the same adapter trained further: its rows, and on top of the pretrain adapter's values
    assert (config.get("token_indices") or config["trainable_token_indices"]["model.embed_tokens"]) == NEW_ROWS
    pre = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended_tiny_tied_dir),
                                            str(pretrained)))
    assert (_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "by-shard")) - pre).abs().max() > 1e-4
    record = read_adapter(adapter)
    assert record["step"] == f"sft-{stage}" and record["continued_adapter"] == str(pretrained)
    assert [h["step"] for h in record["history"]][-2:] == ["model-extend", f"pretrain-{stage}"]
    other = "lora" if stage == "embeddings" else "embeddings"
    with pytest.raises(LangadaptError, match=f"is an adapter of stage {stage}; continue it with stage {stage}"):
        main(["--debug", "sft", "--adapter", str(pretrained), "--data", str(data), "--out", str(tmp_path / "x"),
              "--stage", other, *SFT])


def test_sft_of_a_merged_model_loads_on_it(extended_tiny_dir, train_corpus, tmp_path):
    """The issue's case: sft (new LoRA, all rows) on the merge of a pretrain adapter."""
    pretrained = _pretrain(extended_tiny_dir, train_corpus, tmp_path / "pre", "--stage", "lora")
    assert main(["merge", "--adapter", str(pretrained), "--out", str(tmp_path / "model-pretrain")]) == 0
    data = _write_instructions(tmp_path / "sft.json")
    assert main(["sft", "--model", str(tmp_path / "model-pretrain"), "--data", str(data),
                 "--out", str(tmp_path / "sft"), *SFT]) == 0
    _check_plain_peft_equals_merges(tmp_path / "sft" / "adapter", tmp_path / "model-pretrain", tmp_path)


def test_new_rows_merge_onto_the_unextended_base_where_plain_peft_refuses(extended_tiny_dir, tiny_llama_dir,
                                                                           train_corpus, tmp_path):
    adapter = _pretrain(extended_tiny_dir, train_corpus, tmp_path / "run", "--stage", "embeddings",
                        "--new-rows-only", "true")
    with pytest.raises(IndexError):  # peft: token indices 512.. do not fit a 512-row embedding
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(adapter))
    for name, extra in (("by-shard", []), ("in-memory", ["--in-memory"])):
        assert main(["merge", "--adapter", str(adapter), "--base", str(tiny_llama_dir),
                     "--out", str(tmp_path / name), *extra]) == 0
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended_tiny_dir), str(adapter))
        got = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / name))
        assert (got - _logits(plain)).abs().max() < 1e-4, name


def test_a_base_that_is_not_the_adapters_is_refused(extended_tiny_tied_dir, extended_tiny_dir, train_corpus,
                                                    tmp_path):
    adapter = _pretrain(extended_tiny_tied_dir, train_corpus, tmp_path / "run", "--stage", "embeddings",
                        "--new-rows-only", "true")
    other = AutoModelForCausalLM.from_pretrained(extended_tiny_tied_dir)
    with torch.no_grad():
        other.get_input_embeddings().weight[3] += 1.0  # same shapes, other weights
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(LangadaptError, match=r"trained on a different base model .*; this base has"):
        load_adapter(AutoModelForCausalLM.from_pretrained(tmp_path / "other"), adapter)
    for extra in ([], ["--in-memory"]):
        with pytest.raises(LangadaptError, match="trained on a different base model"):
            main(["--debug", "merge", "--adapter", str(adapter), "--base", str(tmp_path / "other"),
                  "--out", str(tmp_path / "m"), *extra])
    with pytest.raises(LangadaptError, match="trained with tied embeddings but this base has untied ones"):
        load_adapter(AutoModelForCausalLM.from_pretrained(extended_tiny_dir), adapter)
    assert not (tmp_path / "m").exists()


def test_read_adapter_explains_what_is_not_an_adapter(extended_tiny_dir, tmp_path):
    with pytest.raises(LangadaptError, match="no adaptation.json; expected an adapter dir"):
        read_adapter(tmp_path)
    with pytest.raises(LangadaptError, match="says step 'model-extend', not an adapter"):
        read_adapter(extended_tiny_dir)
    old = tmp_path / "old"
    old.mkdir()
    (old / "adaptation.json").write_text(json.dumps({"step": "pretrain-embeddings"}))
    (old / "trained_rows.safetensors").write_bytes(b"")
    with pytest.raises(LangadaptError, match="adapter_config.json or adapter_model.safetensors is missing; not a "
                                             "complete peft adapter .*older langadapt"):
        read_adapter(old)
