"""`langadapt pretrain` stages on tiny models, the saved adapter, `langadapt merge`, logs, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.train.pretrain import pretrain
from langadapt.train.recipe import recipe_from_dict
from train_fixtures import extended_tiny_dir, extended_tiny_tied_dir, heldout_file, train_corpus  # noqa: F401


def _recipe(model, corpus, out, **kw):
    base = dict(model=str(model), corpus=[str(corpus)], out=str(out), block_size=32, batch_size=4, max_steps=4,
                save_steps=2, logging_steps=1, eval_steps=2, lora_r=4, lora_alpha=8, learning_rate=1e-2,
                warmup_ratio=0.0, gradient_checkpointing=False, progress=False, cache_dir=str(out.parent / "cache"))
    base.update(kw)
    return recipe_from_dict(base, "test")


def _ids():
    return torch.tensor([[1, 40, 200, 300, 7, 9, 512, 514, 2]])


def _base_weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def lora_run(extended_tiny_dir, train_corpus, heldout_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    summary, model = pretrain(_recipe(extended_tiny_dir, train_corpus, out, heldout=[str(heldout_file)]))
    return out, summary, model


def test_lora_adapter_holds_every_trained_tensor(lora_run):
    out, summary, model = lora_run
    adapter = out / "adapter"
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # 2 layers x 7 targets x (A, B) LoRA matrices, plus the untied embedding and LM head (modules_to_save).
    assert len(trained) == 2 * 7 * 2 + 2 and len(saved) == 2 * 7 * 2 + 2
    for name, p in trained.items():
        key = name.replace(".modules_to_save.default", "").replace(".default", "")
        assert saved[key].numel() > 0 and torch.equal(saved[key], p.detach().float()), name
    assert saved["base_model.model.model.embed_tokens.weight"].shape[0] == 516
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.embed_tokens", "lm_head"]
    assert summary["trainable_parameters"] == sum(p.numel() for p in trained.values())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 4 * 32
    # LoRA B starts at zero: after training it must not be (no empty adapter).
    assert all(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
    record = json.loads((adapter / "adaptation.json").read_text())
    assert record["step"] == "pretrain-lora" and record["vocab_rows"] == 516
    assert record["history"][-1]["step"] == "model-extend"


def test_logs_metrics_heldout_bpc_and_curves(lora_run):
    out, summary, _ = lora_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in rows if "eval_bpc" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert summary["heldout_bpc"] == evals[-1]["eval_bpc"] and 0 < evals[-1]["eval_bpc"] < 20
    assert all(r["wall_s"] >= 0 for r in rows)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").is_file()


def test_merge_gives_the_adapter_models_logits(lora_run, extended_tiny_dir, tmp_path):
    out, _, model = lora_run
    assert main(["merge", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    model.eval()
    with torch.no_grad():
        want, got = model(_ids()).logits, merged(_ids()).logits
    assert torch.allclose(got, want, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(extended_tiny_dir)
    with torch.no_grad():
        assert not torch.allclose(base(_ids()).logits, want, atol=1e-3)
    assert json.loads((tmp_path / "merged" / "adaptation.json").read_text())["step"] == "merge"


def test_merge_refuses_another_base(lora_run, tiny_llama_dir, tiny_llama_tied_dir, tmp_path):
    out, _, _ = lora_run
    with pytest.raises(LangadaptError, match="trained with untied embeddings but .* has tied ones"):
        main(["--debug", "merge", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m"),
              "--base", str(tiny_llama_tied_dir)])
    other = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        other.get_input_embeddings().weight[3] += 1.0  # same shapes, other weights
    other.save_pretrained(tmp_path / "other")
    for extra in ([], ["--in-memory"]):
        with pytest.raises(LangadaptError, match="trained on a different base model"):
            main(["--debug", "merge", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m"),
                  "--base", str(tmp_path / "other"), *extra])
    assert not (tmp_path / "m").exists()


def test_shard_merge_equals_peft_merge_in_bf16_and_sharded(lora_run, extended_tiny_dir, tmp_path):
    out, _, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(extended_tiny_dir)
    base.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")  # several shards + index
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    for extra in ([], ["--in-memory"]):
        assert main(["merge", "--adapter", str(out / "adapter"), "--base", str(tmp_path / "sharded"),
                     "--out", str(tmp_path / f"m{len(extra)}"), "--dtype", "bfloat16", *extra]) == 0
    by_shard = AutoModelForCausalLM.from_pretrained(tmp_path / "m0")
    in_memory = AutoModelForCausalLM.from_pretrained(tmp_path / "m1")
    a, b = dict(by_shard.named_parameters()), dict(in_memory.named_parameters())
    assert a.keys() == b.keys() and all(p.dtype == torch.bfloat16 for p in a.values())
    for name in a:  # both round the same fp32 sum to bf16 (peft may add in another order: 1 ulp)
        assert torch.allclose(a[name].float(), b[name].float(), rtol=1e-2, atol=1e-3), name
    record = json.loads((tmp_path / "m0" / "adaptation.json").read_text())
    assert record["method"] == "shard by shard" and record["shards"] > 2 and record["lora_weights_merged"] == 14


def test_embeddings_stage_new_rows_only_moves_only_the_new_rows(extended_tiny_dir, train_corpus, tmp_path,
                                                                 tiny_llama_dir):
    summary, model = pretrain(_recipe(extended_tiny_dir, train_corpus, tmp_path / "run", stage="embeddings",
                                      new_rows_only=True, weight_decay=0.1, learning_rate=0.5, eval_steps=0))
    # Merge onto the un-extended base: resized first, then the 4 trained rows written.
    assert main(["merge", "--adapter", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "m"),
                 "--base", str(tiny_llama_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(merged(_ids()).logits, model(_ids()).logits, atol=1e-5)
    before = _base_weights(extended_tiny_dir)
    after = {n: p.detach() for n, p in merged.named_parameters()}
    for name, w in before.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[name][:512], w[:512]), name  # base rows: not parameters, no weight decay
            assert not torch.allclose(after[name][512:], w[512:]), name
        else:
            assert torch.equal(after[name], w), name  # transformer frozen
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert torch.equal(saved["base_model.model.model.embed_tokens.trainable_tokens_delta"],
                       after["model.embed_tokens.weight"][512:])
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "TRAINABLE_TOKENS" and config["token_indices"] == [512, 513, 514, 515]
    assert summary["trained_rows"] == [512, 516]


def test_tied_lora_trains_one_matrix_and_merges(extended_tiny_tied_dir, train_corpus, tmp_path):
    summary, model = pretrain(_recipe(extended_tiny_tied_dir, train_corpus, tmp_path / "run", eval_steps=0,
                                      max_steps=2))
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert summary["tied_embeddings"] is True
    emb = model.get_base_model().get_input_embeddings().modules_to_save["default"].weight
    assert model.get_base_model().get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # one matrix trains
    assert torch.equal(saved["base_model.model.model.embed_tokens.weight"], emb.detach())
    assert main(["merge", "--adapter", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "m")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(_ids()).logits, model(_ids()).logits, atol=1e-5)
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()


def test_full_stage_writes_a_model_dir(tiny_llama_dir, train_corpus, tmp_path):
    pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "run", stage="full", max_steps=2, eval_steps=0))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    before = _base_weights(tiny_llama_dir)
    after = dict(model.named_parameters())
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    assert json.loads((tmp_path / "run" / "model" / "adaptation.json").read_text())["step"] == "pretrain-full"


def test_keep_checkpoints_false_deletes_them_once_the_result_is_written(tiny_llama_dir, train_corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--model", str(tiny_llama_dir), "--corpus", str(train_corpus), "--out", str(out),
                 "--stage", "embeddings", "--block-size", "32", "--batch-size", "4", "--max-steps", "2",
                 "--save-steps", "1", "--eval-steps", "0", "--progress", "false", "--keep-checkpoints", "false",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert not (out / "checkpoints").exists()
    record = json.loads((out / "adapter" / "adaptation.json").read_text())
    assert record["steps"] == 2 and record["recipe"]["keep_checkpoints"] is False
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "metrics.jsonl").is_file()


def test_bad_input_errors(tiny_llama_dir, train_corpus, tmp_path):
    with pytest.raises(LangadaptError, match="block_size 512 is beyond the model's context of 256 positions"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "a", block_size=512))
    with pytest.raises(LangadaptError, match="new_rows_only needs a model made by `langadapt model extend`"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "b", new_rows_only=True))
    with pytest.raises(LangadaptError, match="no complete checkpoint"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "c", resume=True))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(LangadaptError, match="already holds a run; pass --resume"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "d"))
    with pytest.raises(LangadaptError, match="held-out file .* is also in the training corpus"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "e", heldout=[str(train_corpus)]))
    with pytest.raises(LangadaptError, match=r"lora_targets \['qkv'\] are not modules"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "f", lora_targets=["qkv"]))
    with pytest.raises(LangadaptError, match="recipe: corpus is required"):
        pretrain(recipe_from_dict({"model": str(tiny_llama_dir), "out": str(tmp_path / "g")}))


def test_merge_rejects_what_is_not_an_adapter(tiny_llama_dir, tmp_path):
    from langadapt.outputs import OutputOptions
    from langadapt.train.merge import MergeOptions, merge_command

    with pytest.raises(LangadaptError, match="no adaptation.json; expected an adapter dir"):
        merge_command(MergeOptions(adapter=str(tiny_llama_dir), output=OutputOptions(out=str(tmp_path / "m"))))


def test_resume_skips_a_checkpoint_whose_save_did_not_finish(tmp_path):
    from langadapt.train.engine import COMPLETE_MARK, latest_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6: killed or disk full mid-save
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARK).write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert latest_checkpoint(tmp_path / "none") is None


def test_disk_full_while_saving_is_a_clear_error(tiny_llama_dir, train_corpus, tmp_path, monkeypatch):
    import errno

    from langadapt.train import pretrain as P

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.PretrainTrainer, "_save", full)
    with pytest.raises(LangadaptError, match=r"disk full while writing under .*; the newest complete checkpoint is none"):
        pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "run", max_steps=2, eval_steps=0))
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow
def test_smollm2_lora_step_adapter_and_merge(train_corpus, tmp_path):
    """The real embedded model (tied, 49,152 rows): one LoRA step, then merge gives the same logits."""
    summary, model = pretrain(_recipe("smollm2-135m", train_corpus, tmp_path / "run", block_size=32, batch_size=1,
                                      max_steps=1, eval_steps=0, save_steps=10, lora_r=8, lora_alpha=16,
                                      learning_rate=1e-3))
    assert summary["tied_embeddings"] is True and summary["vocab_rows"] == 49152
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert saved["base_model.model.model.embed_tokens.weight"].shape == (49152, 576)
    assert main(["merge", "--adapter", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "m")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    model.eval()
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3616, 282, 4649, 30]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)
        from peft import PeftModel  # a user of the ecosystem: plain peft on the base gives the same logits

        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(summary["base_source"]),
                                          str(tmp_path / "run" / "adapter")).eval()
        assert (plain(ids).logits - merged(ids).logits).abs().max() < 1e-4


def test_wall_clock_stop_counts_training_time_only(monkeypatch):
    from transformers import TrainerControl

    from langadapt.train import engine as pt

    clock = iter([0.0, 20.0, 40.0, 100.0, 110.0, 125.0])
    monkeypatch.setattr(pt.time, "time", lambda: next(clock))
    stop, control = pt.WallClockStop(1.0), TrainerControl()  # 60 s
    stop.on_train_begin(None, None, control)          # t=0
    stop.on_step_end(None, None, control)             # t=20: 20 s used
    assert stop.used_s == 20.0 and not control.should_training_stop
    stop.on_step_end(None, None, control)             # t=40: 40 s
    stop.on_evaluate(None, None, control)             # t=100: 60 s of evaluation, not counted
    stop.on_step_end(None, None, control)             # t=110: 50 s
    assert stop.used_s == 50.0 and not control.should_training_stop
    stop.on_step_end(None, None, control)             # t=125: 65 s >= 60 s
    assert stop.used_s == 65.0 and control.should_training_stop


def test_max_minutes_stops_a_run_early(extended_tiny_dir, train_corpus, tmp_path):
    summary, _ = pretrain(_recipe(extended_tiny_dir, train_corpus, tmp_path / "run", max_steps=6,
                                  max_minutes=1e-9, eval_steps=0))
    assert summary["steps"] == 1 and summary["stopped_by_max_minutes"] is True
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    with pytest.raises(LangadaptError, match="max_minutes must be 0"):
        _recipe(extended_tiny_dir, train_corpus, tmp_path / "r2", max_minutes=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks bf16 on the CPU")
def test_bf16_on_cpu_trains_under_autocast_and_saves_fp32(extended_tiny_dir, train_corpus, heldout_file, tmp_path,
                                                          monkeypatch):
    from transformers import Trainer

    linear_out = set()  # dtypes the Linear layers return during the training steps
    training_step = Trainer.training_step

    def watched_step(self, model, *args, **kwargs):
        hooks = [m.register_forward_hook(lambda m, i, o: linear_out.add(o.dtype))
                 for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            return training_step(self, model, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(Trainer, "training_step", watched_step)
    out = tmp_path / "run"
    summary, model = pretrain(_recipe(extended_tiny_dir, train_corpus, out, precision="bf16", max_steps=8,
                                      eval_steps=0, heldout=[str(heldout_file)]))
    assert linear_out == {torch.bfloat16}  # the Trainer's CPU autocast ran the matmuls in bf16
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < losses[0] - 0.5
    assert 0 < summary["heldout_bpc"] < 20
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == 2 * 7 * 2 + 2 and {t.dtype for t in saved.values()} == {torch.float32}
    assert all(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
    # The returned model no longer autocasts: its logits are the fp32 logits of the saved adapter.
    linear_out.clear()
    hooks = [m.register_forward_hook(lambda m, i, o: linear_out.add(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    model.eval()
    with torch.no_grad():
        model(_ids())
    for h in hooks:
        h.remove()
    assert linear_out == {torch.float32}
    record = json.loads((out / "adapter" / "adaptation.json").read_text())
    assert record["recipe"]["precision"] == "bf16"


def test_a_budget_counted_in_another_tokenizers_tokens_trains_on_as_many_characters(
        extended_tiny_dir, tiny_llama_dir, train_corpus, tmp_path):  # noqa: F811
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.pretrain import tokens_per_char

    records = train_corpus.read_text(encoding="utf-8").splitlines()
    base = load_tokenizer(str(tiny_llama_dir))
    expected = (sum(len(base(r, add_special_tokens=False)["input_ids"]) + 1 for r in records)
                / sum(len(r) for r in records))
    assert tokens_per_char(base, iter(records)) == pytest.approx(expected, rel=1e-12)
    out = tmp_path / "run"
    summary, _ = pretrain(_recipe(extended_tiny_dir, train_corpus, out, max_steps=-1, max_tokens=512, eval_steps=0,
                                  budget_tokenizer=str(tiny_llama_dir)))
    data, budget = summary["data"], summary["budget"]
    own = data["tokens"] / data["characters"]
    assert budget["its_tokens"] == 512 and budget["characters"] == round(512 / expected)
    assert budget["own_tokens"] == round(512 * own / expected)
    assert summary["steps"] == -(-budget["own_tokens"] // (4 * 32))  # ceil: whole steps of 4 blocks of 32
