"""Check: `eval mc --preset lm-eval` asks exactly what lm-evaluation-harness 0.4.x's `cmmlu` asks.

    .venv/bin/python benchmarks/check_lm_eval_cmmlu.py [--data ../shared/data] [--tokenizer smollm2-135m ...]

lm-eval is not a dependency, so its prompt and tokenization are rebuilt here from its code
(v0.4.12, read by hand): the task strings of `lm_eval/tasks/cmmlu/_default_template_yaml` and the
description of `_generate_configs.py`; `ConfigurableTask.fewshot_context` (description + each
first-n dev example as doc_to_text + target_delimiter " " + its letter + fewshot_delimiter "\\n\\n",
then doc_to_text of the question); the multiple-choice requests (context, " " + letter); and
`TemplateLM._encode_pair` (trailing whitespace of the context moved to the continuation; whole =
encode(context + continuation), continuation tokens = whole[len(encode(context)):], the
tokenizer's default special tokens as HFLM >= 0.4.9 uses them).

For every question of every CMMLU test file, 0- and 5-shot, it compares lm-eval's context string,
context tokens and each choice's continuation tokens with those of `eval mc --preset lm-eval`
(`fit_prompt` without a length limit, `answer_tokens`), and the task YAML that `eval export-lm-eval`
writes, rendered with jinja2 as lm-eval renders it, with lm-eval's own template. Prints the counts.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parents[1]
# lm_eval/tasks/cmmlu/_default_template_yaml and _generate_configs.py at v0.4.12
LM_EVAL_DOC_TO_TEXT = "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："
LM_EVAL_CHOICES = ["A", "B", "C", "D"]
LM_EVAL_DESCRIPTION = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render(template: str, doc: dict) -> str:
    return _ENV.from_string(template).render(**doc)


def lm_eval_context(description: str, doc_to_text: str, shots: list[dict], doc: dict, target_delimiter: str = " ",
                    fewshot_delimiter: str = "\n\n") -> str:
    """`ConfigurableTask.fewshot_context` without a chat template or system instruction."""
    text = description
    for shot in shots:
        text += render(doc_to_text, shot) + target_delimiter + shot["Answer"].strip() + fewshot_delimiter
    return text + render(doc_to_text, doc)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """`TemplateLM._encode_pair` for a causal model."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    context_enc = tokenizer(context)["input_ids"]
    return context_enc, whole[len(context_enc):]


def rows(path: Path) -> list[dict]:
    """The rows as strings, as `datasets`' csv builder gives them with na_filter off (and no numeric column)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def check(tokenizer, root: Path, shots: int) -> dict:
    from langadapt.eval.export_lm_eval import task_config
    from langadapt.eval.mc import CMMLU_SUBJECTS_ZH, PRESETS, answer_tokens, fit_prompt, read_questions

    preset = PRESETS["lm-eval"]
    counts = {"questions": 0, "same_context_text": 0, "same_tokens": 0, "same_export": 0, "merged": 0}
    for test in sorted((root / "test").glob("*.csv")):
        dev_rows, test_rows = rows(root / "dev" / test.name)[:shots], rows(test)
        questions, dev = read_questions(test), read_questions(root / "dev" / test.name)[:shots]
        description = LM_EVAL_DESCRIPTION.format(subject_zh=CMMLU_SUBJECTS_ZH[test.stem])
        exported = task_config(test, preset, shots, "check")
        for doc, q in zip(test_rows, questions):
            counts["questions"] += 1
            context = lm_eval_context(description, LM_EVAL_DOC_TO_TEXT, dev_rows, doc)
            ours, dropped = fit_prompt(tokenizer, preset, q, dev, max_length=10**9)
            counts["same_context_text"] += ours == context and dropped == 0
            export = lm_eval_context(exported["description"], exported["doc_to_text"], dev_rows, doc,
                                     exported["target_delimiter"], exported["fewshot_delimiter"])
            counts["same_export"] += export == context
            pairs = [encode_pair(tokenizer, context, " " + c) for c in LM_EVAL_CHOICES]
            our_context, our_answers, merged = answer_tokens(tokenizer, preset, ours, preset.answers(q))
            counts["merged"] += merged
            counts["same_tokens"] += all(c == our_context for c, _ in pairs) and [a for _, a in pairs] == our_answers
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--tokenizer", nargs="+", default=["smollm2-135m", "tokenizers/chinese-llama-2/tokenizer.model"],
                   help="aliases/paths; a path relative to --data is looked up there")
    args = p.parse_args()
    from langadapt.tokenizer.load import load_tokenizer

    root = Path(args.data) / "zh" / "mc-cmmlu"
    ok = True
    print("| tokenizer | shots | questions | same context text | same tokens (context and each choice) | "
          "export-lm-eval YAML renders the same | letter merged with prompt |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.tokenizer:
        path = Path(args.data) / spec
        tokenizer = load_tokenizer(str(path) if path.exists() else spec)
        for shots in (0, 5):
            c = check(tokenizer, root, shots)
            print(f"| {spec} | {shots} | {c['questions']} | {c['same_context_text']} | {c['same_tokens']} | "
                  f"{c['same_export']} | {c['merged']} |", flush=True)
            ok &= c["questions"] == c["same_context_text"] == c["same_tokens"] == c["same_export"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
