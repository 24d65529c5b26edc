"""Fixtures shared by the tests/test_train_*.py files (import them into a test module)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import TINY_CORPUS

NEW_TOKENS = ["대한민국", "국민은", "평등하다", "민주공화국"]


def make_corpus(path: Path, lines: int, seed: int = 0) -> Path:
    """`lines` records, each three TINY_CORPUS sentences in a random order."""
    rnd = random.Random(seed)
    path.write_text("\n".join(" ".join(rnd.sample(TINY_CORPUS, 3)) for _ in range(lines)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory) -> Path:
    """200 records (about 12,700 tiny-tokenizer tokens)."""
    return make_corpus(tmp_path_factory.mktemp("train-corpus") / "train.txt", 200)


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "held.txt"
    path.write_text("The lazy dog sleeps in Paris.\n모든 국민은 평등하다, and the fox is quick.\n", encoding="utf-8")
    return path


def _extend(base_dir: Path, out: Path) -> Path:
    from langadapt.cli import main
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.add_tokens(NEW_TOKENS)
    tok_dir = out.parent / f"{out.name}-tokenizer"
    tok.save_pretrained(tok_dir)
    assert main(["model", "extend", "--init", "mean", "--base", str(base_dir), "--tokenizer", str(tok_dir),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def extended_tiny_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """`tiny_llama_dir` (untied) extended by `model extend` with 4 Korean tokens (ids 512..515)."""
    return _extend(tiny_llama_dir, tmp_path_factory.mktemp("ext") / "tiny-ext")


@pytest.fixture(scope="session")
def extended_tiny_tied_dir(tiny_llama_tied_dir, tmp_path_factory) -> Path:
    """As `extended_tiny_dir`, from the tied tiny Llama."""
    return _extend(tiny_llama_tied_dir, tmp_path_factory.mktemp("ext-tied") / "tiny-ext-tied")
