"""`langadapt model extend`: resize for an extended tokenizer, initialise new rows, keep old logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.model.extend import base_pieces, check_extends, extend_model

KOREAN = "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
OLD_TEXTS = ["The quick brown fox jumps over the lazy dog.", KOREAN, TIBETAN_SEED_SENTENCE]


def extend_bpe(tokenizer, texts: list[str], n_new: int, out: Path | None = None):
    """A true extension of a byte-level BPE tokenizer: append merges of adjacent tokens of `texts`.

    Each new merge joins two tokens the base produces side by side inside one pre-token, so
    the base ids keep their strings and the new tokens get ids len(base)... Saved to `out`.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    assert len(vocab) + len([a for a in state["added_tokens"] if a["content"] not in vocab]) == len(tokenizer)
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    added = 0
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text):
            pieces = [t.value for t in tokenizer.backend_tokenizer.model.tokenize(word)]
            for a, b in zip(pieces, pieces[1:]):
                if a + b not in vocab and added < n_new:
                    vocab[a + b] = len(tokenizer) + added
                    merges.append([a, b])
                    added += 1
    assert added == n_new, f"only {added} new merges found"
    new = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)),
                                  bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                                  pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token)
    if out is not None:
        new.save_pretrained(out)
    return new


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def extended_dir(tiny_tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ext-tok")
    extend_bpe(tiny_tok, [TIBETAN_SEED_SENTENCE, KOREAN], 12, out)
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_extend_keeps_old_logits_and_loads_with_auto(tied, tiny_llama_dir, tiny_llama_tied_dir, extended_dir,
                                                     tiny_tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_llama_tied_dir if tied else tiny_llama_dir
    out = tmp_path / "ext"
    assert main(["model", "extend", "--init", "mean", "--base", str(base_dir), "--tokenizer", str(extended_dir),
                 "--out", str(out)]) == 0
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ext = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ext_tok = AutoTokenizer.from_pretrained(out)
    assert len(tiny_tok) == 512 and len(ext_tok) == 524
    assert ext.config.vocab_size == 524 and ext.get_input_embeddings().weight.shape == (524, 64)
    assert (ext.lm_head.weight.data_ptr() == ext.get_input_embeddings().weight.data_ptr()) is tied
    for text in OLD_TEXTS:
        ids = tiny_tok(text, add_special_tokens=False)["input_ids"]
        old, new = _logits(base, ids), _logits(ext, ids)
        assert new.shape[-1] == 524
        assert torch.allclose(new[:, :512], old, atol=1e-5, rtol=0), (new[:, :512] - old).abs().max()
    # The extended tokenizer really uses the new tokens on the text they came from.
    assert len(ext_tok(TIBETAN_SEED_SENTENCE)["input_ids"]) < len(tiny_tok(TIBETAN_SEED_SENTENCE)["input_ids"])
    gen = ext.generate(torch.tensor([ext_tok("The quick")["input_ids"]]), max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, len(ext_tok("The quick")["input_ids"]) + 5)
    record = json.loads((out / "adaptation.json").read_text())
    assert record["step"] == "model-extend" and record["init"] == "mean"
    assert (record["old_vocab_size"], record["new_vocab_size"], record["new_tokens"]) == (512, 524, 12)
    assert record["tied_embeddings"] is tied and len(record["tokenizer_sha256"]) == 64
    assert record["parameters_after"] - record["parameters_before"] == 12 * 64 * (1 if tied else 2)


def test_mean_init_averages_base_pieces_separately_for_input_and_output(tiny_llama_dir, extended_dir, tiny_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ext_tok = AutoTokenizer.from_pretrained(extended_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.lm_head.weight.detach().clone()
    report = extend_model(model, tiny_tok, ext_tok, init="mean")
    assert report["new_tokens"] == 12 and report["padding_rows"] == 0
    new_in, new_out = model.get_input_embeddings().weight, model.lm_head.weight
    for i in range(512, 524):
        piece = ext_tok.convert_ids_to_tokens(i)
        ids = [t.id for t in tiny_tok.backend_tokenizer.model.tokenize(piece)]
        assert len(ids) >= 2 and max(ids) < 512
        assert "".join(tiny_tok.convert_ids_to_tokens(ids)) == piece
        assert torch.allclose(new_in[i], old_in[ids].mean(0), atol=1e-7)
        assert torch.allclose(new_out[i], old_out[ids].mean(0), atol=1e-7)
        assert not torch.allclose(new_in[i], new_out[i])
    assert torch.equal(new_in[:512], old_in) and torch.equal(new_out[:512], old_out)


def test_base_pieces_of_partial_utf8_token_are_its_bytes(tiny_tok, extended_dir):
    from transformers import AutoTokenizer

    ext_tok = AutoTokenizer.from_pretrained(extended_dir)
    # Tibetan letters are 3 UTF-8 bytes; some new tokens hold only part of a letter.
    partial = [i for i in range(512, 524) if "\ufffd" in ext_tok.decode([i])]
    assert partial, "expected at least one new token that is not whole characters"
    for i in partial:
        ids = base_pieces(tiny_tok, ext_tok, i)
        # The base pieces spell the new token's bytes exactly (no U+FFFD replacement piece).
        assert "".join(tiny_tok.convert_ids_to_tokens(ids)) == ext_tok.convert_ids_to_tokens(i)
        assert max(ids) < 512


def test_pad_to_multiple_of_gives_padding_rows_the_mean(tiny_llama_tied_dir, extended_dir, tiny_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied_dir, dtype=torch.float32)
    old = model.get_input_embeddings().weight.detach().clone()
    report = extend_model(model, tiny_tok, AutoTokenizer.from_pretrained(extended_dir), pad_to_multiple_of=64)
    assert (report["new_vocab_size"], report["padding_rows"]) == (576, 52)
    assert model.config.vocab_size == 576 and model.lm_head.weight.shape[0] == 576
    w = model.get_input_embeddings().weight
    assert torch.allclose(w[524:], old.mean(0).expand(52, -1), atol=1e-7)


@pytest.mark.parametrize("init", ["random", "hf-default"])
def test_comparison_inits(init, tiny_llama_dir, extended_dir, tiny_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    old = model.get_input_embeddings().weight.detach().clone()
    extend_model(model, tiny_tok, AutoTokenizer.from_pretrained(extended_dir), init=init)
    new_rows = model.get_input_embeddings().weight[512:].detach()
    assert torch.equal(model.get_input_embeddings().weight[:512], old)
    if init == "random":  # N(0, initializer_range=0.02)
        assert abs(new_rows.mean().item()) < 0.005 and 0.015 < new_rows.std().item() < 0.025
    else:  # transformers' mean_resizing: N(mean, 1e-9 * covariance), i.e. the mean of all rows
        assert torch.allclose(new_rows, old.mean(0).expand(12, -1), atol=1e-3)


def _swapped_tokenizer(tiny_tok, out: Path) -> Path:
    """The tiny tokenizer with the strings of ids 300 and 301 exchanged."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tiny_tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    a, b = tiny_tok.convert_ids_to_tokens([300, 301])
    vocab[a], vocab[b] = 301, 300
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state))).save_pretrained(out)
    return out


def test_reordered_tokenizer_is_refused_before_writing(tiny_llama_dir, tiny_tok, tmp_path, capsys):
    bad = _swapped_tokenizer(tiny_tok, tmp_path / "swapped")
    out = tmp_path / "out"
    assert main(["model", "extend", "--init", "mean", "--base", str(tiny_llama_dir), "--tokenizer", str(bad),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    a, b = tiny_tok.convert_ids_to_tokens([300, 301])
    assert f"id 300 is {a!r} in the base but {b!r}" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["swapped"]


def test_smaller_tokenizer_is_refused_before_writing(tiny_llama_dir, tiny_tok, tmp_path, capsys):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tiny_tok.backend_tokenizer.to_str())
    state["model"]["vocab"] = {t: i for t, i in state["model"]["vocab"].items() if i < 500}
    state["model"]["merges"] = [m for m in state["model"]["merges"] if "".join(m) in state["model"]["vocab"]]
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state))).save_pretrained(tmp_path / "small")
    out = tmp_path / "out"
    assert main(["model", "extend", "--init", "mean", "--base", str(tiny_llama_dir),
                 "--tokenizer", str(tmp_path / "small"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has 500 tokens, fewer than the model's 512 (ids 500..511 are missing)" in err
    assert not out.exists()


def test_model_without_lm_head_is_refused(tiny_llama_dir, extended_dir, tiny_tok):
    from transformers import AutoModel, AutoTokenizer

    body = AutoModel.from_pretrained(tiny_llama_dir)  # LlamaModel: embeddings but no LM head
    with pytest.raises(LangadaptError, match="has no LM head"):
        extend_model(body, tiny_tok, AutoTokenizer.from_pretrained(extended_dir))
    assert body.get_input_embeddings().weight.shape[0] == 512


@pytest.mark.slow
def test_smollm2_tibetan_extension_keeps_old_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langadapt.model.load import load_model
    from langadapt.tokenizer.load import load_tokenizer

    base_tok = load_tokenizer("smollm2-135m")
    tok_dir = tmp_path / "tok"
    extend_bpe(base_tok, [TIBETAN_SEED_SENTENCE], 20, tok_dir)
    out = tmp_path / "ext"
    assert main(["model", "extend", "--init", "mean", "--base", "smollm2-135m", "--tokenizer", str(tok_dir),
                 "--out", str(out)]) == 0
    base = load_model("smollm2-135m", dtype="float32").eval()
    ext = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ext_tok = AutoTokenizer.from_pretrained(out)
    assert ext.config.vocab_size == 49152 + 20 and len(ext_tok) == 49172
    assert ext.lm_head.weight.data_ptr() == ext.get_input_embeddings().weight.data_ptr()  # still tied
    for text in ["The capital of France is Paris.", TIBETAN_SEED_SENTENCE]:
        ids = base_tok(text, add_special_tokens=False)["input_ids"]
        old, new = _logits(base, ids), _logits(ext, ids)
        # equal up to fp32 rounding: the LM head's matmul is blocked differently for another vocabulary size
        assert (new[:, :49152] - old).abs().max().item() <= 1e-6 * old.abs().max().item() * 10
    prompt = ext_tok("The capital of France is", return_tensors="pt")
    gen = ext.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 4


def test_sentencepiece_extension_pieces_are_base_pieces_of_the_same_text(shared_data):
    """Chinese-LLaMA-2 extends Llama-2's tokenizer; its new tokens map to Llama-2 pieces and byte tokens."""
    from langadapt.tokenizer.load import load_tokenizer

    base = load_tokenizer(shared_data / "tokenizers" / "llama2")
    ext = load_tokenizer(shared_data / "tokenizers" / "chinese-llama-2")
    assert check_extends(base, ext) == 32000 and len(ext) == 55296
    assert base.convert_ids_to_tokens(base_pieces(base, ext, 40000)) == ["两", "点"]  # ext 40000 is "两点"
    # "但" is not in Llama-2's vocabulary: byte fallback, its three UTF-8 bytes.
    assert base.convert_ids_to_tokens(base_pieces(base, ext, 32001)) == ["<0xE4>", "<0xBD>", "<0x86>"]
    for i in range(32001, 55296, 997):
        ids = base_pieces(base, ext, i)
        assert ids and max(ids) < 32000
        assert base.decode(ids) == ext.decode([i])  # the same text


@pytest.mark.parametrize("init", ["mean", "random"])
def test_new_tokens_reuse_spare_rows_of_a_padded_base(init, extended_dir, tiny_tok):
    """A base whose embedding has 520 rows for 512 tokens: new ids 512..519 land on spare rows."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=520, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False))
    with torch.no_grad():
        model.get_input_embeddings().weight[512:] = 7.0  # untrained spare rows must not survive
    old = model.get_input_embeddings().weight.detach().clone()
    report = extend_model(model, tiny_tok, AutoTokenizer.from_pretrained(extended_dir), init=init)
    assert (report["old_vocab_size"], report["new_vocab_size"], report["new_tokens"]) == (520, 524, 12)
    w = model.get_input_embeddings().weight.detach()
    assert torch.equal(w[:512], old[:512])
    assert w[512:].abs().max().item() < 1.0  # no spare row kept its 7.0
    if init == "mean":
        ids = base_pieces(tiny_tok, AutoTokenizer.from_pretrained(extended_dir), 515)
        assert torch.allclose(w[515], old[ids].mean(0), atol=1e-7)


def test_fit_output_rows_lowers_the_sample_loss_and_leaves_its_inputs_alone():
    from langadapt.model.init import fit_output_rows

    torch.manual_seed(0)
    hidden, old = torch.randn(300, 8), torch.randn(20, 8)
    targets = torch.randint(0, 23, (300,))  # ids 20..22 are the new tokens
    start = torch.zeros(3, 8)
    copies = hidden.clone(), old.clone(), start.clone()
    rows, figures = fit_output_rows(hidden, targets, old, start, l2=1e-3, max_iter=30)

    def loss(new):
        logits = hidden @ torch.cat([old, new]).T
        return torch.nn.functional.cross_entropy(logits, targets).item()
    assert figures["loss_after"] < figures["loss_before"]
    assert loss(rows) < loss(start) - 0.05
    assert figures["loss_before"] == pytest.approx(loss(start), abs=1e-4)  # no L2 term at the start
    assert all(torch.equal(a, b) for a, b in zip((hidden, old, start), copies))
    # A new token the sample never shows only loses probability: its row moves against the hidden states' mean.
    unseen = fit_output_rows(hidden, targets.clamp(max=21), old, start, l2=1e-3, max_iter=30)[0][2]
    assert (hidden.mean(0) @ unseen).item() < 0


@pytest.mark.parametrize("tied", [False, True])
def test_fit_init_changes_only_new_output_rows(tied, tiny_llama_dir, tiny_llama_tied_dir, extended_dir, tiny_tok,
                                                tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied_dir if tied else tiny_llama_dir,
                                                 dtype=torch.float32)
    ext_tok = AutoTokenizer.from_pretrained(extended_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.lm_head.weight.detach().clone()
    text = (TIBETAN_SEED_SENTENCE + "\n") * 20
    old_ids = torch.tensor([tiny_tok("Hello world, hello.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        old_logits = model(old_ids).logits
    report = extend_model(model, tiny_tok, ext_tok, init="fit", fit_text=text, fit_tokens=200, progress=False)
    fit = report["fit"]
    assert fit["sample_tokens"] == 200 and fit["new_token_share"] > 0
    assert fit["loss_after"] < fit["loss_before"]
    w_in, w_out = model.get_input_embeddings().weight, model.lm_head.weight
    assert torch.equal(w_in[:512], old_in) and torch.equal(w_out[:512], old_out)
    mean = AutoModelForCausalLM.from_pretrained(tiny_llama_tied_dir if tied else tiny_llama_dir, dtype=torch.float32)
    extend_model(mean, tiny_tok, ext_tok, init="mean")
    assert not torch.allclose(w_out[512:], mean.lm_head.weight[512:])
    assert torch.equal(w_in[512:], mean.get_input_embeddings().weight[512:])  # the input rows stay the mean rows
    # A tied model is untied (fitted output rows must not move the input rows) and stays untied when saved.
    assert report["tied_embeddings"] is False and report["untied_by_init"] is tied
    assert w_out.data_ptr() != w_in.data_ptr()
    with torch.no_grad():  # old text, old rows: the old vocabulary's logits are unchanged
        assert torch.allclose(model(old_ids).logits[..., :512], old_logits, atol=1e-5)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(again.lm_head.weight, w_out) and torch.equal(again.get_input_embeddings().weight, w_in)


def test_fit_init_needs_a_corpus(tiny_llama_dir, extended_dir, tmp_path, capsys):
    # fit is the default, so leaving out --init and --corpus is this error too
    assert main(["model", "extend", "--base", str(tiny_llama_dir), "--tokenizer", str(extended_dir),
                 "--out", str(tmp_path / "m")]) == 2
    assert "--init fit (the default) needs training text (--corpus TRAIN_TEXT)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    with pytest.raises(LangadaptError, match="needs a sample"):
        extend_model(None, None, None, init="fit")


def test_aligned_ends_pairs_the_last_piece_ending_at_each_shared_character():
    from langadapt.model.init import aligned_ends

    # "abc d": base cuts a|b|c| d (c's two byte pieces both end at 3); new cuts abc| d
    base = [(0, 1), (1, 2), (2, 3), (2, 3), (3, 5)]
    new = [(0, 3), (3, 5)]
    assert aligned_ends(base, new) == [(0, 3), (1, 4)]
    assert aligned_ends([(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]) == [(2, 1)]


def test_text_chunks_cut_at_spaces_and_keep_every_character():
    from langadapt.model.init import text_chunks

    text = "가나다 라마바 사아자 차카타 파하\n" * 30
    chunks = text_chunks(text, 40)
    assert "".join(chunks) == text
    assert all(len(c) <= 40 for c in chunks) and all(c[0] in " \n" for c in chunks[1:])
    assert text_chunks("་" * 100, 30) == ["་" * 30] * 3 + ["་" * 10]  # no space: cut at the length


def _kl_to_base(model, base_tok, new_tok, text: str) -> float:
    """Mean KL(base || model) of the next-token distributions over the old vocabulary at the
    characters where a token ends in both tokenizations of `text` (the base = `model` on old ids)."""
    from langadapt.model.init import aligned_ends

    new = new_tok(text, return_offsets_mapping=True, add_special_tokens=False)
    base = base_tok(text, return_offsets_mapping=True, add_special_tokens=False)
    n_old = len(base_tok)
    new_pos, base_pos = zip(*aligned_ends(base["offset_mapping"], new["offset_mapping"]))
    with torch.no_grad():
        p = torch.log_softmax(model(torch.tensor([base["input_ids"]])).logits[0, list(base_pos), :n_old], -1)
        q = torch.log_softmax(model(torch.tensor([new["input_ids"]])).logits[0, list(new_pos), :n_old], -1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


@pytest.mark.parametrize("tied", [False, True])
def test_distill_init_changes_only_new_rows_and_lowers_its_loss(tied, tiny_llama_dir, tiny_llama_tied_dir,
                                                                extended_dir, tiny_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_llama_tied_dir if tied else tiny_llama_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():  # a random tiny model predicts almost uniformly: sharpen it so the KL has a target
        model.model.norm.weight *= 30
    ext_tok = AutoTokenizer.from_pretrained(extended_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.lm_head.weight.detach().clone()
    old_ids = torch.tensor([tiny_tok("Hello world, hello.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        old_logits = model(old_ids).logits
    line = TIBETAN_SEED_SENTENCE + " " + KOREAN
    # The default learning rate is relative to the embedding's scale (SmolLM2's entries are ~10x this model's).
    report = extend_model(model, tiny_tok, ext_tok, init="distill", fit_text=(line + "\n") * 60, fit_tokens=300,
                          progress=False)
    distill = report["distill"]
    assert distill["chunks"] == 24 and distill["steps"] == 6 and distill["aligned_positions"] > 4000
    assert distill["kl_last_tenth"] < 0.5 * distill["kl_first_tenth"]
    assert report["fit"]["sample_tokens"] == 300 and report["untied_by_init"] is tied
    w_in, w_out = model.get_input_embeddings().weight, model.lm_head.weight
    assert torch.equal(w_in[:512], old_in) and torch.equal(w_out[:512], old_out)
    mean = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        mean.model.norm.weight *= 30
    extend_model(mean, tiny_tok, ext_tok, init="mean")
    assert not torch.allclose(w_in[512:], mean.get_input_embeddings().weight[512:])  # the input rows learned
    # the base's next-token predictions are matched better than with the mean rows
    assert _kl_to_base(model, tiny_tok, ext_tok, line) < 0.7 * _kl_to_base(mean, tiny_tok, ext_tok, line)
    assert all(p.requires_grad for p in model.parameters())  # frozen only while distilling
    with torch.no_grad():  # old text, old rows: the old vocabulary's logits are unchanged
        assert torch.allclose(model(old_ids).logits[..., :512], old_logits, atol=1e-5)


def test_distill_init_needs_a_corpus(tiny_llama_dir, extended_dir, tmp_path, capsys):
    assert main(["model", "extend", "--base", str(tiny_llama_dir), "--tokenizer", str(extended_dir),
                 "--init", "distill", "--out", str(tmp_path / "m")]) == 2
    assert "--init distill needs training text (--corpus TRAIN_TEXT)" in capsys.readouterr().err
    with pytest.raises(LangadaptError, match="init 'distill' needs a sample"):
        extend_model(None, None, None, init="distill")
