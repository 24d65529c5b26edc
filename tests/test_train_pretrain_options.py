"""`pretrain` options on tiny models: new_input_rows_only (EEVE), block_order (curriculum),
edge_layers (layer subset), mtp_heads (multi-token prediction heads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.train import mtp
from langadapt.train import pretrain as P
from langadapt.train.curriculum import budget_blocks, curriculum_order, document_length_per_block
from langadapt.train.data import BlockDataset
from langadapt.train.engine import edge_layer_names
from langadapt.train.pretrain import pretrain
from test_train_pretrain import _recipe as pretrain_recipe
from train_fixtures import extended_tiny_dir, extended_tiny_tied_dir, train_corpus  # noqa: F401


def _recipe(model, corpus, out, **kw):
    """test_train_pretrain's tiny recipe: 3 steps at a high rate, no evaluation, no checkpoint."""
    return pretrain_recipe(model, corpus, out, **{"max_steps": 3, "save_steps": 100, "eval_steps": 0,
                                                  "learning_rate": 5e-2, **kw})


IDS = torch.tensor([[1, 40, 200, 300, 7, 9, 512, 514, 2, 515, 513]])


def _logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


@pytest.fixture
def seen_blocks(monkeypatch):
    """The input_ids of every training batch, in the order the Trainer read them."""
    seen = []
    original = P.PretrainTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        seen.append(inputs["input_ids"].clone())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(P.PretrainTrainer, "compute_loss", record)
    return seen


# ----------------------------------------------------------------------------- new_input_rows_only (EEVE)

@pytest.mark.parametrize("stage", ["embeddings", "lora"])
def test_new_input_rows_only_trains_new_input_rows_and_the_whole_head(stage, extended_tiny_dir, train_corpus,
                                                                      tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    summary, model = pretrain(_recipe(extended_tiny_dir, train_corpus, out, stage=stage, new_input_rows_only=True,
                                      weight_decay=0.1))
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"model.embed_tokens": [512, 513, 514, 515]}
    assert config["modules_to_save"] == ["lm_head"]
    assert (config["target_modules"] == "dummy-target-modules") is (stage == "embeddings")
    for name, extra in (("by-shard", []), ("in-memory", ["--in-memory"])):
        assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / name), *extra]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "by-shard")
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended_tiny_dir), str(adapter))
    assert (_logits(plain) - _logits(merged)).abs().max() < 1e-4
    assert (_logits(plain) - _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "in-memory"))).abs().max() < 1e-4
    assert (_logits(plain) - _logits(model)).abs().max() < 1e-4
    base = dict(AutoModelForCausalLM.from_pretrained(extended_tiny_dir).named_parameters())
    after = dict(merged.named_parameters())
    emb, head = "model.embed_tokens.weight", "lm_head.weight"
    assert torch.equal(after[emb][:512], base[emb][:512])  # old input rows: bit-identical
    assert (after[emb][512:] - base[emb][512:]).abs().amax(dim=1).min() > 0  # every new input row moved
    assert (after[head][:512] - base[head][:512]).abs().amax(dim=1).gt(0).float().mean() > 0.9  # old head rows too
    assert (after[head][512:] - base[head][512:]).abs().max() > 0
    layer = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(after[layer], base[layer]) is (stage == "embeddings")
    record = json.loads((adapter / "adaptation.json").read_text())
    assert record["adapter_format"] == ("lora+" if stage == "lora" else "") + "trainable_tokens+modules_to_save"
    assert record["new_input_rows_only"] is True and record["recipe"]["new_input_rows_only"] is True
    assert summary["trained_rows"] == [512, 516]


def test_new_input_rows_only_refuses_tied_models_and_other_stages(extended_tiny_tied_dir, train_corpus, tmp_path):
    with pytest.raises(LangadaptError, match=r"new_input_rows_only .* ties them; untie with `langadapt model extend "
                                             r"--init fit`"):
        pretrain(_recipe(extended_tiny_tied_dir, train_corpus, tmp_path / "a", new_input_rows_only=True))
    with pytest.raises(LangadaptError, match="new_input_rows_only"):
        _recipe(extended_tiny_tied_dir, train_corpus, tmp_path / "b", new_input_rows_only=True, stage="full")
    with pytest.raises(LangadaptError, match="new_input_rows_only"):
        _recipe(extended_tiny_tied_dir, train_corpus, tmp_path / "c", new_input_rows_only=True, new_rows_only=True)


