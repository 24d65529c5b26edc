"""`langadapt eval export-lm-eval`: lm-evaluation-harness task YAMLs for the files `eval mc` reads.

A user with a GPU can then run the same questions with the same prompt under lm-eval (vLLM or HF
backend): `lm_eval --model vllm --model_args pretrained=MODEL --include_path OUT --tasks GROUP`.

Each question file becomes one task (`dataset_path: csv` or `json` with `data_files` pointing at
the local file and its dev/5-shot file, `fewshot_split: dev`, the `first_n` sampler, `num_fewshot`),
and a group YAML lists them. The prompt is the `eval mc` preset written in lm-eval's terms:
`description` = the preset's header, `doc_to_text` = a question's body (a Jinja template over the
file's columns), `target_delimiter` = the space or nothing before the letter, `fewshot_delimiter` =
"\\n\\n", `doc_to_choice` = the letters. With the `lm-eval` preset the result is lm-eval's own `cmmlu`
task pointed at local files.

lm-eval scores each letter from the context's own tokens (`_encode_pair`), `eval mc` from the longest
token prefix the prompt shares with every prompt + letter; the two agree whenever appending the letter
leaves the prompt's tokens unchanged, which `eval mc` reports (`answers_merged_with_prompt`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from langadapt.errors import LangadaptError
from langadapt.eval.mc import LETTERS, PRESETS, Preset, question_files, read_questions, shot_file, subject_name
from langadapt.options import Options, OptionError, option
from langadapt.outputs import atomic_output_dir


@dataclass
class EvalExportLmEvalOptions(Options):
    """Write lm-evaluation-harness task YAMLs (and a group YAML) for the multiple-choice files `eval mc` reads,
    with the same prompt preset and number of shots, so the same questions can be run with lm-eval's vLLM
    backend on a GPU."""

    data: list[str] = option([], metavar="PATH", required=True, help="question file, folder or dataset root "
                                                                     "(as for eval mc)")
    out: str = option(None, metavar="DIR", required=True, help="directory for the YAMLs (lm_eval --include_path)")
    preset: str = option("lm-eval", choices=tuple(PRESETS), help="prompt preset (as for eval mc)")
    shots: int = option(0, metavar="K", help="num_fewshot (the first K of the dev split)")
    group: str = option("langadapt_mc", help="name of the group task that runs them all")
    overwrite: bool = option(False, help="replace an existing output directory")

    def __post_init__(self):
        super().__post_init__()
        if self.shots < 0:
            raise OptionError("shots", f"must be 0 or positive, got {self.shots}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.group):
            raise OptionError("group", f"must be letters, digits and _, got {self.group!r}")


def _csv_columns(path: Path) -> tuple[str, list[str], str]:
    """(question column, letter columns, answer column) of a C-Eval/CMMLU CSV, as its header names them."""
    header = path.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    names = [h.strip() for h in header]
    question = next(n for n in names if n.lower() == "question")
    answer = next(n for n in names if n.lower() == "answer")
    return question, [L for L in LETTERS if L in names], answer


def task_config(path: Path, preset: Preset, shots: int, task: str) -> dict:
    """The lm-eval task config of one question file under `preset` (see the module docstring)."""
    questions = read_questions(path)
    first = questions[0]
    dev = shot_file(path)
    if shots and dev is None:
        raise LangadaptError(f"{path}: --shots {shots} needs a dev split beside it (as for eval mc)")
    strip = ".strip()" if preset.strip_question else ""
    if path.suffix.lower() == ".csv":
        q_col, letters, a_col = _csv_columns(path)
        text = "{{" + q_col + strip + "}}" + "".join(f"\n{L}. {{{{{L}}}}}" for L in letters)
        choices, target = list(letters), "{{" + repr(list(letters)) + ".index(" + a_col + ".strip())}}"
        kind, kwargs = "csv", {"keep_default_na": False, "na_filter": False}
    elif not first.options:  # Ti-MMLU: the content lists the options; `eval mc` strips it
        text, choices = "{{polished_ti_content.strip()}}", list(first.letters)
        target = "{{" + repr(choices) + ".index(answer.strip())}}"
        kind, kwargs = "json", {}
    else:  # generic JSONL: answer is a letter, an index or a choice's text
        text = ("{{question" + strip + "}}{% for c in choices %}\n{{'" + LETTERS + "'[loop.index0]}}. {{c}}"
                "{% endfor %}")
        choices = "{{" + repr(list(LETTERS)) + "[:choices|length]}}"
        target = ("{{answer if answer is number else (choices.index(answer) if answer in choices "
                  "else '" + LETTERS + "'.index(answer.strip()))}}")
        kind, kwargs = "json", {}
    header = preset.header.format(subject=subject_name(first.subject) if preset.subject_in_chinese else first.subject)
    data_files = {"test": str(path.resolve()), **({"dev": str(dev.resolve())} if dev else {})}
    return {
        "task": task,
        "dataset_path": kind,
        "dataset_kwargs": {"data_files": data_files, **kwargs},
        "test_split": "test",
        **({"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}} if dev else {}),
        "num_fewshot": shots,
        "output_type": "multiple_choice",
        "description": header if shots or preset.header_zero_shot else "",
        "doc_to_text": preset.question_prefix + text + preset.answer_cue,
        "doc_to_choice": choices,
        "doc_to_target": target,
        "target_delimiter": preset.answer_prefix,
        "fewshot_delimiter": preset.shot_end,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "made_by": f"langadapt eval export-lm-eval --preset {preset.name}",
                     "preset_source": preset.source},
    }


def _identifier(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


class _Dumper(yaml.SafeDumper):
    """Writes strings with line breaks double-quoted with \\n escapes, as lm-eval's own task YAMLs do."""


_Dumper.add_representer(str, lambda dumper, s: dumper.represent_scalar(
    "tag:yaml.org,2002:str", s, style='"' if "\n" in s else None))


def eval_export_lm_eval_command(opts: EvalExportLmEvalOptions) -> int:
    """Write one task YAML per question file and a group YAML."""
    preset = PRESETS[opts.preset]
    files = [f for path in opts.data for f in question_files(path)]
    tasks: dict[str, dict] = {}
    for f in files:
        name = f"{opts.group}_{_identifier(f.stem)}"
        if name in tasks:  # the same subject in another dataset (CMMLU and Ti-MMLU)
            name = f"{opts.group}_{_identifier(f.parent.name)}_{_identifier(f.stem)}"
        tasks[name] = task_config(f, preset, opts.shots, name)
    with atomic_output_dir(opts.out, overwrite=opts.overwrite) as out:
        for name, config in tasks.items():
            (out / f"{name}.yaml").write_text(yaml.dump(config, Dumper=_Dumper, allow_unicode=True, sort_keys=False,
                                                        width=1_000_000), encoding="utf-8")
        (out / f"{opts.group}.yaml").write_text(yaml.safe_dump({"group": opts.group, "task": list(tasks)},
                                                               allow_unicode=True, sort_keys=False), encoding="utf-8")
        (out / "README.txt").write_text(
            f"lm-evaluation-harness tasks written by `langadapt eval export-lm-eval` (preset {preset.name}, "
            f"{opts.shots}-shot). Run:\n  lm_eval --model vllm --model_args pretrained=MODEL --include_path "
            f"{Path(opts.out).resolve()} --tasks {opts.group}\n", encoding="utf-8")
    print(f"{len(tasks)} tasks and group {opts.group} in {opts.out} ({preset.name}, {opts.shots}-shot): "
          f"lm_eval --include_path {opts.out} --tasks {opts.group}")
    return 0
