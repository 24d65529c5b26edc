"""`langadapt eval generate`: ROUGE-L in language units, exact match, per-task scores and batched generation."""

from __future__ import annotations

import json

import pytest
import torch

from langadapt.cli import main
from langadapt.eval.generate import generate_answers, score_tasks
from langadapt.eval.rouge import exact_match, lcs_length, rouge_l, units
from langadapt.lang.profiles import get_profile
from langadapt.tokenizer.templates import BUILTIN_TEMPLATES

ZH, BO, EN = get_profile("zh"), get_profile("bo"), get_profile("en")


def test_chinese_rouge_l_by_hand():
    prediction, reference = "我爱北京天安门。", "我爱天安门广场"
    assert units(prediction, ZH) == list("我爱北京天安门")  # the full stop is not a unit
    # LCS 我爱天安门 = 5 of 7 and 7 units: P = R = F = 5/7
    assert lcs_length(units(prediction, ZH), units(reference, ZH)) == 5
    assert 100 * rouge_l(units(prediction, ZH), units(reference, ZH)) == pytest.approx(100 * 5 / 7)
    assert units("基于SOS方法，2024年", ZH) == ["基", "于", "SOS", "方", "法", "2024", "年"]


def test_tibetan_rouge_l_by_hand():
    reference = "བཀྲ་ཤིས་བདེ་ལེགས།"
    prediction = "བཀྲ་ཤིས་ཡིན། །བདེ་ལེགས་"
    assert units(reference, BO) == ["བཀྲ", "ཤིས", "བདེ", "ལེགས"]  # tshegs and shads are not units
    assert units(prediction, BO) == ["བཀྲ", "ཤིས", "ཡིན", "བདེ", "ལེགས"]
    # LCS 4: P = 4/5, R = 4/4, F = 2 * 0.8 * 1 / 1.8
    assert rouge_l(units(prediction, BO), units(reference, BO)) == pytest.approx(2 * 0.8 / 1.8)


def test_other_languages_use_whitespace_words_and_empty_scores_zero():
    assert rouge_l(units("the cat sat", EN), units("the cat sat down", EN)) == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l([], ["a"]) == 0.0 and rouge_l(["a"], []) == 0.0


def test_jieba_units():
    pytest.importorskip("jieba")
    assert units("我爱北京天安门。", ZH, "jieba") == ["我", "爱", "北京", "天安门"]


def test_exact_match_ignores_edge_spaces_and_punctuation():
    assert exact_match(" Verse། ", "Verse") and exact_match("正面。", "正面")
    assert not exact_match("Verse prose", "Verse") and not exact_match("正面", "负面")


def test_units_on_real_text(shared_data):
    row = json.loads((shared_data / "bo/qa-tibetanqa/tibetanqa-dev.jsonl").open(encoding="utf-8").readline())
    syllables = units(row["answer"], BO)
    assert syllables and all("\u0f0b" not in s and "\u0f0d" not in s for s in syllables)
    assert len(syllables) == len([p for p in row["answer"].replace("།", "་").split("་") if p.strip()])
    title = (shared_data / "zh/summarization-csl/dev.tsv").open(encoding="utf-8").readline().split("\t")[2].strip()
    assert "".join(units(title, ZH)) == title and len(units(title, ZH)) == len(title)  # a title of Han characters
    assert rouge_l(units(title, ZH), units(title[:10], ZH)) > 0  # rouge-score's default tokenizer gives 0 here


def test_score_tasks_per_task_and_avg():
    samples = [{"task": "qa", "answer": "我爱北京天安门", "reference": "我爱天安门广场"},
               {"task": "qa", "answer": "a", "reference": "a"},
               {"task": "classification", "answer": "正面。", "reference": "正面"},
               {"task": "classification", "answer": "负面", "reference": "正面"},
               {"task": "tense", "answer": "past", "reference": "past"}]
    result = score_tasks(samples, ZH, exact=["tense"])
    assert result["tasks"]["qa"] == {"n": 2, "metric": "rouge_l", "score": round((500 / 7 + 100) / 2, 2)}
    assert result["tasks"]["classification"] == {"n": 2, "metric": "exact_match", "score": 50.0}
    assert result["tasks"]["tense"]["metric"] == "exact_match"
    assert result["Avg"] == round((result["tasks"]["qa"]["score"] + 50 + 100) / 3, 2)
    assert [s["score"] for s in samples[2:]] == [100.0, 0.0, 100.0]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


def test_batched_answers_equal_one_at_a_time(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": text}] for text in
               ("hi", "What is the capital of France?", "모든 국민은 법 앞에 평등하다.", "The quick brown fox")]
    template = BUILTIN_TEMPLATES["chatml"]
    one = generate_answers(model, tok, template, prompts, 8, batch_size=1)
    batched = generate_answers(model, tok, template, prompts, 8, batch_size=4)
    assert [a["answer"] for a in batched] == [a["answer"] for a in one]
    assert [a["tokens"] for a in batched] == [a["tokens"] for a in one]
    assert all(1 <= a["tokens"] <= 8 for a in one)


def test_answers_cut_by_the_token_limit_keep_whole_characters(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": "모든 국민은 법 앞에 평등하다. 대한민국"}]]
    for limit in range(1, 9):
        [answer] = generate_answers(model, tok, BUILTIN_TEMPLATES["chatml"], prompts, limit)
        assert "\ufffd" not in answer["answer"] and answer["tokens"] <= limit


def test_eval_generate_command_scores_tasks(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"
    rows = [{"instruction": f"q{i}", "output": "Paris", "task": "qa"} for i in range(3)]
    rows += [{"instruction": "label it", "output": "positive", "task": "classification"}]
    rows += [{"kind": "summary", "input": "long text", "target": "short"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]), encoding="utf-8")
    firefly = tmp_path / "firefly.jsonl"
    firefly.write_text(json.dumps(rows[4]) + "\n", encoding="utf-8")
    out, preds = tmp_path / "gen.json", tmp_path / "gen.jsonl"
    assert main(["eval", "generate", "--model", str(tiny_llama_dir), "--data", str(data), str(firefly),
                 "--lang", "en", "--limit", "2", "--max-new-tokens", "4", "--template", "chatml",
                 "--json", str(out), "--predictions", str(preds)]) == 0
    result = json.loads(out.read_text())
    assert {t: s["n"] for t, s in result["tasks"].items()} == {"qa": 2, "classification": 1, "summary": 1}
    assert result["tasks"]["classification"]["metric"] == "exact_match"
    assert result["Avg"] == round(sum(s["score"] for s in result["tasks"].values()) / 3, 2)
    assert result["tokens_per_second"] > 0 and len(preds.read_text().splitlines()) == 4
    assert "Avg" in capsys.readouterr().out