# ----------------------------------------------------------------------------- block_order

def _blocks(tmp_path, docs: list[list[int]], block_size: int, eos: int = 0) -> BlockDataset:
    tokens = np.array([t for doc in docs for t in (*doc, eos)], dtype=np.uint32)
    path = tmp_path / "a.bin"
    tokens.tofile(path)
    return BlockDataset([path], block_size)


def test_document_length_per_block_is_the_token_weighted_document_length(tmp_path):
    # documents of 3, 1 and 8 tokens (+ EOS: 4, 2, 9 tokens), blocks of 5: [4x4 + 1x2], [1x2 + 4x9], [5x9]
    blocks = _blocks(tmp_path, [[5, 6, 7], [8], [9] * 8], 5)
    assert len(blocks) == 3
    np.testing.assert_allclose(document_length_per_block(blocks, 0), [(4 * 4 + 2) / 5, (2 + 4 * 9) / 5, 9.0])


def test_curriculum_order_sorts_and_breaks_ties_by_seed():
    measure = np.array([3.0, 1.0, 2.0, 1.0, 1.0, 0.5])
    order = curriculum_order(measure, seed=1)
    assert order[0] == 5 and sorted(order[1:4].tolist()) == [1, 3, 4] and order[4:].tolist() == [2, 0]
    assert np.array_equal(curriculum_order(measure, seed=1), order)
    ties = {tuple(curriculum_order(np.zeros(8), seed=s).tolist()) for s in range(4)}
    assert len(ties) > 1  # equal measures: a seeded order, not the corpus order


def _block_rows(batches):
    return [row for batch in batches for row in batch]


def test_budget_blocks_draws_the_blocks_a_budget_reads():
    assert budget_blocks(10, None, 0).tolist() == list(range(10))  # epochs: every block
    assert budget_blocks(10, 12, 0).tolist() == list(range(10))  # more rows than blocks: every block
    drawn = budget_blocks(100, 12, 0)
    assert len(set(drawn.tolist())) == 12 and np.all(np.diff(drawn) > 0) and drawn[-1] < 100
    assert np.array_equal(budget_blocks(100, 12, 0), drawn) and not np.array_equal(budget_blocks(100, 12, 1), drawn)


def test_block_order_loss_reads_the_budgets_blocks_by_the_start_models_loss(extended_tiny_dir, train_corpus,
                                                                           tmp_path, seen_blocks):
    summary, _ = pretrain(_recipe(extended_tiny_dir, train_corpus, tmp_path / "run", block_order="loss"))
    # independently: the start model's mean token loss on the 12 blocks that 3 steps of 4 rows read
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, load_blocks

    blocks = load_blocks(load_tokenizer(str(extended_tiny_dir)), CorpusSpec([str(train_corpus)]), 32,
                         tmp_path / "cache", progress=False)
    read = budget_blocks(len(blocks), 12, 42)
    base = AutoModelForCausalLM.from_pretrained(extended_tiny_dir).eval()
    with torch.no_grad():
        losses = [base(input_ids=blocks[int(i)]["input_ids"][None], labels=blocks[int(i)]["input_ids"][None]).loss.item()
                  for i in read]
    want = read[np.argsort(losses, kind="stable")]
    got = _block_rows(seen_blocks)
    assert len(got) == 12 and len(blocks) > 300  # a budget far below one pass
    for row, i in zip(got, want):
        assert torch.equal(row, blocks[int(i)]["input_ids"])
    assert summary["block_order"] == "loss" and summary["block_order_head"] == want[:8].tolist()
    assert summary["block_order_blocks"] == 12 and summary["block_order_first"] < summary["block_order_last"]
    cached = list((tmp_path / "cache").glob("*/block-loss-*.npy"))  # cached next to the blocks: only those 12
    assert len(cached) == 1 and len(np.load(cached[0])) == 12


