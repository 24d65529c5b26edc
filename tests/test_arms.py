"""Arms of a run: the recipe's `arms:`, steps shared between arms, one budget for all, learning
curves at one interval, and the comparison (Pareto front, break-even, verdict)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from langadapt.arms import ArmFigures, break_even, pareto_front, verdict
from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.pipeline import load_run_recipe, plan_run, run_recipe
from test_run import tiny_recipe  # noqa: F401
from train_fixtures import heldout_file, train_corpus  # noqa: F401


# ----------------------------------------------------------------------------- the comparison (pure)

def test_pareto_front_keeps_only_arms_no_other_beats_on_both_counts():
    arms = [ArmFigures("base", 5.0, 7.0), ArmFigures("control", 4.6, 16.0), ArmFigures("ext-all", 5.3, 55.0),
            ArmFigures("ext-100", 5.4, 30.0), ArmFigures("unmeasured", 4.0, None)]
    # ext-100 is worse and slower than ext-all; base is worse and slower than control
    assert pareto_front(arms) == ["control", "ext-all"]
    assert pareto_front([ArmFigures("a", 5.0, 10.0), ArmFigures("b", 5.0, 10.0)]) == ["a", "b"]  # ties dominate none


def test_break_even_within_the_curves_is_interpolated():
    control = [(0, 5.0), (100, 4.8), (200, 4.7)]
    arm = [(0, 5.6), (100, 5.0), (200, 4.5)]
    even = break_even("ext", arm, control)
    # gaps 0.6, 0.2, -0.2: zero halfway between 100 and 200
    assert even.measured and even.tokens == pytest.approx(150.0) and even.gap_at_end == pytest.approx(-0.2)
    assert "crosses the control's curve at about 150 training tokens (measured)" in even.sentence(200)
    level = break_even("curriculum", [(0, 5.0), (100, 4.7), (200, 4.6)], control)  # same start, then below
    assert level.measured and level.tokens == 0
    assert level.sentence(200) == "curriculum is at or below the control's curve from its first point (-0.100 bits/char at the end)"
    above = break_even("length", [(0, 5.0), (100, 4.9), (200, 4.75)], control)  # same start, then above all along
    assert not above.measured and "from its first point" not in above.sentence(200)


def test_break_even_beyond_the_budget_is_an_extrapolation_of_a_log_linear_gap():
    a, b = 2.5, -0.25  # gap = a + b ln(tokens) crosses 0 at exp(10)
    control = [(x, 4.0) for x in (0, 1000, 2000, 4000)]
    arm = [(0, 6.0)] + [(x, 4.0 + a + b * math.log(x)) for x in (1000, 2000, 4000)]
    even = break_even("ext", arm, control)
    assert not even.measured and even.tokens == pytest.approx(math.exp(10), rel=1e-6)
    assert "**extrapolated** crossing at about 22,026 tokens" in even.sentence(4000)
    widening = [(0, 6.0), (1000, 6.1), (2000, 6.3), (4000, 6.4)]
    even = break_even("ext", widening, control)
    assert even.tokens is None and "does not narrow" in even.sentence(4000)
    slow = [(0, 6.0)] + [(x, 4.0 + 2.5 - 0.01 * math.log(x)) for x in (1000, 2000, 4000)]  # crosses at e^250
    even = break_even("ext", slow, control)
    assert even.tokens is None and "narrows too slowly to cross within 100x the budget" in even.sentence(4000)
    even = break_even("ext", arm[:3], control)  # two points after the start
    assert even.tokens is None and "too few to extrapolate" in even.sentence(2000)


def test_verdict_names_best_fastest_and_fastest_near_the_best():
    arms = [ArmFigures("base", 5.018, 0.0), ArmFigures("control", 4.580, 15.9), ArmFigures("ext-100", 4.65, 24.0),
            ArmFigures("ext-all", 5.267, 54.9)]
    lines = verdict(arms, tolerance=0.10, unit="ko")
    assert lines[0] == "Best quality: **control** (4.580 held-out bits/char)."
    assert lines[1].startswith("Fastest: **ext-all** (54.9 ko characters/s in generation, 3.5x the best-quality arm;"
                               " +0.687 bits/char")
    assert lines[2] == "Fastest within 0.10 bits/char of the best: **ext-100** (4.650 bits/char, 24.0 characters/s)."


def test_verdict_gives_paired_differences_from_the_best_with_their_standard_error():
    control = [4.0, 4.2, 4.4, 4.6]
    arms = [ArmFigures("control", 4.3, None, segments=control),
            ArmFigures("ext", 4.8, None, segments=[x + d for x, d in zip(control, [0.4, 0.6, 0.4, 0.6])]),
            ArmFigures("tie", 4.31, None, segments=[x + d for x, d in zip(control, [0.3, -0.3, 0.2, -0.16])])]
    line = verdict(arms)[-1]
    se_ext = statistics.stdev([0.4, 0.6, 0.4, 0.6]) / 2  # 0.058: the arms differ far more than the text's spread
    assert f"ext +0.500 ± {se_ext:.3f};" in line and line.startswith("Against control, paired over the same 4 stretches")
    assert "tie +0.010 ± 0.143 (within 2 standard errors: not told apart on this text)" in line


# ----------------------------------------------------------------------------- planning

def _with_arms(path: Path, arms: list, **top) -> dict:
    recipe = load_run_recipe(path)
    recipe.update(arms=arms, **top)
    for stage in recipe["pretrain"]:
        stage.pop("eval_steps")  # the learning curves set it
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return recipe


def test_arms_share_the_steps_they_have_in_common(tiny_recipe):  # noqa: F811
    recipe = _with_arms(tiny_recipe, [{"name": "mean", "model": {"init": "mean"}},
                                      {"name": "fit", "model": {"init": "fit"}},
                                      {"name": "few", "tokenizer": {"vocab_size": 8}, "model": {"init": "mean"}}])
    run = plan_run(recipe, tiny_recipe, Path(recipe["out"]), write=False)
    by_command = {}
    for step in run.steps:
        by_command.setdefault(step.command, []).append(step.name)
    # mean and fit share the tokenizer; few has its own; each arm its own extended model
    assert by_command["tokenizer merge"] == ["mean/tokenizer", "few/tokenizer"]
    assert by_command["model extend"] == ["mean/model", "fit/model", "few/model"]
    arms = {a.name: a for a in run.arms}
    assert list(arms) == ["base", "mean", "fit", "few", "control"]
    assert arms["fit"].tokenizer == str(Path(recipe["out"]) / "fit" / "model-extended")
    steps = {s.name: s for s in run.steps}
    assert steps["fit/model"].options.tokenizer == str(Path(recipe["out"]) / "mean" / "tokenizer")
    assert arms["control"].model == str(Path(recipe["out"]) / "control" / "model-sft")
    # one budget for every arm, and the learning curves at one interval of training tokens
    budget = {a: sum(steps[n].options.max_steps * 2 * 32 for n in arms[a].stages) for a in ("mean", "fit", "few")}
    assert set(budget.values()) == {256} and steps["control/pretrain-lora"].options.max_tokens == 256
    # 256 tokens / 4 points = 64 tokens = one step of 2 blocks of 32
    for name in arms["few"].stages + arms["control"].stages:
        assert steps[name].options.eval_steps == 1, name
    assert [steps[n].options.eval_on_start for n in arms["few"].stages] == [True, False]
    # every arm is scored, and the tokenizer report has each distinct tokenizer once
    assert {f"eval-bpc-{a}" for a in arms} <= set(steps)
    assert steps["eval-tokenizers"].options.name == ["base", "mean", "fit", "few"]


@pytest.mark.parametrize("arms, message", [
    ([{"tokenizer": {"vocab_size": 8}}], r"arms\[0\]: each arm is a mapping with a name"),
    ([{"name": "control"}], r"arms\[0\]: the name 'control' is taken by an arm every run has"),
    ([{"name": "a"}, {"name": "a"}], r"arms\[1\]: the name 'a' is used by an earlier arm"),
    ([{"name": "a b"}], r"the name 'a b' names a directory"),
    ([{"name": "a", "lr": 1}], r"arms\[0\] \(a\): unknown key 'lr'; an arm sets tokenizer, model, pretrain, sft"),
    ([{"name": "a", "pretrain": {"max_steps": 3}}], r"arms: a: pretrain: its stages train on 384 tokens and the "
                                                    r"recipe's on 256 tokens; every arm gets the same budget"),
    ([{"name": "a", "pretrain": {"lora_rank": 3}}], r"arms: a: pretrain\[0\]: unknown key 'lora_rank'"),
    ([{"name": "a", "tokenizer": {"method": "grow"}}], r"arms: a: tokenizer.method must be one of extend, prune, "
                                                       r"keep \(or none\), got 'grow'"),
    ("ext", r"arms: must be a list of arms"),
])
def test_bad_arms_are_clear_errors(tiny_recipe, arms, message):  # noqa: F811
    _with_arms(tiny_recipe, arms)
    with pytest.raises(LangadaptError, match=message):
        run_recipe(tiny_recipe, dry_run=True)


def test_a_budget_in_characters_counts_every_stage_in_base_tokens(tiny_recipe):  # noqa: F811
    recipe = _with_arms(tiny_recipe, [{"name": "few", "tokenizer": {"vocab_size": 8}}], budget="characters")
    run = plan_run(recipe, tiny_recipe, Path(recipe["out"]), write=False)
    stages = [s.options for s in run.steps if s.command == "pretrain"]
    assert len(stages) == 3 and {o.budget_tokenizer for o in stages} == {recipe["base"]}
    recipe["budget"] = "bytes"
    with pytest.raises(LangadaptError, match="budget must be tokens .* or characters .*, got 'bytes'"):
        plan_run(recipe, tiny_recipe, Path(recipe["out"]), write=False)


def test_an_arm_on_the_base_vocabulary_and_a_list_of_stages(tiny_recipe):  # noqa: F811
    recipe = _with_arms(tiny_recipe, [{"name": "lora-only", "tokenizer": {"method": "none"},
                                       "pretrain": [{"stage": "lora", "block_size": 32, "batch_size": 2,
                                                     "max_tokens": 256, "lora_r": 4, "lora_alpha": 8}]}])
    run = plan_run(recipe, tiny_recipe, Path(recipe["out"]), write=False)
    arm = next(a for a in run.arms if a.name == "lora-only")
    steps = {s.name: s for s in run.steps}
    assert arm.tokenizer == recipe["base"] and arm.stages == ["lora-only/pretrain-lora"]
    assert steps["lora-only/pretrain-lora"].options.model == recipe["base"]
    assert "lora-only/tokenizer" not in steps


# ----------------------------------------------------------------------------- a run with arms

def test_a_run_with_arms_reports_the_front_the_curves_and_a_verdict(tiny_recipe, tmp_path):  # noqa: F811
    recipe = _with_arms(tiny_recipe, [{"name": "few", "tokenizer": {"vocab_size": 8}},
                                      {"name": "all", "tokenizer": {"vocab_size": 24}}])
    recipe["eval"].update(intermediate=False)
    recipe["pretrain"] = recipe["pretrain"][1:]  # one lora stage of 2 steps
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(tiny_recipe)]) == 0
    out = tmp_path / "run"
    figures = json.loads((out / "report.json").read_text())
    assert [r["arm"] for r in figures["arms"]] == ["base", "few", "all", "control"]
    for row in figures["arms"]:
        scored = json.loads((out / "eval" / f"bpc-{row['arm']}.json").read_text())
        assert row["bits_per_char"] == scored["bits_per_char"]
    # every trained arm has a curve from 0 to its 128 training tokens, one point per 64 tokens (= 1 step)
    assert {a: [x for x, _ in c] for a, c in figures["curves"].items()} == {a: [0, 64, 128] for a in
                                                                           ("few", "all", "control")}
    assert {e["arm"] for e in figures["break_even"]} == {"few", "all"}
    assert figures["verdict"][0].startswith("Best quality: **")
    assert set(figures["front"]) <= {"base", "few", "all", "control"} and figures["front"]
    report = (out / "report.md").read_text()
    first_screen = report[:report.index("## Arms")]
    assert "![quality against speed](eval/frontier.png)" in first_screen and "eval/curves.png" in first_screen
    assert "Break-even against the control: few" in first_screen
    assert (out / "eval" / "frontier.png").stat().st_size > 5000 and (out / "eval" / "curves.png").is_file()
    assert len(figures["samples"]) == 1 and {"base", "few", "all", "control"} <= set(figures["samples"][0])
