"""The pretraining recipe: YAML keys, command-line overrides, clear errors."""

from __future__ import annotations

import pytest

from langadapt.cli import build_parser
from langadapt.errors import LangadaptError
from langadapt.options import from_args
from langadapt.train.recipe import LORA_TARGETS, PretrainOptions, load_recipe


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_seed_recipe(tmp_path):
    r = load_recipe(_write(tmp_path, "model: m\ncorpus: [a.txt]\nout: run\n"))
    assert (r.stage, r.lora_r, r.lora_alpha, r.lora_dropout) == ("lora", 64, 128, 0.05)
    assert (r.learning_rate, r.lr_scheduler) == (2e-4, "cosine")
    assert r.lora_targets == LORA_TARGETS == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"]
    assert r.corpus == ["a.txt"]


def test_unknown_key_names_it_and_suggests_the_nearest(tmp_path):
    path = _write(tmp_path, "model: m\nlearning_rat: 0.001\n")
    with pytest.raises(LangadaptError, match=r"recipe.yaml: unknown key 'learning_rat'; did you mean 'learning_rate'\?"):
        load_recipe(path)
    with pytest.raises(LangadaptError, match=r"unknown key 'zzzz'; known keys: model, out, stage"):
        load_recipe(_write(tmp_path, "zzzz: 1\n"))


def test_wrong_types_and_values_are_errors(tmp_path):
    with pytest.raises(LangadaptError, match=r"'block_size' must be int, got 'big'"):
        load_recipe(_write(tmp_path, "block_size: big\n"))
    with pytest.raises(LangadaptError, match=r"'block_size' must be int, got 1.5"):
        load_recipe(_write(tmp_path, "block_size: 1.5\n"))
    with pytest.raises(LangadaptError, match="stage must be one of embeddings, lora, full, got 'lorra'"):
        load_recipe(_write(tmp_path, "stage: lorra\n"))
    with pytest.raises(LangadaptError, match="expected a mapping"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(LangadaptError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_every_key_is_a_command_line_option_and_wins(tmp_path):
    path = _write(tmp_path, "model: m\nblock_size: 512\nstage: embeddings\ncorpus: [a.txt]\nnew_rows_only: false\n")
    args = build_parser().parse_args(["pretrain", "--config", str(path), "--out", "o", "--block-size", "128", "--corpus", "x",
                                      "y", "--new-rows-only", "--learning-rate", "1e-3", "--lora-targets", "q_proj"])
    r = from_args(PretrainOptions, args)
    assert (r.block_size, r.stage, r.corpus, r.new_rows_only) == (128, "embeddings", ["x", "y"], True)
    assert (r.learning_rate, r.lora_targets, r.model) == (1e-3, ["q_proj"], "m")
    r = from_args(PretrainOptions, build_parser().parse_args(["pretrain", "--model", "m2", "--gradient-checkpointing", "false", "--out", "o", "--corpus", "c"]))
    assert (r.model, r.gradient_checkpointing, r.block_size) == ("m2", False, 1024)


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes" / "stages").glob("pretrain-*.yaml"))
    assert [p.name for p in recipes] == ["pretrain-embeddings.yaml", "pretrain-full.yaml", "pretrain-lora.yaml"]
    stages = [load_recipe(p).stage for p in recipes]
    assert stages == ["embeddings", "full", "lora"]