def test_block_order_length_and_resume_keep_the_order(extended_tiny_dir, train_corpus, tmp_path, seen_blocks,
                                                      monkeypatch):
    out = tmp_path / "run"
    recorded = P.PretrainTrainer.compute_loss

    def killed_after_two_steps(self, *args, **kwargs):
        if len(seen_blocks) == 2:
            raise RuntimeError("killed")
        return recorded(self, *args, **kwargs)

    monkeypatch.setattr(P.PretrainTrainer, "compute_loss", killed_after_two_steps)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(_recipe(extended_tiny_dir, train_corpus, out, block_order="length", max_steps=4, save_steps=2))
    monkeypatch.setattr(P.PretrainTrainer, "compute_loss", recorded)
    pretrain(_recipe(extended_tiny_dir, train_corpus, out, block_order="length", max_steps=4, save_steps=2,
                     resume=True))
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, load_blocks

    tok = load_tokenizer(str(extended_tiny_dir))
    blocks = load_blocks(tok, CorpusSpec([str(train_corpus)]), 32, tmp_path / "cache", progress=False)
    read = budget_blocks(len(blocks), 16, 42)
    lengths = document_length_per_block(blocks, tok.eos_token_id)
    order = read[curriculum_order(lengths[read], 42)]
    got = _block_rows(seen_blocks)
    assert len(got) == 16  # 2 steps, then 2 more after the resume: blocks 8..15 of the order, not 0..7 again
    for row, i in zip(got, order):
        assert torch.equal(row, blocks[int(i)]["input_ids"])
    assert np.all(np.diff(lengths[order]) >= 0)


def test_block_order_shuffled_still_shuffles(extended_tiny_dir, train_corpus, tmp_path, seen_blocks):
    pretrain(_recipe(extended_tiny_dir, train_corpus, tmp_path / "run", max_steps=2))
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.train.data import CorpusSpec, load_blocks

    blocks = load_blocks(load_tokenizer(str(extended_tiny_dir)), CorpusSpec([str(train_corpus)]), 32,
                         tmp_path / "cache", progress=False)
    index = {tuple(blocks[i]["input_ids"].tolist()): i for i in range(len(blocks))}
    got = [index[tuple(row.tolist())] for row in _block_rows(seen_blocks)]
    assert len(got) == 8 and got != sorted(got)


# ----------------------------------------------------------------------------- edge_layers

@pytest.fixture(scope="module")
def tiny_llama4_dir(tiny_tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama4")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_edge_layer_names():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(6)] + ["model.norm.weight"]
    assert edge_layer_names(names, 6, 2) == {f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 1, 4, 5)}
    with pytest.raises(LangadaptError, match="edge_layers 4: .* more than the model's 6 layers"):
        edge_layer_names(names, 6, 4)


