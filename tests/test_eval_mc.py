"""`langadapt eval mc`: readers, prompt presets token by token, shot dropping, log-likelihood scoring."""

from __future__ import annotations

import json

import pytest
import torch

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.eval.mc import (PRESETS, Question, answer_tokens, evaluate_mc, fit_prompt, load_subjects,
                               question_files, read_questions, score_answers, shot_file)

Q = Question("agronomy", "肉牛屠宰后，胴体的哪个部位肉质较好", ["胸", "腹", "大腿", "小腿"], 2, "t:2")
SHOT = Question("agronomy", "下列鸭品种中，产蛋量最高的品种是", ["高邮鸭", "北京鸭", "樱桃谷鸭", "绍鸭"], 3, "d:2")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


def reference_loglikelihood(model, context: list[int], answer: list[int]) -> float:
    """log P(answer | context), one plain forward pass over context + answer."""
    ids = torch.tensor([context + answer])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(answer))


# ----------------------------------------------------------------------------- prompts

def test_cmmlu_preset_is_the_official_prompt():
    prompt = PRESETS["cmmlu"].prompt("agronomy", [SHOT], Q)
    assert prompt == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                      "题目：下列鸭品种中，产蛋量最高的品种是\nA. 高邮鸭\nB. 北京鸭\nC. 樱桃谷鸭\nD. 绍鸭\n答案是：D\n\n"
                      "题目：肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案是：")
    assert PRESETS["cmmlu"].answers(Q) == ["A", "B", "C", "D"]


def test_chinese_llama_alpaca_2_preset():
    preset = PRESETS["chinese-llama-alpaca-2"]
    body = "肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案："
    assert preset.prompt("agronomy", [], Q) == body  # zero-shot: no header (history = '')
    assert preset.prompt("agronomy", [SHOT], Q) == (
        "以下是中国关于agronomy考试的单项选择题，请选出其中的正确答案。\n\n"
        "下列鸭品种中，产蛋量最高的品种是\nA. 高邮鸭\nB. 北京鸭\nC. 樱桃谷鸭\nD. 绍鸭\n答案：D\n\n" + body)


