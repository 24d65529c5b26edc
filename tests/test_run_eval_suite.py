"""The `eval:` section's multiple-choice and generation tasks in `langadapt run` and its report table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from langadapt.commands import find
from langadapt.options import from_mapping
from langadapt.pipeline import EvalOptions, eval_suite_steps, load_run_recipe, plan
from langadapt.run_report import eval_suite_section
from test_eval_mc import _cmmlu_root
from test_run import tiny_recipe  # noqa: F401 - the fixture
from train_fixtures import heldout_file, train_corpus  # noqa: F401


def _task_file(path: Path) -> Path:
    rows = [{"instruction": "q", "output": "Paris", "task": "qa"}, {"instruction": "label", "output": "yes",
                                                                   "task": "classification"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_eval_section_adds_mc_and_task_steps_for_every_arm(tiny_recipe, tmp_path):  # noqa: F811
    recipe = load_run_recipe(tiny_recipe)
    recipe["eval"].update(mc=[str(tmp_path / "cmmlu")], mc_shots=5, mc_preset="lm-eval", mc_limit=7,
                          tasks=[str(tmp_path / "tasks.jsonl")], tasks_limit=3)
    recipe["control"] = True
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    steps = {s.name: s for s in plan(load_run_recipe(tiny_recipe), tiny_recipe, Path(recipe["out"]), write=False)}
    for arm in ("base", "adapted", "control"):
        mc, tasks = steps[f"eval-mc-{arm}"].options, steps[f"eval-tasks-{arm}"].options
        assert (mc.shots, mc.preset, mc.limit, mc.data) == (5, "lm-eval", 7, [str(tmp_path / "cmmlu")])
        assert (tasks.limit, tasks.data, tasks.reading.lang) == (3, [str(tmp_path / "tasks.jsonl")], "ko")
    assert steps["eval-mc-adapted"].options.model == steps["eval-generate-adapted"].options.model
    assert "--preset lm-eval" in steps["eval-mc-base"].text()


def test_the_report_tables_every_arm(tiny_llama_dir, tmp_path):
    evals = from_mapping(EvalOptions, {"mc": [str(_cmmlu_root(tmp_path / "cmmlu"))], "mc_shots": 1,
                                       "tasks": [str(_task_file(tmp_path / "tasks.jsonl"))], "max_new_tokens": 3})
    arms = [("base", str(tiny_llama_dir)), ("adapted", str(tiny_llama_dir))]
    steps = eval_suite_steps(evals, arms, {"lang": "en"}, tmp_path / "run")
    assert [s.name for s in steps] == ["eval-mc-base", "eval-tasks-base", "eval-mc-adapted", "eval-tasks-adapted"]
    for step in steps:
        step.output.parent.mkdir(parents=True, exist_ok=True)
        assert find(step.command).run(step.options) == 0
    figures: dict = {}
    lines = eval_suite_section(steps, ["base", "adapted"], figures)
    text = "\n".join(lines)
    assert "## Multiple choice" in text and "| subject | n | chance | base | adapted |" in text
    base = json.loads((tmp_path / "run/eval/mc-base.json").read_text())["overall"]
    assert f"| overall | 3 | 25.0 | {base['accuracy']:.1f} ± {base['stderr']:.1f} | {base['accuracy']:.1f}" in text
    assert "| qa | 1 | rouge_l |" in text and "| classification | 1 | exact_match |" in text and "| Avg | |" in text
    assert set(figures["mc"]) == {"base", "adapted"} and figures["tasks"]["base"]["Avg"] is not None