def test_edge_layers_trains_only_the_edge_layers_embeddings_and_head(tiny_llama4_dir, train_corpus, tmp_path):
    summary, _ = pretrain(_recipe(tiny_llama4_dir, train_corpus, tmp_path / "run", stage="full", edge_layers=1,
                                  learning_rate=1e-2))
    before = load_file(str(tiny_llama4_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name, w in before.items():
        trains = name.startswith(("model.layers.0.", "model.layers.3.", "model.embed_tokens", "lm_head"))
        if trains and "layernorm" not in name:  # norms get tiny gradients; matrices must move
            assert not torch.equal(after[name], w), name
        elif not trains:
            assert torch.equal(after[name], w), name  # frozen: bit-identical (layers 1, 2 and the final norm)
    assert summary["edge_layers"] == 1 and summary["recipe"]["edge_layers"] == 1
    assert summary["trainable_parameters"] == sum(w.numel() for n, w in before.items() if n.startswith(
        ("model.layers.0.", "model.layers.3.", "model.embed_tokens", "lm_head")))
    with pytest.raises(LangadaptError, match="edge_layers 3: .* more than the model's 4 layers"):
        pretrain(_recipe(tiny_llama4_dir, train_corpus, tmp_path / "b", stage="full", edge_layers=3))
    with pytest.raises(LangadaptError, match="edge_layers applies to stage full, not lora"):
        _recipe(tiny_llama4_dir, train_corpus, tmp_path / "c", edge_layers=1)


# ----------------------------------------------------------------------------- mtp_heads

def test_mtp_loss_is_main_loss_plus_weight_times_the_heads_loss(tiny_llama_dir, tmp_path):
    from transformers import TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    heads = mtp.attach_heads(model, 2)
    for head in heads:
        torch.nn.init.normal_(head.down.weight, std=0.2)  # not the identity start, so each head differs
    trainer = P.PretrainTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                    report_to="none"),
                                heldout_text="", block_size=16, mtp_weight=0.3)
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    got = trainer.compute_loss(model, {"input_ids": ids, "labels": ids.clone()})
    with torch.no_grad():
        main_loss = model(input_ids=ids, labels=ids).loss
        hidden = model.model(input_ids=ids).last_hidden_state
        per_head = []
        for k, head in enumerate(heads, start=1):  # head k predicts token t+1+k
            logits = model.lm_head(head(hidden[:, :16 - 1 - k]))
            per_head.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                              ids[:, 1 + k:].reshape(-1), reduction="sum"))
        aux = sum(per_head) / (2 * 2 * 15)  # mean over heads, over the 2 x 15 next-token targets
    assert abs(aux.item() - main_loss.item()) > 0.01
    assert torch.allclose(got.detach(), main_loss + 0.3 * aux, atol=1e-5)


def test_mtp_heads_train_checkpoint_resume_and_are_dropped(extended_tiny_dir, train_corpus, tmp_path, monkeypatch):
    from peft import PeftModel

    out = tmp_path / "run"
    pretrain(_recipe(extended_tiny_dir, train_corpus, out, mtp_heads=2, max_steps=2, save_steps=2))
    saved_heads = load_file(str(out / "checkpoints" / "checkpoint-2" / mtp.MTP_FILE))
    assert sorted(saved_heads) == sorted(f"{k}.{p}.weight" for k in (0, 1) for p in ("up", "down"))
    assert all(saved_heads[f"{k}.down.weight"].abs().max() > 0 for k in (0, 1))  # they trained (zero at start)
    resumed_with = {}
    original = P.PretrainTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        resumed_with.setdefault("heads", {k: v.clone() for k, v in mtp.heads_of(self.model).state_dict().items()})
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(P.PretrainTrainer, "compute_loss", spy)
    summary, model = pretrain(_recipe(extended_tiny_dir, train_corpus, out, mtp_heads=2, max_steps=4, save_steps=2,
                                      resume=True))
    assert all(torch.equal(resumed_with["heads"][k], v) for k, v in saved_heads.items())  # continued, not new
    assert mtp.heads_of(model) is None and summary["mtp_head_parameters_dropped"] == 2 * 2 * 64 * 64
    monkeypatch.setattr(P.PretrainTrainer, "compute_loss", original)
    pretrain(_recipe(extended_tiny_dir, train_corpus, tmp_path / "plain", max_steps=1))
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}  # no head weights
    assert (json.loads((out / "adapter" / "adapter_config.json").read_text())
            == json.loads((tmp_path / "plain" / "adapter" / "adapter_config.json").read_text()))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended_tiny_dir), str(out / "adapter"))
    assert (_logits(loaded) - _logits(model)).abs().max() < 1e-4


def test_mtp_heads_with_stage_full_save_a_plain_model(tiny_llama_dir, train_corpus, tmp_path):
    pretrain(_recipe(tiny_llama_dir, train_corpus, tmp_path / "run", stage="full", mtp_heads=1, max_steps=2,
                     learning_rate=1e-3))
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert saved.keys() == load_file(str(tiny_llama_dir / "model.safetensors")).keys()
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    with pytest.raises(LangadaptError, match="mtp_heads must be 0 or positive"):
        _recipe(tiny_llama_dir, train_corpus, tmp_path / "b", mtp_heads=-1)
