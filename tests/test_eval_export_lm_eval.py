"""`langadapt eval export-lm-eval`: the task YAMLs, rendered as lm-eval renders them, ask what `eval mc` asks."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from langadapt.cli import main
from langadapt.eval.export_lm_eval import task_config
from langadapt.eval.mc import PRESETS, fit_prompt, load_subjects
from test_eval_mc import _cmmlu_root

_spec = importlib.util.spec_from_file_location(
    "check_lm_eval_cmmlu", Path(__file__).resolve().parents[1] / "benchmarks" / "check_lm_eval_cmmlu.py")
check_lm_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lm_eval)


def _docs(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        return check_lm_eval.rows(path)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _lm_eval_prompt(config: dict, shot_docs: list[dict], doc: dict) -> tuple[str, list[str]]:
    """lm-eval's context and continuations for `doc` under an exported task config."""
    def choices(d):
        c = config["doc_to_choice"]
        return c if isinstance(c, list) else ast.literal_eval(check_lm_eval.render(c, d))

    text = config["description"]
    for shot in shot_docs:
        target = int(check_lm_eval.render(config["doc_to_target"], shot))
        text += (check_lm_eval.render(config["doc_to_text"], shot) + config["target_delimiter"] + choices(shot)[target]
                 + config["fewshot_delimiter"])
    context = text + check_lm_eval.render(config["doc_to_text"], doc)
    return context, [config["target_delimiter"] + c for c in choices(doc)]


@pytest.fixture()
def datasets(tmp_path) -> list[Path]:
    root = _cmmlu_root(tmp_path / "cmmlu")
    ti = tmp_path / "ti" / "Ti-MMLU_subset670"
    ti.mkdir(parents=True)
    (ti.parent / "5_shot_Question_Answer").mkdir()
    record = {"loc": "x0", "polished_ti_content": " ཀ་ཁ།\nA ཀ\nB ཁ\nC ག\nD ང \n", "answer": "B"}
    for folder in (ti, ti.parent / "5_shot_Question_Answer"):
        (folder / "agronomy.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    generic = tmp_path / "generic" / "test"
    generic.mkdir(parents=True)
    (generic.parent / "dev").mkdir()
    lines = [{"question": "2+2?", "choices": ["3", "4", "5"], "answer": "4"},
             {"question": "1+1?", "choices": ["2", "3"], "answer": 0}, {"question": "x?", "choices": ["a", "b"],
                                                                        "answer": "B"}]
    for folder in (generic, generic.parent / "dev"):
        (folder / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return [root / "test" / "arith.csv", ti / "agronomy.jsonl", generic / "quiz.jsonl"]


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("shots", [0, 2])
def test_exported_tasks_render_the_eval_mc_prompts(datasets, preset, shots, tiny_tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    for path in datasets:
        config = task_config(path, PRESETS[preset], shots, "t")
        [(subject, questions, examples)] = load_subjects([str(path)], shots, 0)
        dev = path.parent.parent / ("5_shot_Question_Answer" if path.suffix == ".jsonl" and "Ti" in path.parent.name
                                    else "dev") / path.name
        shot_docs = _docs(dev)[:shots]
        for doc, q in zip(_docs(path), questions):
            context, continuations = _lm_eval_prompt(config, shot_docs, doc)
            assert fit_prompt(tok, PRESETS[preset], q, examples, 10**6) == (context, 0), (path, preset)
            assert continuations == PRESETS[preset].answers(q)
            assert int(check_lm_eval.render(config["doc_to_target"], doc)) == q.answer


def test_lm_eval_preset_is_lm_eval_cmmlu_token_by_token(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    root = _cmmlu_root(tmp_path)
    for split in ("dev", "test"):  # a CMMLU subject: lm-eval's description names it in Chinese
        (root / split / "arith.csv").rename(root / split / "agronomy.csv")
    counts = check_lm_eval.check(tok, root, shots=2)
    assert counts["questions"] == 3
    assert counts["same_context_text"] == counts["same_tokens"] == counts["same_export"] == 3


def test_eval_export_lm_eval_command(datasets, tmp_path, capsys):
    out = tmp_path / "tasks"
    assert main(["eval", "export-lm-eval", "--data", *map(str, datasets), str(datasets[0]), "--shots", "2",
                 "--out", str(out)]) == 0
    group = yaml.safe_load((out / "langadapt_mc.yaml").read_text())
    assert group["task"][:3] == ["langadapt_mc_arith", "langadapt_mc_agronomy", "langadapt_mc_quiz"]
    assert group["task"][3] == "langadapt_mc_test_arith"  # the same subject again gets its folder's name
    arith = yaml.safe_load((out / "langadapt_mc_arith.yaml").read_text())
    assert (arith["dataset_path"], arith["num_fewshot"], arith["fewshot_split"]) == ("csv", 2, "dev")
    assert arith["dataset_kwargs"]["data_files"]["dev"].endswith("dev/arith.csv")
    assert arith["doc_to_text"] == check_lm_eval.LM_EVAL_DOC_TO_TEXT  # lm-eval's cmmlu template
    assert "lm_eval --include_path" in capsys.readouterr().out
