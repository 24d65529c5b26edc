"""Shared test fixtures: the real data folder (skipped when absent) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The seed sentence of the Tibetan-Llama2 tokenizer table: 16 syllables.
TIBETAN_SEED_SENTENCE = "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA
