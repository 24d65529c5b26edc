"""langadapt: teach an English-centric open LLM a new language."""

__version__ = "0.1.0"