def test_lm_eval_preset_strips_the_question_and_puts_a_space_before_the_answer():
    preset = PRESETS["lm-eval"]
    q = Question("agronomy", " 肉牛屠宰后 \n", ["胸", "腹", "大腿", "小腿"], 0, "t:2")
    assert preset.prompt("agronomy", [SHOT], q) == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "下列鸭品种中，产蛋量最高的品种是\nA. 高邮鸭\nB. 北京鸭\nC. 樱桃谷鸭\nD. 绍鸭\n答案： D\n\n"
        "肉牛屠宰后\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案：")
    assert preset.answers(q) == [" A", " B", " C", " D"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_answers_are_scored_after_the_unchanged_prompt_tokens(tiny, name):
    _, tok = tiny
    preset = PRESETS[name]
    prompt = preset.prompt("agronomy", [SHOT], Q)
    context, answers, merged = answer_tokens(tok, preset, prompt, preset.answers(Q))
    assert not merged and context == tok(prompt, add_special_tokens=preset.add_special_tokens)["input_ids"]
    for letter, ids in zip("ABCD", answers):
        assert context + ids == tok(prompt + preset.answers(Q)["ABCD".index(letter)],
                                    add_special_tokens=preset.add_special_tokens)["input_ids"]
        assert tok.decode(ids) == preset.answer_prefix + letter


@pytest.fixture(scope="module")
def colon_tokenizer(tmp_path_factory):
    """A byte-level BPE without pre-tokenization that learned to merge '：' with the letter after it,
    as SentencePiece vocabularies (Chinese-LLaMA's) do; saved with a tiny random Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([f"：{c}" for c in "ABCD"] * 50, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))
    return model.eval(), tok


def test_a_letter_merged_with_the_colon_is_scored_with_it(colon_tokenizer):
    model, tok = colon_tokenizer
    preset = PRESETS["chinese-llama-alpaca-2"]
    prompt = preset.prompt("agronomy", [], Q)
    prompt_ids = tok(prompt)["input_ids"]
    assert tok.convert_ids_to_tokens(tok("：A")["input_ids"]) != tok.convert_ids_to_tokens(tok("：")["input_ids"]) + \
        tok.convert_ids_to_tokens(tok("A")["input_ids"])  # the tokenizer does merge
    context, answers, merged = answer_tokens(tok, preset, prompt, preset.answers(Q))
    assert merged and len(context) < len(prompt_ids) and context == prompt_ids[:len(context)]
    for letter, ids in zip("ABCD", answers):
        assert context + ids == tok(prompt + letter)["input_ids"]  # the answer as tokenized inside the prompt
        assert tok.decode(ids).endswith("：" + letter)
    scores = score_answers(model, [(context, answers)], progress=False)[0]
    assert scores == pytest.approx([reference_loglikelihood(model, context, a) for a in answers], abs=1e-4)


# ----------------------------------------------------------------------------- scoring

def test_batched_scores_equal_a_plain_computation_per_choice(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)

    def rand(n):
        return torch.randint(3, 500, (n,), generator=g).tolist()

    requests = [(rand(5), [rand(1), rand(1), rand(1), rand(1)]),          # one row: 4 single-token answers
                (rand(40), [rand(3), rand(1), rand(2)]),                  # multi-token answers: a row each
                (rand(17), [rand(1), rand(2)]),
                (rand(90), [rand(1), rand(1), rand(1), rand(1), rand(1)])]
    scores = score_answers(model, requests, pad_id=0, batch_tokens=100, progress=False)  # several padded batches
    for (context, answers), got in zip(requests, scores):
        assert got == pytest.approx([reference_loglikelihood(model, context, a) for a in answers], abs=1e-4)


def test_a_shared_prefix_run_once_gives_the_same_scores(tiny):
    """The shots' KV cache reused for every question (`groups`) scores as the whole prompts do."""
    model, _ = tiny
    g = torch.Generator().manual_seed(1)

    def rand(n):
        return torch.randint(3, 500, (n,), generator=g).tolist()

    shots, other = rand(60), rand(30)
    requests = [(shots + rand(7), [rand(1), rand(1), rand(1), rand(1)]),
                (shots + rand(19), [rand(3), rand(1), rand(2)]),      # multi-token answers: rows of their own
                (shots + rand(2), [rand(1), rand(1)]),
                (other + rand(9), [rand(1), rand(1)]),                # another subject: its own prefix
                (other + rand(4), [rand(2), rand(1)])]
    tokens_run: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args, kw: tokens_run.append(kw["input_ids"].numel()),
                                           with_kwargs=True)
    try:
        plain = score_answers(model, requests, batch_tokens=150, progress=False)
        plain_tokens, tokens_run[:] = sum(tokens_run), []
        reused = score_answers(model, requests, batch_tokens=150, progress=False, groups=["a", "a", "a", "b", "b"])
    finally:
        hook.remove()
    for p, r in zip(plain, reused):
        assert r == pytest.approx(p, abs=1e-4)
    assert sum(tokens_run) < plain_tokens / 2  # the prefixes really ran once


# ----------------------------------------------------------------------------- shot dropping

def test_shots_are_dropped_whole_longest_first_and_counted(tiny):
    _, tok = tiny
    preset = PRESETS["cmmlu"]
    short = Question("agronomy", "短", ["a", "b", "c", "d"], 0, "d:1")
    long = Question("agronomy", "长" * 30, ["a", "b", "c", "d"], 1, "d:2")
    middle = Question("agronomy", "中" * 15, ["a", "b", "c", "d"], 2, "d:3")
    shots = [short, long, middle, short]
    ids = lambda p: len(tok(p)["input_ids"])  # noqa: E731
    full = ids(preset.prompt("agronomy", shots, Q)) + 1
    assert fit_prompt(tok, preset, Q, shots, full) == (preset.prompt("agronomy", shots, Q), 0)
    without_long = preset.prompt("agronomy", [short, middle, short], Q)
    assert fit_prompt(tok, preset, Q, shots, full - 1) == (without_long, 1)
    assert fit_prompt(tok, preset, Q, shots, ids(without_long) + 1) == (without_long, 1)
    # equal shots: the later one goes first, the order of the rest is kept
    assert fit_prompt(tok, preset, Q, shots, ids(without_long)) == (preset.prompt("agronomy", [short, short], Q), 2)
    bare = ids(preset.prompt("agronomy", [], Q)) + 1
    assert fit_prompt(tok, preset, Q, shots, bare) == (preset.prompt("agronomy", [], Q), 4)
    assert fit_prompt(tok, preset, Q, shots, bare - 1) is None  # the question alone does not fit


# ----------------------------------------------------------------------------- files

