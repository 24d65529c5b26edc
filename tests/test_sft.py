"""Instruction tuning: templates, answer masks token by token, truncation, packing, `langadapt sft`."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.tokenizer.templates import BUILTIN_TEMPLATES, answer_spans, resolve_template
from langadapt.train.recipe import SftOptions, recipe_from_dict
from langadapt.train.sft import sft, split_heldout
from langadapt.train.sft_data import IGNORE, collate, encode_conversation, label_tokens, pack, truncate

ONE_TURN = [{"role": "user", "content": "Where is the fox?"}, {"role": "assistant", "content": "In Paris."}]
TWO_TURNS = ONE_TURN + [{"role": "user", "content": "And the dog?"}, {"role": "assistant", "content": "Asleep."}]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _labelled_text(tok, example) -> list[str]:
    """The decoded runs of consecutive labelled tokens."""
    runs, cur = [], []
    for t, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE:
            assert label == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


# ----------------------------------------------------------------------------- templates and masks

def test_chatml_mask_token_by_token(tok):
    template = resolve_template(tok, "chatml")
    ex, cut = encode_conversation(tok, template, TWO_TURNS, 256)
    pieces = ["<|im_start|>user\nWhere is the fox?<|im_end|>\n<|im_start|>assistant\n", "In Paris.<|im_end|>\n",
              "<|im_start|>user\nAnd the dog?<|im_end|>\n<|im_start|>assistant\n", "Asleep.<|im_end|>\n"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in pieces]
    assert ex["input_ids"] == sum(ids, [])
    assert ex["labels"] == [IGNORE] * len(ids[0]) + ids[1] + [IGNORE] * len(ids[2]) + ids[3]
    assert cut == ""
    last, _ = encode_conversation(tok, template, TWO_TURNS, 256, last_turn_only=True)
    assert last["labels"] == [IGNORE] * (len(ids[0]) + len(ids[1]) + len(ids[2])) + ids[3]
    everything, _ = encode_conversation(tok, template, TWO_TURNS, 256, train_on_prompt=True)
    assert everything["labels"] == everything["input_ids"]


@pytest.mark.parametrize("name, runs", [
    ("alpaca", ["In Paris.<|im_end|>", "Asleep.<|im_end|>"]),
    ("llama2-chat", [" In Paris. <|im_end|>", " Asleep. <|im_end|>"]),
    ("firefly", ["In Paris.<|im_end|>", "Asleep.<|im_end|>"]),
    ("chatml", ["In Paris.<|im_end|>\n", "Asleep.<|im_end|>\n"]),
    ("auto", ["In Paris.<|im_end|>\n", "Asleep.<|im_end|>\n"]),  # the tiny tokenizer's own: ChatML
])
def test_every_template_labels_exactly_the_answers(tok, name, runs):
    ex, _ = encode_conversation(tok, resolve_template(tok, name), TWO_TURNS, 256)
    assert _labelled_text(tok, ex) == runs
    # the unlabelled part decodes to the prompt text, in order
    assert tok.decode(ex["input_ids"]) == answer_spans(tok, resolve_template(tok, name), TWO_TURNS)[0]


def test_templates_render_the_seed_formats(tok):
    text, spans = answer_spans(tok, BUILTIN_TEMPLATES["firefly"], ONE_TURN)
    assert text == "<|im_start|>Where is the fox?<|im_end|><|im_end|>In Paris.<|im_end|>"  # <s>input</s></s>target</s>
    assert text[spans[0][0]:spans[0][1]] == "In Paris.<|im_end|>"
    text, _ = answer_spans(tok, BUILTIN_TEMPLATES["llama2-chat"], ONE_TURN)
    assert text == ("<|im_start|>[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
                    "Where is the fox? [/INST] In Paris. <|im_end|>")
    text, _ = answer_spans(tok, BUILTIN_TEMPLATES["alpaca"], [{"role": "system", "content": "Be short."}, *ONE_TURN])
    assert text == "<|im_start|>Be short.\n\n### Instruction:\nWhere is the fox?\n\n### Response:\nIn Paris.<|im_end|>"


def test_llama2_sentencepiece_masks(shared_data):
    from langadapt.tokenizer.load import load_tokenizer

    tok = load_tokenizer(str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"))
    ex, _ = encode_conversation(tok, resolve_template(tok, "llama2-chat"), TWO_TURNS, 512)
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"].count(tok.eos_token_id) == 2
    assert _labelled_text(tok, ex) == ["In Paris. </s>", "Asleep. </s>"]
    ex, _ = encode_conversation(tok, resolve_template(tok, "alpaca"), ONE_TURN, 512)
    assert _labelled_text(tok, ex) == ["In Paris.</s>"]


def test_a_template_that_never_marks_the_assistant_is_refused(tok, tmp_path):
    same = tmp_path / "plain.jinja"
    same.write_text("{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}")
    with pytest.raises(LangadaptError, match="never marks an assistant turn"):
        answer_spans(tok, resolve_template(tok, str(same)), ONE_TURN)
    users_only = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(LangadaptError, match="never marks an assistant turn"):
        answer_spans(tok, users_only, ONE_TURN)


def test_unknown_template_and_missing_auto(tok, tiny_tokenizer_dir):
    with pytest.raises(LangadaptError, match="unknown template 'vicuna'; choose one of alpaca, llama2-chat"):
        resolve_template(tok, "vicuna")
    bare = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    bare.chat_template = None
    with pytest.raises(LangadaptError, match="no chat template of its own"):
        resolve_template(bare, "auto")


def test_label_tokens_by_start_offset():
    assert label_tokens([(0, 2), (2, 5), (5, 7), (7, 9)], [(2, 7)]) == [False, True, True, False]
    assert label_tokens([(0, 1), (1, 2), (2, 3)], [(0, 1), (2, 3)]) == [True, False, True]


# ----------------------------------------------------------------------------- truncation

def test_truncation_keeps_the_prompt_end_and_the_answer_start():
    ids = [0] + list(range(100, 110)) + list(range(200, 210))  # BOS, prompt of 10, answer of 10
    labels = [IGNORE] * 11 + list(range(200, 210))
    out_ids, out_labels, p_cut, a_cut = truncate(ids, labels, 11, 12, bos_id=0)
    # the answer needs 10 > 12 - 11 tokens: it keeps max(1, 12 // 2) = 6, the prompt BOS + its last 5
    assert out_ids == [0, 105, 106, 107, 108, 109, 200, 201, 202, 203, 204, 205]
    assert out_labels == [IGNORE] * 6 + [200, 201, 202, 203, 204, 205]
    assert (p_cut, a_cut) == (True, True)
    # a short answer is kept whole; only the prompt is cut
    out_ids, _, p_cut, a_cut = truncate(ids[:14], labels[:14], 11, 8, bos_id=0)
    assert out_ids == [0, 106, 107, 108, 109, 200, 201, 202] and (p_cut, a_cut) == (True, False)
    assert truncate(ids, labels, 11, 50, bos_id=0) == (ids, labels, False, False)


def test_long_examples_are_cut_or_dropped_and_counted(tok):
    from langadapt.train.sft_data import encode_conversations

    long = [{"role": "user", "content": "the quick brown fox " * 30}, {"role": "assistant", "content": "yes " * 40}]
    template = resolve_template(tok, "chatml")
    examples, stats = encode_conversations(tok, template, [ONE_TURN, long], 64)
    assert stats.kept == 2 and stats.prompt_cut == 1 and stats.answer_cut == 1 and stats.dropped == 0
    assert len(examples[1]["input_ids"]) == 64
    assert sum(label != IGNORE for label in examples[1]["labels"]) == 32
    examples, stats = encode_conversations(tok, template, [ONE_TURN, long], 64, truncate_long=False)
    assert stats.kept == 1 and stats.dropped == 1
    assert list(stats.dropped_reasons) == [f"longer than max_seq_len ({len(tok(answer_spans(tok, template, long)[0])['input_ids'])} > 64 tokens)"]


# ----------------------------------------------------------------------------- packing

def test_packed_rows_give_the_same_loss_as_separate_examples(tok, tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    model.config.use_cache = False
    template = resolve_template(tok, "chatml")
    convs = [ONE_TURN, TWO_TURNS, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]
    examples = [encode_conversation(tok, template, c, 256)[0] for c in convs]
    rows = pack(examples, 256)
    assert len(rows) == 1 and rows[0]["position_ids"][:3] == [0, 1, 2]

    def token_nll(batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        return nll[labels != IGNORE]

    with torch.no_grad():
        packed = token_nll(collate(rows, pad_id=0))
        separate = token_nll(collate(examples, pad_id=0))
    assert packed.shape == separate.shape
    assert torch.allclose(packed, separate, atol=1e-5)


def test_packing_respects_the_row_length(tok):
    examples = [{"input_ids": [1] * n, "labels": [1] * n} for n in (5, 4, 3, 6, 2)]
    rows = pack(examples, 9)
    assert [len(r["input_ids"]) for r in rows] == [9, 9, 2]
    assert rows[1]["position_ids"] == [0, 1, 2, 0, 1, 2, 3, 4, 5]


def test_split_heldout_is_seeded_and_capped():
    train, held = split_heldout(list(range(100)), 0.05, seed=1)
    assert len(held) == 5 and len(train) == 95 and set(train) | set(held) == set(range(100))
    assert split_heldout(list(range(100)), 0.05, seed=1) == (train, held)
    assert len(split_heldout(list(range(20000)), 0.5, seed=1)[1]) == 200
    assert split_heldout([1, 2, 3], 0.0, seed=1) == ([1, 2, 3], [])


# ----------------------------------------------------------------------------- the command

def _write_alpaca(path, n):
    rows = [{"instruction": f"Say the fox line {i}.", "input": "", "output": "The quick brown fox jumps over the lazy dog."}
            for i in range(n)]
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _sft_recipe(model_dir, data, out, **kw) -> SftOptions:
    base = dict(model=str(model_dir), data=[str(data)], out=str(out), template="chatml", max_seq_len=64,
                batch_size=4, grad_accum=1, max_steps=6, learning_rate=5e-3, lora_r=8, lora_alpha=16,
                eval_steps=0, save_steps=100, logging_steps=1, progress=False, heldout_share=0.1)
    base.update(kw)
    return recipe_from_dict(base, cls=SftOptions)


def test_sft_trains_answers_and_merges(tiny_llama_dir, tmp_path):
    data = _write_alpaca(tmp_path / "alpaca.json", 40)
    summary, model = sft(_sft_recipe(tiny_llama_dir, data, tmp_path / "run", pack=True, max_seq_len=128))
    assert summary["train_examples"]["kept"] == 36 and summary["heldout_examples"]["kept"] == 4
    assert summary["packed_rows"] < 36
    assert summary["heldout_answer_loss"] < summary["heldout_answer_loss_before"]
    record = json.loads((tmp_path / "run" / "adapter" / "adaptation.json").read_text())
    assert record["step"] == "sft-lora" and record["template"] == "chatml"
    assert (tmp_path / "run" / "curves.png").is_file()
    assert main(["merge", "--adapter", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    model.eval()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)


def test_sft_continues_an_adapter(tiny_llama_dir, tmp_path):
    data = _write_alpaca(tmp_path / "alpaca.json", 20)
    first, _ = sft(_sft_recipe(tiny_llama_dir, data, tmp_path / "one", max_steps=3))
    again, _ = sft(_sft_recipe("", data, tmp_path / "two", max_steps=3, adapter=str(tmp_path / "one" / "adapter")))
    assert again["base_source"] == first["base_source"]
    # it starts where the first run ended: its loss before training is the first run's loss after
    assert again["heldout_answer_loss_before"] == pytest.approx(first["heldout_answer_loss"], abs=1e-4)


def test_sft_command_bad_inputs(tiny_llama_dir, tmp_path, capsys):
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "a", "reply": "b"}\n', encoding="utf-8")
    assert main(["sft", "--model", str(tiny_llama_dir), "--data", str(odd), "--out", str(tmp_path / "r")]) == 2
    assert "odd.jsonl:1" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text('[{"instruction": "a", "output": " "}]', encoding="utf-8")
    assert main(["sft", "--model", str(tiny_llama_dir), "--data", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "empty.json:1: empty answer in 'output'" in capsys.readouterr().err
    good = _write_alpaca(tmp_path / "good.json", 4)
    assert main(["sft", "--model", str(tiny_llama_dir), "--data", str(good), "--out", str(tmp_path / "r"),
                 "--template", "vicuna"]) == 2
    assert "unknown template 'vicuna'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_list_templates(capsys):
    assert main(["sft", "--list-templates"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["alpaca", "llama2-chat", "firefly", "chatml", "auto",
                                                              "FILE.jinja"]
