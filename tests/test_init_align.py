"""`model extend --init align` (Yamaguchi et al. 2024): new rows are the frequency-weighted mean of the
base rows that overlap each new token's occurrences in a corpus sample."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TIBETAN_SEED_SENTENCE
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.model.extend import extend_model
from langadapt.model.init import align_counts, overlap_counts, weighted_rows
from test_model_extend import KOREAN, extend_bpe

OTHER = "국민의 권력은 모든 법 앞에 있고 대한민국의 주권이다."
SAMPLE = (KOREAN + "\n" + OTHER + "\n") * 2  # shows 8 of the extension's 12 new tokens


@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def extended_dir(tiny_tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("align-ext-tok")
    extend_bpe(tiny_tok, [KOREAN, TIBETAN_SEED_SENTENCE], 12, out)  # 12 Korean merges
    return out


@pytest.fixture(scope="module")
def ext_tok(extended_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(extended_dir)


def test_overlap_counts_counts_every_base_piece_overlapping_each_occurrence():
    # text "ab c": base cuts a|b|b'| c (b's two byte pieces share its span), new cuts ab| c
    base_ids, base_offsets = [1, 2, 3, 4], [(0, 1), (1, 2), (1, 2), (2, 4)]
    new_ids, new_offsets = [10, 4], [(0, 2), (2, 4)]
    assert overlap_counts([(base_ids, base_offsets, new_ids, new_offsets)], 10, 12) == {10: {1: 1, 2: 1, 3: 1}}
    # a base piece crossing the new token's end overlaps it; one ending at its start does not;
    # counts add up over occurrences and texts
    texts = [([5, 6, 7], [(0, 2), (2, 5), (5, 6)], [11, 7], [(2, 4), (4, 6)]),
             ([5, 6], [(0, 2), (2, 5)], [10, 11], [(0, 2), (2, 5)])]
    assert overlap_counts(texts, 10, 12) == {11: {6: 2}, 10: {5: 1}}
    # ids outside [first, last) and empty spans count nothing
    assert overlap_counts([([1], [(0, 1)], [10, 11], [(0, 1), (1, 1)])], 11, 12) == {}
    with pytest.raises(ValueError, match="one offset pair per id"):
        overlap_counts([([1], [], [10], [(0, 1)])], 10, 11)


def test_weighted_rows_are_count_weighted_means_or_the_fallback():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    fallback = torch.tensor([[9.0, 9.0], [-1.0, -1.0]])
    rows = weighted_rows(weight, [{0: 3, 1: 1}, {}], fallback)
    assert torch.allclose(rows, torch.tensor([[0.75, 0.5], [-1.0, -1.0]]))
    assert torch.equal(fallback, torch.tensor([[9.0, 9.0], [-1.0, -1.0]]))  # not changed


def _expected_counts(base_tok, new_tok, text: str, first: int) -> dict[int, dict[int, int]]:
    """The overlaps, brute force: every (new occurrence, base token) pair of spans that intersect."""
    new = new_tok(text, return_offsets_mapping=True, add_special_tokens=False)
    base = base_tok(text, return_offsets_mapping=True, add_special_tokens=False)
    counts: dict[int, dict[int, int]] = {}
    for t, (s, e) in zip(new["input_ids"], new["offset_mapping"]):
        if t < first:
            continue
        for b, (bs, be) in zip(base["input_ids"], base["offset_mapping"]):
            if bs < e and be > s:
                counts.setdefault(t, {}).setdefault(b, 0)
                counts[t][b] += 1
    return counts


def test_align_counts_of_a_real_tokenizer_pair(tiny_tok, ext_tok):
    counts, figures = align_counts(tiny_tok, ext_tok, SAMPLE, 512, 524)
    assert counts == _expected_counts(tiny_tok, ext_tok, SAMPLE, 512)
    new_ids = ext_tok(SAMPLE, add_special_tokens=False)["input_ids"]
    assert figures == {"sample_tokens": len(new_ids), "sample_chars": len(SAMPLE),
                       "new_token_occurrences": sum(t >= 512 for t in new_ids)}
    # Korean syllables are 3 UTF-8 bytes: a new token covers at least two byte pieces of the base
    assert counts and all(sum(row.values()) >= 2 for row in counts.values())
    # the sample is cut after max_tokens tokens of the new tokenizer
    few, figures = align_counts(tiny_tok, ext_tok, SAMPLE, 512, 524, max_tokens=5)
    assert figures["sample_tokens"] == 5 and figures["sample_chars"] < len(KOREAN)
    assert few == {t: row for t, row in _expected_counts(tiny_tok, ext_tok, SAMPLE[:figures["sample_chars"]],
                                                         512).items()}


@pytest.mark.parametrize("tied", [False, True])
def test_align_init_rows_are_weighted_means_of_overlapping_base_rows(tied, tiny_llama_dir, tiny_llama_tied_dir,
                                                                     tiny_tok, ext_tok):
    from transformers import AutoModelForCausalLM

    path = tiny_llama_tied_dir if tied else tiny_llama_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.lm_head.weight.detach().clone()
    old_ids = torch.tensor([tiny_tok("Hello world, hello. " + KOREAN, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        old_logits = model(old_ids).logits
    report = extend_model(model, tiny_tok, ext_tok, init="align", fit_text=SAMPLE, progress=False)

    expected = _expected_counts(tiny_tok, ext_tok, SAMPLE, 512)
    mean = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    extend_model(mean, tiny_tok, ext_tok, init="mean")
    w_in, w_out = model.get_input_embeddings().weight, model.lm_head.weight
    for i in range(512, 524):
        if i in expected:
            ids, c = list(expected[i]), torch.tensor(list(expected[i].values()), dtype=torch.float32)
            assert torch.allclose(w_in[i], (c[:, None] * old_in[ids]).sum(0) / c.sum(), atol=1e-6)
            assert torch.allclose(w_out[i], (c[:, None] * old_out[ids]).sum(0) / c.sum(), atol=1e-6)
        else:  # never in the sample: the mean-init rows
            assert torch.equal(w_in[i], mean.get_input_embeddings().weight[i])
            assert torch.equal(w_out[i], mean.lm_head.weight[i])
    aligned = report["align"]["aligned_tokens"]
    assert aligned == len(expected) == 8
    assert report["align"]["mean_fallback_tokens"] == 12 - aligned
    assert report["align"]["sample_tokens"] == len(ext_tok(SAMPLE, add_special_tokens=False)["input_ids"])
    # a weighted mean that differs from the mean of the token's own pieces somewhere (counts differ per piece)
    assert not torch.allclose(w_in[512:], mean.get_input_embeddings().weight[512:])
    # the old rows are untouched, a tied model stays tied, nothing is fitted
    assert torch.equal(w_in[:512], old_in) and torch.equal(w_out[:512], old_out)
    assert report["tied_embeddings"] is tied and report["untied_by_init"] is False
    assert (w_out.data_ptr() == w_in.data_ptr()) is tied and "fit" not in report
    with torch.no_grad():  # text the base tokenizer cuts the same way: the old vocabulary's logits are unchanged
        assert torch.allclose(model(old_ids).logits[..., :512], old_logits, atol=1e-5)


def test_align_init_end_to_end_through_the_cli(tiny_llama_dir, tiny_tok, extended_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = tmp_path / "train.txt"
    corpus.write_text(SAMPLE, encoding="utf-8")
    out = tmp_path / "ext"
    assert main(["model", "extend", "--base", str(tiny_llama_dir), "--tokenizer", str(extended_dir),
                 "--init", "align", "--corpus", str(corpus), "--align-tokens", "1000", "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ext_tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 524 and len(ext_tok) == 524
    record = json.loads((out / "adaptation.json").read_text())
    assert record["init"] == "align" and record["corpus"] == [str(corpus)]
    align = record["align"]
    expected = _expected_counts(tiny_tok, ext_tok, SAMPLE.rstrip("\n"), 512)
    assert (align["aligned_tokens"], align["mean_fallback_tokens"]) == (len(expected), 12 - len(expected))
    assert align["sample_tokens"] == len(ext_tok(SAMPLE.rstrip("\n"), add_special_tokens=False)["input_ids"])
    # the saved rows are the aligned rows
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    i = min(expected)
    ids, c = list(expected[i]), torch.tensor(list(expected[i].values()), dtype=torch.float32)
    row = (c[:, None] * base.get_input_embeddings().weight[ids]).sum(0) / c.sum()
    assert torch.allclose(model.get_input_embeddings().weight[i], row, atol=1e-6)
    ids = torch.tensor([ext_tok(KOREAN, add_special_tokens=False)["input_ids"]])
    assert (ids >= 512).any() and torch.isfinite(model(ids).logits).all()


def test_align_init_needs_a_corpus_and_a_positive_sample(tiny_llama_dir, extended_dir, tmp_path, capsys):
    assert main(["model", "extend", "--base", str(tiny_llama_dir), "--tokenizer", str(extended_dir),
                 "--init", "align", "--out", str(tmp_path / "m")]) == 2
    assert "--init align needs training text (--corpus TRAIN_TEXT)" in capsys.readouterr().err
    assert main(["model", "extend", "--base", str(tiny_llama_dir), "--tokenizer", str(extended_dir),
                 "--init", "align", "--corpus", "x.txt", "--align-tokens", "0", "--out", str(tmp_path / "m")]) == 2
    assert "--align-tokens must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    with pytest.raises(LangadaptError, match="init 'align' needs a sample"):
        extend_model(None, None, None, init="align")


def test_align_needs_fast_tokenizers(tiny_tok):
    class Slow:
        is_fast = False

    with pytest.raises(LangadaptError, match="only fast .* the new tokenizer"):
        align_counts(tiny_tok, Slow(), "text", 512, 524)
