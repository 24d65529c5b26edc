"""Streaming corpus reading, cleaning and statistics."""

from langadapt.corpus.read import ReadStats, Record, expand_paths, iter_records, iter_texts, reading_options

__all__ = ["ReadStats", "Record", "expand_paths", "iter_records", "iter_texts", "reading_options"]
