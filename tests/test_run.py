"""`langadapt run`: the whole recipe from one YAML file, skipping and resuming steps; `--dry-run`
on every example recipe; the demo."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.pipeline import load_run_recipe, plan, run_recipe
from train_fixtures import heldout_file, train_corpus  # noqa: F401

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STEPS = ["tokenizer", "model", "pretrain-embeddings", "merge-pretrain-embeddings", "pretrain-lora",
         "merge-pretrain-lora", "sft", "merge-sft", "eval-tokenizers", "eval-bpc-base", "eval-bpc-extended",
         "eval-bpc-pretrain-embeddings", "eval-bpc-pretrain-lora", "eval-bpc-adapted", "eval-generate-base",
         "eval-generate-adapted", "report"]


@pytest.fixture()
def tiny_recipe(tiny_llama_dir, train_corpus, heldout_file, tmp_path) -> Path:  # noqa: F811
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text("".join(json.dumps({"instruction": f"질문 {i}: 대한민국은?", "input": "",
                                            "output": "대한민국은 민주공화국이다."}, ensure_ascii=False) + "\n"
                                for i in range(24)), encoding="utf-8")
    train = dict(block_size=32, batch_size=2, max_steps=2, eval_steps=0, save_steps=1, logging_steps=1,
                 lora_r=4, lora_alpha=8, progress=False)
    recipe = {
        "name": "tiny", "base": str(tiny_llama_dir), "lang": "ko", "out": str(tmp_path / "run"),
        "data": {"corpus": [str(train_corpus)], "heldout": [str(heldout_file)], "instructions": [str(sft_data)]},
        "tokenizer": {"method": "extend", "vocab_size": 24},
        "pretrain": [{"stage": "embeddings", **train}, {"stage": "lora", **train}],
        "sft": {"template": "chatml", "max_seq_len": 64, "batch_size": 2, "grad_accum": 1, "max_steps": 2,
                "eval_steps": 0, "save_steps": 1, "lora_r": 4, "lora_alpha": 8, "progress": False},
        "eval": {"max_chars": 400, "context": 64, "prompts": 1, "max_new_tokens": 4},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _states(out: Path) -> dict:
    return json.loads((out / "run-state.json").read_text())["steps"]


def test_run_end_to_end_then_skip_then_redo_what_changed(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_recipe)]) == 0
    assert list(_states(out)) == STEPS[:-1] and all(s["done"] for s in _states(out).values())
    report = (out / "report.md").read_text()
    figures = json.loads((out / "report.json").read_text())
    # the summary's tokens per char are the tokenizer report's (base, adapted); the tiny base tokenizer was
    # trained on these very sentences, so here the extension cannot shorten them (the demo test checks that)
    rows = json.loads((out / "eval" / "tokenizers.json").read_text())["tokenizers"]
    assert [r["name"] for r in rows] == ["base", "adapted"] and rows[1]["vocab_size"] == rows[0]["vocab_size"] + 24
    assert [(r["arm"], r["tokens_per_char"]) for r in figures["arms"]] == [
        ("base", rows[0]["tokens_per_char"]), ("adapted", rows[1]["tokens_per_char"])]
    assert set(figures["bits_per_char"]) == {"base", "extended", "pretrain-embeddings", "pretrain-lora", "adapted"}
    assert figures["arms"][1]["bits_per_char"] == figures["bits_per_char"]["adapted"]
    assert report.index("## Verdict") < report.index("## Arms") < report.index("## Sample answers")
    assert "![bits per character](eval/bpc.png)" in report
    assert (out / "eval" / "bpc.png").is_file() and (out / "pretrain-lora" / "curves.png").is_file()
    assert len(figures["samples"]) == 1 and {"base", "adapted", "reference"} <= set(figures["samples"][0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out / "model-sft").get_input_embeddings().weight.shape[0] == \
        len(AutoTokenizer.from_pretrained(out / "model-sft"))
    capsys.readouterr()

    # the same recipe again: every step is skipped
    stamp = (out / "model-sft" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(tiny_recipe)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == len(STEPS) - 1  # every step but the report
    assert (out / "model-sft" / "model.safetensors").stat().st_mtime_ns == stamp

    # a changed sft hyperparameter redoes sft and the steps that read its output, nothing else
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["sft"]["learning_rate"] = 1e-3
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(tiny_recipe)]) == 0
    printed = capsys.readouterr().out
    redone = [name for name in STEPS if f"] {name}: langadapt" in printed]
    assert redone == ["sft", "merge-sft", "eval-bpc-adapted", "eval-generate-base", "eval-generate-adapted"]
    # a changed tokenizer redoes everything that depends on it, but not the base model's evaluation
    recipe["tokenizer"]["vocab_size"] = 20
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(tiny_recipe)]) == 0
    printed = capsys.readouterr().out
    assert [name for name in STEPS if f"] {name}: done before" in printed] == ["eval-bpc-base"]


def test_an_interrupted_training_step_resumes_from_its_checkpoint(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_recipe)]) == 0
    state = json.loads((out / "run-state.json").read_text())
    state["steps"]["pretrain-lora"]["done"] = False  # as if killed after its checkpoints, before the end
    (out / "run-state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["run", str(tiny_recipe)]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "checkpoint-2" in printed
    assert f"[1/{len(STEPS)}] tokenizer: done before, skipped" in printed


def test_dry_run_trains_nothing(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: recipe, paths and hyperparameters are valid" in printed
    assert "data.instructions: 24 conversations (alpaca)" in printed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(bse="x"), r"unknown key 'bse'; did you mean 'base'\?"),
    (lambda r: r["pretrain"][1].update(lora_rank=8), r"pretrain\[1\]: unknown key 'lora_rank'; did you mean 'lora_r'\?"),
    (lambda r: r["sft"].update(max_seq_len=0), r"sft: max_seq_len must be a positive integer"),
    (lambda r: r["tokenizer"].update(method="grow"), r"tokenizer.method must be one of extend, prune, keep"),
    (lambda r: r["data"].update(corpus=["/nonexistent/x.txt"]), r"/nonexistent/x.txt"),
    (lambda r: r["data"].update(instructions=[]), r"data.instructions .* is required for the sft step"),
])
def test_bad_recipes_are_clear_errors(tiny_recipe, mutate, message):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    mutate(recipe)
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    with pytest.raises(LangadaptError, match=message):
        run_recipe(tiny_recipe, dry_run=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.setdefault("model", {}).update(init="meen"), r"tiny.yaml: model: init must be one of .*got 'meen'"),
    (lambda r: r["tokenizer"].update(compat="chinese-lama"), r"tokenizer: compat must be one of chinese-llama"),
    (lambda r: r["pretrain"][0].update(learning_rate=-1e-3), r"pretrain\[0\]: learning_rate must be 0 or positive"),
    (lambda r: r["data"].update(heldout=["/nonexistent/held.txt"]), r"data: heldout: .*/nonexistent/held.txt"),
    (lambda r: r["sft"].update(templat="chatml"), r"sft: unknown key 'templat'; did you mean 'template'\?"),
    (lambda r: r["sft"].update(out="elsewhere"), r"sft: 'out' is set by `langadapt run`"),
    (lambda r: r["eval"].update(context="long"), r"eval: 'context' must be int, got 'long'"),
    (lambda r: r.update(export={"gguf": "q9_k"}), r"export: type must be one of .*got 'q9_k'"),
])
def test_dry_run_checks_every_value_before_anything_runs(tiny_recipe, mutate, message, tmp_path):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    mutate(recipe)
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    with pytest.raises(LangadaptError, match=message):
        run_recipe(tiny_recipe, dry_run=True)
    assert not (tmp_path / "run").exists()


def test_reading_options_reach_every_step_that_reads_text(tiny_recipe):
    recipe = load_run_recipe(tiny_recipe)
    recipe["data"].update(field="body", clean="kangyur")
    steps = plan(recipe, tiny_recipe, Path(recipe["out"]), write=False)
    readers = [s for s in steps if hasattr(s.options, "reading") and s.command != "eval generate"]
    assert {s.command for s in readers} == {"tokenizer merge", "model extend", "pretrain", "tokenizer report",
                                               "eval bpc"}
    for step in readers:
        assert (step.options.reading.lang, step.options.reading.field, step.options.reading.clean) == \
            ("ko", "body", "kangyur"), step.name
        assert "--field body" in step.text() and "--clean kangyur" in step.text()


def test_the_control_arm_trains_the_base_on_as_many_tokens(tiny_recipe):
    recipe = load_run_recipe(tiny_recipe)
    recipe["control"] = {"lora_r": 2}
    recipe["pretrain"][1]["bpe_dropout"] = 0.3
    steps = {s.name: s for s in plan(recipe, tiny_recipe, Path(recipe["out"]), write=False)}
    control = steps["control/pretrain-lora"].options
    stages = [steps["pretrain-embeddings"].options, steps["pretrain-lora"].options]
    per_stage = [o.max_steps * o.batch_size * o.grad_accum * o.block_size for o in stages]
    assert (control.model, control.stage, control.lora_r, control.max_tokens) == (
        recipe["base"], "lora", 2, sum(per_stage))
    assert stages[1].bpe_dropout == 0.3 and control.bpe_dropout == 0.0  # the control keeps the plain cut
    assert control.max_steps == -1 and steps["control/merge-sft"].options.adapter.endswith("control/sft/adapter")
    assert {"eval-bpc-control", "eval-generate-control"} <= set(steps)


def test_from_step_redoes_that_step(tiny_recipe):
    recipe = load_run_recipe(tiny_recipe)
    names = [s.name for s in plan(recipe, tiny_recipe, Path(recipe["out"]), write=False)]
    assert names + ["report"] == STEPS  # the report is rendered after the steps
    with pytest.raises(LangadaptError, match="--from-step sftt: no such step"):
        run_recipe(tiny_recipe, dry_run=True, from_step="sftt")


# ----------------------------------------------------------------------------- example recipes

def _needs(recipe_path: Path) -> list[str]:
    text = recipe_path.read_text()
    return ["../shared/data"] if "../shared/data" in text else []


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml") if not p.name.startswith("pretrain-")))
def test_every_example_recipe_passes_dry_run(name, capsys, monkeypatch):
    path = RECIPES / name
    if _needs(path) and not (RECIPES.parent.parent / "shared" / "data").is_dir():
        pytest.skip("needs ../shared/data")
    if "embedded:" in path.read_text() and importlib.util.find_spec("konlpy") is None:
        pytest.skip("needs konlpy")
    monkeypatch.chdir(RECIPES.parent)  # recipes use paths relative to the project root
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "dry run: recipe, paths and hyperparameters are valid" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the demo

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("konlpy") is None, reason="the embedded corpus needs konlpy")
def test_demo_on_a_small_budget(tmp_path):
    """The real demo recipe (SmolLM2 + embedded corpus) on a quarter of its token budgets, every model scored."""
    from langadapt.demo import DEMO_RECIPE, budget_overrides

    overrides = {**budget_overrides(load_run_recipe(DEMO_RECIPE), 0.25), "eval.intermediate": True,
                 "eval.max_chars": 2000}
    run_recipe(DEMO_RECIPE, out=str(tmp_path / "demo"), overrides=overrides)
    figures = json.loads((tmp_path / "demo" / "report.json").read_text())
    rows = {r["arm"]: r for r in figures["arms"]}
    assert list(rows) == ["base", "ext-100", "ext-all", "control"]
    assert rows["ext-all"]["tokens_per_char"] < rows["ext-100"]["tokens_per_char"] < rows["base"]["tokens_per_char"]
    assert rows["ext-all"]["tokens_per_char"] < 0.5 * rows["base"]["tokens_per_char"]
    bpc = figures["bits_per_char"]  # training lowers the held-out bits per char of the extended model
    assert bpc["ext-all"] < bpc["ext-all-extended"] and bpc["ext-all-pretrain-lora"] < bpc["ext-all-extended"]
    assert set(figures["curves"]) == {"ext-100", "ext-all", "control"} and figures["verdict"]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "derived from the embedded training text itself" in report
    assert not list((tmp_path / "demo").glob("*/checkpoints"))  # keep_checkpoints: false in all four runs


def test_demo_dry_run_plans_every_step(tmp_path, capsys):
    assert main(["demo", "--dry-run", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    for step in ("tokenizer merge", "model extend", "pretrain", "sft", "eval bpc", "eval generate"):
        assert f"langadapt {step} " in printed, step
    assert "control/pretrain-lora" in printed and not (tmp_path / "demo" / "report.md").exists()
    assert ("langadapt export gguf " in printed) == (importlib.util.find_spec("llama_cpp") is not None)


def test_a_run_can_end_with_a_gguf_export(tiny_recipe, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra `gguf`) checks the file's tokenizer")
    from gguf import GGUFReader

    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["export"] = {"gguf": "f32"}
    tiny_recipe.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    run_recipe(tiny_recipe)
    out = tmp_path / "run"
    gguf = out / "export" / "model.f32.gguf"
    reader = GGUFReader(str(gguf))
    vocab = next(f for f in reader.fields.values() if f.name == "tokenizer.ggml.tokens")
    from transformers import AutoTokenizer
    assert len(vocab.data) == len(AutoTokenizer.from_pretrained(out / "model-sft"))
    report = (out / "report.md").read_text()
    assert "## llama.cpp / Ollama" in report and f"llama-cli -m {gguf}" in report