def test_reads_cmmlu_and_finds_its_dev_shots(shared_data):
    test = shared_data / "zh/mc-cmmlu/test/agronomy.csv"
    questions = read_questions(test)
    assert len(questions) > 100 and questions[0].letters == "ABCD" and len(questions[0].options) == 4
    assert shot_file(test) == shared_data / "zh/mc-cmmlu/dev/agronomy.csv"
    assert read_questions(shot_file(test))[0].text == "肉牛屠宰后，胴体的哪个部位肉质较好"
    assert len(question_files(shared_data / "zh/mc-cmmlu")) == 34  # the root: test/ files


def test_reads_ti_mmlu_with_its_five_shots(shared_data):
    folder = shared_data / "bo/mc-ti-mmlu"
    files = question_files(folder)
    assert len(files) == 34 and files[0].parent.name == "Ti-MMLU_subset670"
    [(subject, questions, shots)] = load_subjects([str(files[0])], shots=5, limit=3)
    assert subject == "agronomy" and len(questions) == 3 and len(shots) == 5
    assert shots[0].where.startswith(str(folder / "5_shot_Question_Answer" / "agronomy.jsonl"))
    assert questions[0].options == [] and "\nA" in questions[0].text  # the options are in the text


def test_generic_jsonl_and_clear_errors(tmp_path):
    good = tmp_path / "quiz.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4", "5"], "answer": "4"}) + "\n"
                    + json.dumps({"question": "1+1?", "choices": ["2", "3"], "answer": 0, "subject": "math"}) + "\n")
    a, b = read_questions(good)
    assert (a.answer, a.letters, a.subject, b.answer, b.subject) == (1, "ABC", "quiz", 0, "math")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "choices": ["a", "b"], "answer": "C"}) + "\n")
    with pytest.raises(LangadaptError, match=r"bad.jsonl:1: answer 'C' is not one of A, B"):
        read_questions(bad)
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(LangadaptError, match=r"x.csv:1: header .* expected a header ',Question,A,B,C,D,Answer'"):
        read_questions(csv)
    with pytest.raises(LangadaptError, match="--shots 5 needs a dev split"):
        load_subjects([str(good)], shots=5, limit=0)


def _cmmlu_root(tmp_path):
    for split, rows in (("dev", [("1+1=?", "2", "3", "4", "5", "A")] * 5),
                        ("test", [("2+2=?", "3", "4", "5", "6", "B"), ("3+3=?", "5", "6", "7", "8", "B"),
                                  ("一加一", "一", "二", "三", "四", "B")])):
        (tmp_path / split).mkdir(parents=True)
        (tmp_path / split / "arith.csv").write_text(
            ",Question,A,B,C,D,Answer\n" + "".join(f"{i},{','.join(r)}\n" for i, r in enumerate(rows)), encoding="utf-8")
    return tmp_path


def test_evaluate_mc_summary_and_predictions(tiny, tmp_path):
    model, tok = tiny
    subjects = load_subjects([str(_cmmlu_root(tmp_path))], shots=2, limit=2)
    summary, records = evaluate_mc(model, tok, subjects, PRESETS["cmmlu"], max_length=256, progress=False)
    assert summary["overall"]["n"] == 2 and summary["overall"]["chance"] == 25.0
    assert summary["subjects"]["arith"]["n"] == 2 and summary["shots_dropped"] == 0
    assert [r["shots"] for r in records] == [2, 2] and all(len(r["loglikelihoods"]) == 4 for r in records)
    for r in records:
        assert r["prediction"] == "ABCD"[max(range(4), key=lambda i: r["loglikelihoods"][i])]


def test_eval_mc_command(tiny_llama_dir, tmp_path, capsys):
    root = _cmmlu_root(tmp_path / "data")
    out, preds = tmp_path / "mc.json", tmp_path / "mc.jsonl"
    assert main(["eval", "mc", "--model", str(tiny_llama_dir), "--data", str(root), "--shots", "5",
                 "--max-length", "230", "--json", str(out), "--predictions", str(preds)]) == 0
    summary = json.loads(out.read_text())
    assert summary["overall"]["n"] == 3 and summary["questions_skipped_too_long"] == 0
    assert summary["shots_dropped"] > 0 and summary["questions_per_second"] > 0
    assert len(preds.read_text().splitlines()) == summary["overall"]["n"]
    assert "overall" in capsys.readouterr().out
