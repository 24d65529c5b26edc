"""Streaming corpus reading, cleaning and statistics."""

from langadapt.corpus.read import CORPUS_HELP, ReadStats, Record, expand_paths, iter_records, iter_texts, read_text,\
    ReadingOptions

__all__ = ["CORPUS_HELP", "ReadStats", "Record", "expand_paths", "iter_records", "iter_texts", "read_text",
           "ReadingOptions"]
