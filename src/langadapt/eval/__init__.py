"""Evaluation: bits per character (comparable across tokenizers), multiple choice, generation tasks."""

import os


def set_offline() -> None:
    """Never reach the Hugging Face hub from an evaluation."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
